"""CORE session-based recommenders in plain PyTorch: encoders, objectives, registry, trainer."""
