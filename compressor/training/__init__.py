"""Training: the loop and its checkpoints, distributed training, the checks before step 1,
memory, batch-norm recalibration."""
