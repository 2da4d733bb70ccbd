"""The trainer of a config: ``make_trainer`` picks between the two trainers, which serve the same
calls (``models.trainer.Trainer`` trains a CORE variant epoch by epoch,
``models.knn.trainer.KnnTrainer`` fits a kNN baseline once)."""

from __future__ import annotations

from data.dataset import SessionDataset
from models.knn.trainer import KnnTrainer
from models.registry import fits_once
from models.trainer import Trainer


def make_trainer(config: dict, dataset: SessionDataset, **options) -> Trainer | KnnTrainer:
    """The trainer of ``config["model"]``: ``Trainer`` for the CORE variants, ``KnnTrainer``
    (one fit, then validation) for the kNN baselines; both serve the same calls.

    Args:
        config: the run's config (a "model" key and any of its keys).
        dataset: the dataset it trains on.
        **options: ``device``, ``callback``, ``num_threads`` (see ``Trainer``).

    Returns:
        The trainer, its config resolved.
    """
    if fits_once(config.get("model", "")):
        return KnnTrainer(config, dataset, **options)
    return Trainer(config, dataset, **options)
