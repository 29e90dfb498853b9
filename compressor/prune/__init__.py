"""Pruning: residual blocks, their criteria, layer removal, the filter baseline, channel
shrinking."""
