"""Variant registry: the table of every variant's spec (``models.spec.VariantSpec``: its config
keys with their defaults and allowed values, its builder and its label, each beside its model:
``models.core_variants``, ``models.semantic``, ``models.persona.spec``, ``models.diffusion.spec``,
``models.knn``), and the functions the rest of the project asks it through.

The HPO layer validates search spaces against ``config_keys``; a training run resolves its config
once (``resolve_config``, in the trainer) and builds its model from that (``build_model_for``
with the dataset, which the ``persona`` variant needs: its users, item table and graph side
files).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from torch import nn

from models.core_variants import POP_WEIGHTINGS
from models.core_variants import SPECS as CORE_SPECS
from models.diffusion.spec import DIFFAUG_BASES
from models.diffusion.spec import SPEC as DIFFAUG_SPEC
from models.encoders import DA_SCORERS
from models.knn import KNN_SPECS
from models.persona.spec import SPEC as PERSONA_SPEC
from models.semantic import SPECS as SEMANTIC_SPECS
from models.spec import VariantSpec

if TYPE_CHECKING:
    from data.dataset import SessionDataset

__all__ = [
    "DATASET_VARIANTS", "DA_SCORERS", "DIFFAUG_BASES", "LABELS", "NEUTRAL_KEYS", "POP_WEIGHTINGS",
    "SEMANTIC_VARIANTS", "SPECS", "VARIANTS", "build_model", "build_model_for", "config_keys",
    "dataset_needs", "default_config", "fits_once", "needs_dataset", "needs_item_text",
    "resolve_config", "spec",
]

# variant -> spec, in the order reports list the variants.
SPECS: dict[str, VariantSpec] = {
    **CORE_SPECS, **SEMANTIC_SPECS, "persona": PERSONA_SPEC, "diffaug": DIFFAUG_SPEC, **KNN_SPECS,
}
VARIANTS = tuple(SPECS)
# How reports name each variant; "ips" is not a variant but the bundled search space ips.yaml
# (CORE-trm with pop_weighting=ips).
LABELS = {
    **{name: s.label for name, s in SPECS.items() if not s.fits_once},
    "ips": "CORE-trm + IPS",
    **{name: s.label for name, s in SPECS.items() if s.fits_once},
}
# Variants whose items need semantic vectors made from item text (``data.text``).
SEMANTIC_VARIANTS = tuple(name for name, s in SPECS.items() if s.needs_item_text)
# Variants built from the whole dataset (``build_model_for``): users, item table, graph files.
DATASET_VARIANTS = tuple(name for name, s in SPECS.items() if s.build_for is not None)
# Keys that change how a run is computed, not what it computes (scores are the same at any
# evaluation batch size): left out when arms are compared for fairness (hpo.fairness).
NEUTRAL_KEYS = frozenset({"eval_batch_size"})
_TEXT_NEEDED = ("needs semantic item vectors made from item text; "
                "attach them with data.text.attach_item_vectors")


def spec(variant: str) -> VariantSpec:
    """The spec of ``variant``.

    Args:
        variant: a variant name.

    Returns:
        Its ``VariantSpec``.

    Raises:
        ValueError: an unknown variant.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown model {variant!r}; expected one of {VARIANTS}")
    return SPECS[variant]


def fits_once(variant: str) -> bool:
    """Whether ``variant`` is fitted in one pass (the kNN baselines) rather than trained epoch
    by epoch: a search trial of it reports one validation result, and ASHA has nothing to stop.

    Args:
        variant: a variant name.

    Returns:
        True for the kNN baselines (an unknown name is not one).
    """
    return variant in VARIANTS and SPECS[variant].fits_once


def default_config(variant: str) -> dict:
    """Every key of ``variant`` with its spec default, including "model".

    Args:
        variant: a variant name.

    Returns:
        A new dict, "model" first.
    """
    return spec(variant).default_config()


def config_keys(variant: str) -> frozenset[str]:
    """The config keys ``variant`` accepts (its defaults' keys, "model" included).

    Args:
        variant: a variant name.

    Returns:
        The keys.
    """
    return frozenset(default_config(variant))


def needs_item_text(variant: str) -> bool:
    """Whether ``variant`` needs semantic item vectors (a dataset with item text).

    Args:
        variant: a variant name.

    Returns:
        True for the semantic variants.
    """
    return spec(variant).needs_item_text


def needs_dataset(variant: str) -> bool:
    """Whether ``variant`` is built from the dataset (``build_model_for``) rather than from the
    catalog size and item vectors alone; such a dataset also needs users in its splits and its
    graph side files attached (``data.graph_files.attach_graph_files``) when it has them.

    Args:
        variant: a variant name.

    Returns:
        True for the variants with a dataset builder.
    """
    return spec(variant).build_for is not None


def dataset_needs(variants) -> dict[str, bool]:
    """What loading a dataset must attach for ``variants``.

    Args:
        variants: one variant name, or several.

    Returns:
        Keyword arguments of ``data.DatasetSource.load`` / ``check``: ``item_vectors``
        (semantic vectors of the item text) and ``graph_files`` (users, links, knowledge graph).
    """
    variants = [variants] if isinstance(variants, str) else list(variants)
    return {
        "item_vectors": any(needs_item_text(v) for v in variants),
        "graph_files": any(needs_dataset(v) for v in variants),
    }


def resolve_config(overrides: dict) -> dict:
    """The complete config of a run: defaults of ``overrides["model"]`` merged with
    ``overrides``, type-checked and range-checked (the only place config values are checked).

    Args:
        overrides: a "model" key naming the variant, plus any of its config keys.

    Returns:
        A new dict with every key of the variant.

    Raises:
        ValueError: unknown keys (named), an unknown model, or a value out of its range.
        TypeError: a value of the wrong type.
    """
    if "model" not in overrides:
        raise ValueError("config needs a 'model' key naming the variant")
    return spec(overrides["model"]).resolve(overrides)


def _check_complete(config: dict, needs: str) -> None:
    """Refuses a config that lacks keys of its variant (``needs`` opens the message)."""
    variant = config.get("model")
    missing = sorted(config_keys(variant) - set(config)) if variant in VARIANTS else ["model"]
    if missing:
        raise ValueError(f"{needs}; missing {missing}")


def build_model(config: dict, n_items: int, item_vectors: np.ndarray | None = None) -> nn.Module:
    """The model a resolved config describes.

    Args:
        config: a complete config, as ``resolve_config`` returns it (not resolved again here).
        n_items: catalog rows (max item id + 1; row 0 is padding).
        item_vectors: semantic item vectors [n_items, D] for the SemSR variants.

    Returns:
        The untrained model (a ``models.core.CORE``).

    Raises:
        ValueError: an incomplete config, a variant built otherwise (from its dataset, or a kNN
            baseline), or a SemSR variant without item vectors.
    """
    _check_complete(config, "build_model needs a resolved config (resolve_config)")
    variant = config["model"]
    found = SPECS[variant]
    if found.build_for is not None:
        raise ValueError(f"model {variant!r} is built from its dataset: use build_model_for")
    if found.fits_once:
        raise ValueError(f"model {variant!r} is a kNN baseline, fitted by "
                         "models.knn.KnnTrainer (models.trainers.make_trainer), not trained")
    if found.needs_item_text and item_vectors is None:
        raise ValueError(f"model {variant!r} {_TEXT_NEEDED}")
    return found.build(config, n_items, item_vectors)


def build_model_for(config: dict, dataset: SessionDataset) -> nn.Module:
    """The model a resolved config describes, for ``dataset``: ``build_model`` with its catalog
    size and item vectors, or, for the ``persona`` variant, its personas (trained by HDGI on the
    training split's graph, or read from their cache) and the two-stage model.

    Args:
        config: a complete config (``resolve_config``).
        dataset: the dataset the model is trained on (``item_vectors`` attached for the
            variants that need item text; ``graph_files`` attached when it has them).

    Returns:
        The untrained model.

    Raises:
        ValueError: as ``build_model``; for ``persona``, a dataset without users or vectors.
    """
    variant = config.get("model")
    if variant not in DATASET_VARIANTS:
        return build_model(config, dataset.n_items, dataset.item_vectors)
    _check_complete(config, "build_model_for needs a resolved config")
    if dataset.item_vectors is None:
        raise ValueError(f"model {variant!r} {_TEXT_NEEDED}")
    return SPECS[variant].build_for(config, dataset)
