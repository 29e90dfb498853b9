"""Workflows: the stages, the pipeline that calls them, delivery, the report, the bundle."""
