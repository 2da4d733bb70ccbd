"""A split as tensors on the training device, served in batches (the trainer's and the
diffusion augmentation's base stage's)."""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import Tensor

from data.arrays import keep_last
from data.dataset import Split


def shared_tensor(array: np.ndarray, device: torch.device) -> Tensor:
    """A tensor over ``array`` without copying it on CPU, also when it is read-only.

    Arrays shipped through Ray's object store are read-only views of shared memory: copying
    them would cost every trial its own copy of the dataset, and nothing here writes to them,
    so torch's warning about non-writable arrays does not apply.

    Args:
        array: the values.
        device: where the tensor lives (a copy on any device but the CPU).

    Returns:
        The tensor.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not writable.*", category=UserWarning)
        return torch.from_numpy(array).to(device)


class Rows:
    """One split as tensors on the device, served in batches trimmed to the batch's longest
    prefix (right padding makes the trimmed batch exact and the transformer cheaper).

    Batches are (items, targets), plus the rows' user ids (0 = unknown, also for a split
    without users) when ``with_users``: for models that declare ``wants_users``. ``weights``
    (float32 [rows], the training rows' loss weights, ``models.weighting``) are served by
    ``row_weights``."""

    def __init__(
        self, split: Split, max_seq_length: int, device: torch.device, with_users: bool = False,
        weights: np.ndarray | None = None,
    ) -> None:
        prefixes, lengths = keep_last(split.prefixes, split.lengths, max_seq_length)
        self.prefixes = shared_tensor(prefixes, device)
        self.lengths = shared_tensor(lengths, device)
        self.targets = shared_tensor(split.targets, device)
        self.weights = None if weights is None else shared_tensor(weights, device)
        self.users = None
        if with_users:
            users = split.users if split.users is not None else np.zeros(len(split), np.int64)
            self.users = shared_tensor(users, device)

    def __len__(self) -> int:
        return len(self.targets)

    def batch(self, rows: Tensor | slice) -> tuple[Tensor, ...]:
        """The rows' (items [rows, longest prefix] int64, targets[, users]).

        Args:
            rows: row indices on the device, or a slice.
        """
        width = int(self.lengths[rows].max())
        batch = (self.prefixes[rows, :width].long(), self.targets[rows])
        return batch if self.users is None else (*batch, self.users[rows])

    def row_weights(self, rows: Tensor | slice) -> dict[str, Tensor]:
        """The model's keyword arguments for the rows' loss weights: none when all weigh 1."""
        return {} if self.weights is None else {"weights": self.weights[rows]}
