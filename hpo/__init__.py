"""Hyperparameter search: search spaces, Ray Tune + Optuna + ASHA searches, MLflow tracking,
selection on validation, the seed runs of the selected configurations and studies; their
statistics and reports are the ``verdict`` package's."""
