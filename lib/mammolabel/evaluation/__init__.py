"""Evaluation above the tasks: shipped-model training (``train-zoo``), intervals and model cards."""
