"""Compressor: layer pruning at init, training, channel shrinking, and the pipeline."""

__version__ = "0.1.0"
