"""Hyperparameter search whose trials are DVC experiments: the tune command's parts, and the train stage's hook."""
