"""Pretraining: the training loop, held-out evaluation, the checks before a resume, export and warm start."""
