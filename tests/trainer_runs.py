"""Shared by the trainer tests: a run trained straight through beside the same run stopped after
its first epoch, checkpointed, and resumed in a fresh trainer."""

from __future__ import annotations

from pathlib import Path

from models.trainer import Trainer


def straight_and_resumed(config: dict, dataset, folder: Path, **trainer_kwargs
                         ) -> tuple[Trainer, Trainer]:
    """Train ``config`` to its end in one trainer, and for one epoch in another whose checkpoint
    a third loads and trains one more epoch.

    Args:
        config: the run's config (two epochs: the resumed trainer runs exactly one more).
        dataset: the dataset both train on.
        folder: where the checkpoint is written.
        **trainer_kwargs: passed to every ``Trainer`` (device, threads).

    Returns:
        (the straight trainer, the resumed trainer).
    """
    straight = Trainer(config, dataset, **trainer_kwargs)
    straight.fit()
    first = Trainer(config, dataset, **trainer_kwargs)
    first.run_epoch()
    first.save_checkpoint(folder / "ckpt.pt")
    resumed = Trainer(config, dataset, **trainer_kwargs)
    resumed.load_checkpoint(folder / "ckpt.pt")
    resumed.run_epoch()
    return straight, resumed
