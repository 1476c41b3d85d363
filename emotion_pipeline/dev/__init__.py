"""Tools for working on the project, outside every stage's closure: editing them re-runs nothing."""
