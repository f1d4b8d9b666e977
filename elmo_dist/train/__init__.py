"""Pretraining machinery: the Accelerator, the training loop, checkpoints, evaluation and metrics."""
