"""The rows a training run learns from and their loss weights: the training split, optionally
re-weighted against popularity bias (``pop_weighting``, any variant) and, for the ``diffaug``
variant, extended with generated counterfactual rows (``models.diffusion``).

Inverse-propensity weighting (``ips_weights``). The propensity of a row is taken to be its
target's training popularity, so with c_i the number of training rows whose target is row i's
target and p = ``ips_power``,

    w_i = (c_i / max_j c_j)^(-p)                      (1 for the most popular target, >= 1 else)
    w_i = min(w_i, ips_clip)         when ips_clip > 0 (a row weighs at most ips_clip times a
                                                       row of the most popular target)
    w_i = w_i / mean_j w_j                             (mean 1 over the training rows)

p = 1 is plain IPS, 0 < p < 1 the usual smoothed propensities, p = 0 no re-weighting. The loss is
then mean_i w_i l_i over a batch (``models.catalog_loss``). Generated rows (``diffaug``) weigh
``aug_weight`` each and are not IPS-weighted: they do not come from the logging policy whose
exposure IPS corrects for; the counts c_i are the real training rows'.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from data.dataset import Split
from models.diffusion import Augmentation, augment_training
from models.diffusion.spec import augment_settings, base_config, build_base


def ips_weights(targets: np.ndarray, power: float, clip: float = 0.0) -> np.ndarray:
    """Inverse-propensity weights of training rows by target popularity (module docstring).

    Args:
        targets: the training rows' target ids [rows].
        power: p >= 0.
        clip: the largest weight before normalisation (>= 1), 0 for none.

    Returns:
        float32 [rows], mean 1.

    Raises:
        ValueError: no rows, power < 0, or 0 < clip < 1.
    """
    targets = np.asarray(targets)
    if targets.size == 0:
        raise ValueError("IPS weights need at least one training row")
    if power < 0:
        raise ValueError(f"ips_power must be >= 0, got {power}")
    if clip and clip < 1:
        raise ValueError(f"ips_clip must be 0 (off) or >= 1, got {clip}")
    counts = np.bincount(targets)
    weights = (counts[targets] / counts.max()) ** (-float(power))
    if clip:
        weights = np.minimum(weights, clip)
    return (weights / weights.mean()).astype(np.float32)


@dataclass(frozen=True)
class TrainingRows:
    """The rows of a training run.

    Attributes:
        split: the training split, with the generated rows appended (``diffaug``).
        weights: float32 loss weight per row, or None when every row weighs 1.
        n_real: how many of the rows are the dataset's (the first ones).
        augmentation: what the diffusion stages produced (``diffaug``), else None.
    """

    split: Split
    weights: np.ndarray | None
    n_real: int
    augmentation: Augmentation | None = None


def training_rows(
    config: dict,
    train: Split,
    n_items: int,
    *,
    name: str = "dataset",
    device: torch.device | str | None = None,
) -> TrainingRows:
    """The rows a run trains on and their weights. Only the training split comes in, so nothing
    here (the diffusion stages included) can see validation or test rows.

    Args:
        config: a resolved config (``resolve_config``).
        train: the dataset's training split.
        n_items: catalog rows (row 0 is padding).
        name: the dataset's name (cache file names only).
        device: where the diffusion stages run.

    Returns:
        The rows (``TrainingRows``).
    """
    weights = None
    if config["pop_weighting"] == "ips":
        weights = ips_weights(train.targets, config["ips_power"], config["ips_clip"])
    if config["model"] != "diffaug":
        return TrainingRows(train, weights, len(train))
    augmentation = augment_training(train, n_items, base_config(config), augment_settings(config),
                                    build_base, name=name, device=device)
    extra = augmentation.rows
    users = None
    if train.users is not None:
        users = np.concatenate([train.users, np.zeros(len(extra), dtype=train.users.dtype)])
    split = replace(
        train,
        prefixes=np.concatenate([train.prefixes, extra.prefixes.astype(train.prefixes.dtype)]),
        lengths=np.concatenate([train.lengths, extra.lengths.astype(train.lengths.dtype)]),
        targets=np.concatenate([train.targets, extra.targets.astype(train.targets.dtype)]),
        users=users,
    )
    real = np.ones(len(train), np.float32) if weights is None else weights
    weights = np.concatenate([real, np.full(len(extra), config["aug_weight"], np.float32)])
    return TrainingRows(split, weights, len(train), augmentation)
