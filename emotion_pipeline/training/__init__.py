"""Training: the model to train, losses, crash recovery, the training log, the class bias fit, and the processes of a run."""
