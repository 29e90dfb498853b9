"""Recipes: their sections, loading and checking."""
