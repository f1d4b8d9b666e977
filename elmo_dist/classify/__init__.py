"""Downstream text classification on top of a pretrained biLM."""
