"""The ``diffaug`` variant's spec (``models.spec``): its keys, the augmentation settings and the
base model its config describes, and its builder (the backbone it trains on the augmented rows:
the ``base`` variant's model, from the same config)."""

from __future__ import annotations

import numpy as np
from torch import nn

from models.core_variants import CORE_KEYS, DA, ENHANCED, GUIDE, TRANSFORMER
from models.core_variants import SPECS as CORE_SPECS
from models.diffusion.augment import AugmentSettings
from models.diffusion.schedule import BETA_SCHEDULES
from models.diffusion.stages import ANCHORS, HEAD_FRACTION, DenoiserSettings
from models.spec import NON_NEGATIVE, OPEN_UNIT, POSITIVE, Keys, VariantSpec, counts, one_of

# Backbones the diffaug variant trains on the augmented rows (and its first stage on the real
# ones): the encoders whose config keys diffaug carries.
DIFFAUG_BASES = ("ave", "trm", "da", "enhanced")

# Base backbone and its first stage's epochs; the conditional DDPM (steps, beta schedule, the
# tail's share of the targeted items, prefix window, epochs, width, condition dropout); sampling
# (classifier-free guidance scale, denoising steps per sample, evenly spaced over the chain (all
# of it when at least diffusion_steps), rows added as a share of the training rows) and the loss
# weight of the added rows.
DIFFAUG = Keys(
    {
        "base": "trm",
        "diff_base_epochs": 3,
        "diffusion_steps": 50,
        "beta_schedule": "linear",
        "tail_quantile": 0.5,
        "diff_window": 5,
        "diff_epochs": 10,
        "diff_hidden": 128,
        "cond_dropout": 0.1,
        "guidance_scale": 3.0,
        "sample_steps": 10,
        "aug_ratio": 0.2,
        "aug_weight": 0.5,
        # Where a sample starts: "noise" (x_T ~ N(0, I): a synthetic tail row) or "observed" (a
        # training row whose target is not in the tail, noised to diff_anchor_t0 of the chain
        # and denoised under tail guidance, SDEdit-style: a counterfactual of that session).
        "diff_anchor": "noise",
        "diff_anchor_t0": 0.3,
    },
    {
        "base": one_of(DIFFAUG_BASES),
        **counts("diff_base_epochs", "diffusion_steps", "diff_window", "diff_epochs",
                 "sample_steps"),
        "beta_schedule": one_of(BETA_SCHEDULES),
        "tail_quantile": (lambda v: 0.0 < v < 1.0 - HEAD_FRACTION,
                          f"in (0, {1 - HEAD_FRACTION:g})"),
        "diff_hidden": (lambda v: v >= 4 and v % 4 == 0, "a positive multiple of 4"),
        "cond_dropout": (lambda v: 0.0 < v < 1.0, "in (0, 1)"),
        "guidance_scale": NON_NEGATIVE,
        "aug_ratio": POSITIVE,
        "aug_weight": POSITIVE,
        "diff_anchor": one_of(ANCHORS),
        "diff_anchor_t0": OPEN_UNIT,
    },
)


def augment_settings(config: dict) -> AugmentSettings:
    """The augmentation settings of a resolved ``diffaug`` config.

    Args:
        config: a resolved ``diffaug`` config.

    Returns:
        The settings (``models.diffusion.AugmentSettings``).
    """
    denoiser = DenoiserSettings(
        steps=config["diffusion_steps"], schedule=config["beta_schedule"],
        tail_quantile=config["tail_quantile"], window=config["diff_window"],
        epochs=config["diff_epochs"], hidden=config["diff_hidden"],
        cond_dropout=config["cond_dropout"],
    )
    return AugmentSettings(denoiser, guidance_scale=config["guidance_scale"],
                           aug_ratio=config["aug_ratio"], sample_steps=config["sample_steps"],
                           seed=config["seed"], anchor=config["diff_anchor"],
                           anchor_t0=config["diff_anchor_t0"])


def base_config(config: dict) -> dict:
    """The base model of a ``diffaug`` config's first stage: the ``base`` variant's default
    configuration, trained ``diff_base_epochs`` epochs with the run's seed.

    Args:
        config: a resolved ``diffaug`` config.

    Returns:
        A resolved config of the base variant.
    """
    return CORE_SPECS[config["base"]].resolve(
        {"model": config["base"], "epochs": config["diff_base_epochs"], "seed": config["seed"]})


def build_base(config: dict, n_items: int) -> nn.Module:
    """An untrained model of a resolved config of one of ``DIFFAUG_BASES`` (the first stage's,
    ``base_config``).

    Args:
        config: the resolved config.
        n_items: catalog rows (row 0 is padding).

    Returns:
        The model.
    """
    return CORE_SPECS[config["model"]].build(config, n_items)


def _build(config: dict, n_items: int, item_vectors: np.ndarray | None = None) -> nn.Module:
    """The backbone: the ``base`` variant's model of the same config (the generated rows are
    the trainer's, ``models.weighting.training_rows``)."""
    return CORE_SPECS[config["base"]].build({**config, "model": config["base"]}, n_items,
                                            item_vectors)


SPEC = VariantSpec("diffaug", "DiffAug (guided-diffusion counterfactuals, CORE-trm)",
                   (CORE_KEYS, TRANSFORMER, DA, ENHANCED, GUIDE, DIFFAUG), build=_build)
