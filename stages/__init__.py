"""Pipeline stages, one module each with a main(), run by dvc.yaml as `python -m stages <name>`."""
