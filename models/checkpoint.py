"""Checkpoint files of a trainer: what ``Trainer`` and ``models.knn.trainer.KnnTrainer`` share."""

from __future__ import annotations

import os
from pathlib import Path

import torch


class CheckpointFiles:
    """``save_checkpoint`` / ``load_checkpoint`` of a trainer's ``state_dict`` (a subclass has
    ``state_dict``, ``load_state_dict`` and ``device``)."""

    def save_checkpoint(self, path: str | Path) -> None:
        """Atomic write (temporary file then rename), so a killed trial leaves a valid file.

        Args:
            path: the checkpoint file.
        """
        path = Path(path)
        partial = path.with_name(path.name + ".partial")
        torch.save(self.state_dict(), partial)
        os.replace(partial, path)

    def load_checkpoint(self, path: str | Path) -> None:
        """Restores the state a ``save_checkpoint`` wrote (tensors only: no pickled objects).

        Args:
            path: the checkpoint file.
        """
        self.load_state_dict(torch.load(path, map_location=self.device, weights_only=True))
