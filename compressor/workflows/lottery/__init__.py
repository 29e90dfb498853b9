"""The layer-lottery experiment: the grid, its recipes, summary, analysis and energy."""
