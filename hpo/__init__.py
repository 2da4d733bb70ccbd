"""Hyperparameter search: search spaces, Ray Tune + Optuna + ASHA searches, MLflow tracking,
selection-then-test and its statistics and report."""
