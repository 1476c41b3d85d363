"""Shared library of the emotion-pipeline stages: typed config, data, model, metrics, prediction."""
