"""Data: the datasets and their splits, image folders, corruptions."""
