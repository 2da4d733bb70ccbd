"""Variant registry: the config keys each CORE variant accepts, their spec defaults, validation,
and ``build_model`` (resolved config -> model). The HPO layer validates search spaces against
``config_keys``; a training run resolves its config once (``resolve_config``, in the trainer)
and builds its model from that."""

from __future__ import annotations

import numbers

import numpy as np
import torch
from torch import nn

from models.core import CORE, Objective
from models.encoders import (
    AveEncoder,
    DualAttentionEncoder,
    EnhancedEncoder,
    Transformer,
    TrmEncoder,
)
from models.semantic import FUSIONS, SemanticFusionCORE, semantic_init

VARIANTS = (
    "ave", "trm", "da", "hn", "dahn", "enhanced", "contrastive", "semsr_i", "semsr_f",
)
# How reports name each variant.
LABELS = {
    "ave": "CORE-ave",
    "trm": "CORE-trm",
    "da": "CORE-DA",
    "hn": "CORE-HN",
    "dahn": "CORE-DAHN",
    "enhanced": "CORE-trm-enhanced",
    "contrastive": "CORE-trm-contrastive",
    "semsr_i": "SemSR-I (CORE-trm)",
    "semsr_f": "SemSR-F (CORE-trm)",
}
# Variants whose items need semantic vectors made from item text (``data.text``).
SEMANTIC_VARIANTS = ("semsr_i", "semsr_f")
PRECISIONS = ("fp32", "bf16")
DA_SCORERS = ("mlp", "linear")

_COMMON = {
    "embedding_size": 100,
    "sess_dropout": 0.2,
    "item_dropout": 0.2,
    "temperature": 0.07,
    "lr": 1e-3,
    "weight_decay": 0.0,
    "batch_size": 2048,
    "eval_batch_size": 2048,
    "max_seq_length": 50,
    "epochs": 300,
    "patience": 5,
    "seed": 2020,
    "precision": "fp32",
}
_TRANSFORMER = {
    "n_layers": 2,
    "n_heads": 2,
    "inner_size": 256,
    "hidden_dropout": 0.5,
    "attn_dropout": 0.5,
}
_HN = {"hn_k": 64, "hn_lambda": 0.2}
# da_scorer "mlp" scores [f_i; f_last] with an MLP (the paper's DA); "linear" scores f_i as
# CORE-trm does, so DA with every switch off and a linear scorer is exactly CORE-trm.
_DA = {"da_gating": True, "da_recent": True, "da_residual": True, "da_scorer": "mlp"}
_ENHANCED = {"enh_multilayer": True, "enh_gate": True, "enh_inbatch": True, "beta": 0.5}
_CONTRASTIVE = {"cl_weight": 0.1, "cl_dropout": 0.2, "cl_temperature": 0.2}
# SemSR-F: size of the projected semantic view, its dropout, and how the behavioural and the
# semantic session vectors are fused (see models.semantic).
_SEMSR_F = {"sem_size": 128, "sem_dropout": 0.2, "fusion": "gate"}

_GROUPS = {
    "ave": (),
    "trm": (_TRANSFORMER,),
    "da": (_TRANSFORMER, _DA),
    "hn": (_TRANSFORMER, _HN),
    "dahn": (_TRANSFORMER, _DA, _HN),
    "enhanced": (_TRANSFORMER, _ENHANCED),
    "contrastive": (_TRANSFORMER, _CONTRASTIVE),
    "semsr_i": (_TRANSFORMER,),
    "semsr_f": (_TRANSFORMER, _SEMSR_F),
}

# Value constraints beyond the type of the default: (check, description).
_FRACTION = (lambda v: 0.0 <= v < 1.0, "in [0, 1)")
_POSITIVE = (lambda v: v > 0, "> 0")
_NON_NEGATIVE = (lambda v: v >= 0, ">= 0")
_COUNT = (lambda v: v >= 1, ">= 1")
_RANGES = {
    "sess_dropout": _FRACTION,
    "item_dropout": _FRACTION,
    "hidden_dropout": _FRACTION,
    "attn_dropout": _FRACTION,
    "cl_dropout": _FRACTION,
    "sem_dropout": _FRACTION,
    "hn_lambda": (lambda v: 0.0 <= v <= 1.0, "in [0, 1]"),
    "temperature": _POSITIVE,
    "cl_temperature": _POSITIVE,
    "lr": _POSITIVE,
    "weight_decay": _NON_NEGATIVE,
    "beta": _NON_NEGATIVE,
    "cl_weight": _NON_NEGATIVE,
    **dict.fromkeys(
        (
            "embedding_size",
            "batch_size",
            "eval_batch_size",
            "max_seq_length",
            "epochs",
            "patience",
            "n_layers",
            "n_heads",
            "inner_size",
            "hn_k",
            "sem_size",
        ),
        _COUNT,
    ),
    "precision": (lambda v: v in PRECISIONS, f"one of {PRECISIONS}"),
    "da_scorer": (lambda v: v in DA_SCORERS, f"one of {DA_SCORERS}"),
    "fusion": (lambda v: v in FUSIONS, f"one of {FUSIONS}"),
}


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"unknown model {variant!r}; expected one of {VARIANTS}")


def default_config(variant: str) -> dict:
    """Every key of ``variant`` with its spec default, including "model"."""
    _check_variant(variant)
    config = {"model": variant, **_COMMON}
    for group in _GROUPS[variant]:
        config.update(group)
    return config


def config_keys(variant: str) -> frozenset[str]:
    """The config keys ``variant`` accepts (its defaults' keys, "model" included)."""
    return frozenset(default_config(variant))


def needs_item_text(variant: str) -> bool:
    """Whether ``variant`` needs semantic item vectors (a dataset with item text)."""
    _check_variant(variant)
    return variant in SEMANTIC_VARIANTS


def _coerce(key: str, value: object, default: object) -> object:
    """``value`` converted to the type of ``default`` (ints accepted for floats, numpy scalars
    for Python ones), or TypeError."""
    if isinstance(default, bool):
        ok = isinstance(value, bool | np.bool_)
        kind = bool
    elif isinstance(default, int):
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
        kind = int
    elif isinstance(default, float):
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
        kind = float
    else:
        ok, kind = isinstance(value, str), str
    if not ok:
        raise TypeError(f"config key {key!r} expects {kind.__name__}, got {value!r}")
    return kind(value)


def resolve_config(overrides: dict) -> dict:
    """The complete config of a run: defaults of ``overrides["model"]`` merged with
    ``overrides``, type-checked and range-checked.

    Args:
        overrides: a "model" key naming the variant, plus any of its config keys.

    Raises:
        ValueError: unknown keys (named), an unknown model, or a value out of its range.
        TypeError: a value of the wrong type.
    """
    if "model" not in overrides:
        raise ValueError("config needs a 'model' key naming the variant")
    config = default_config(overrides["model"])
    unknown = sorted(set(overrides) - set(config))
    if unknown:
        raise ValueError(f"unknown config key(s) for model {config['model']!r}: {unknown}")
    for key, value in overrides.items():
        config[key] = _coerce(key, value, config[key])
    for key, (check, description) in _RANGES.items():
        if key in config and not check(config[key]):
            raise ValueError(f"config key {key!r} must be {description}, got {config[key]!r}")
    if "n_heads" in config and config["embedding_size"] % config["n_heads"]:
        raise ValueError("embedding_size must be a multiple of n_heads")
    return config


def _encoder(config: dict) -> nn.Module:
    variant = config["model"]
    if variant == "ave":
        return AveEncoder()
    transformer = Transformer(
        config["embedding_size"],
        n_layers=config["n_layers"],
        n_heads=config["n_heads"],
        inner_size=config["inner_size"],
        hidden_dropout=config["hidden_dropout"],
        attn_dropout=config["attn_dropout"],
        max_seq_length=config["max_seq_length"],
    )
    if variant in ("da", "dahn"):
        return DualAttentionEncoder(
            transformer,
            gating=config["da_gating"],
            recent=config["da_recent"],
            residual=config["da_residual"],
            scorer=config["da_scorer"],
        )
    if variant == "enhanced":
        return EnhancedEncoder(
            transformer, multilayer=config["enh_multilayer"], gate=config["enh_gate"]
        )
    return TrmEncoder(transformer)


def _objective(config: dict) -> Objective:
    variant = config["model"]
    if variant in ("hn", "dahn"):
        return Objective(hn_k=config["hn_k"], hn_lambda=config["hn_lambda"])
    if variant == "enhanced" and config["enh_inbatch"]:
        return Objective(inbatch_weight=config["beta"])
    if variant == "contrastive":
        return Objective(
            cl_weight=config["cl_weight"],
            cl_dropout=config["cl_dropout"],
            cl_temperature=config["cl_temperature"],
        )
    return Objective()


def build_model(config: dict, n_items: int, item_vectors: np.ndarray | None = None) -> CORE:
    """The model a resolved config describes.

    Args:
        config: a complete config, as ``resolve_config`` returns it (not resolved again here).
        n_items: catalog rows (max item id + 1; row 0 is padding).
        item_vectors: semantic item vectors [n_items, D] for the SemSR variants.

    Raises:
        ValueError: an incomplete config, or a SemSR variant without item vectors.
    """
    variant = config.get("model")
    missing = sorted(config_keys(variant) - set(config)) if variant in VARIANTS else ["model"]
    if missing:
        raise ValueError(f"build_model needs a resolved config (resolve_config); missing {missing}")
    if needs_item_text(variant) and item_vectors is None:
        raise ValueError(
            f"model {variant!r} needs semantic item vectors made from item text; "
            "attach them with data.text.attach_item_vectors"
        )
    options = {
        "sess_dropout": config["sess_dropout"],
        "item_dropout": config["item_dropout"],
        "temperature": config["temperature"],
        "objective": _objective(config),
    }
    d = config["embedding_size"]
    if variant == "semsr_f":
        return SemanticFusionCORE(
            n_items, d, _encoder(config), item_vectors, sem_size=config["sem_size"],
            sem_dropout=config["sem_dropout"], fusion=config["fusion"], **options,
        )
    model = CORE(n_items, d, _encoder(config), **options)
    if variant == "semsr_i":
        with torch.no_grad():
            model.item_embedding.copy_(semantic_init(item_vectors, model.item_embedding))
    return model
