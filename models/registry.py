"""Variant registry: the config keys each CORE variant accepts, their spec defaults, validation,
and ``build_model`` (resolved config -> model). The HPO layer validates search spaces against
``config_keys``; a training run resolves its config once (``resolve_config``, in the trainer)
and builds its model from that (``build_model_for`` with the dataset, which the ``persona``
variant needs: its users, item table and graph side files)."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from models.augment import MASK_MODES, parse_augmentations
from models.config_types import coerce
from models.core import CORE, Objective
from models.diffusion import ANCHORS, BETA_SCHEDULES, HEAD_FRACTION
from models.encoders import (
    LAYER_AGGREGATIONS,
    POS_ENCODINGS,
    AveEncoder,
    DualAttentionEncoder,
    EnhancedEncoder,
    Transformer,
    TrmEncoder,
)
from models.knn import KNN_DEFAULTS, KNN_RANGES, KNN_VARIANTS, check_knn_params
from models.persona import METAPATH_KEYS, settings_from_config, train_personas
from models.persona.model import PERSONA_FUSIONS, PersonaCORE
from models.precision import BF16_SCOPES, LOSS_CHOICES, PRECISIONS
from models.semantic import FUSIONS, SemanticFusionCORE, semantic_init

if TYPE_CHECKING:
    from data.dataset import SessionDataset

VARIANTS = (
    "ave", "trm", "da", "hn", "dahn", "enhanced", "contrastive", "semsr_i", "semsr_f", "persona",
    "diffaug", *KNN_VARIANTS,
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
    "persona": "Persona (HDGI + CORE-trm re-rank)",
    "diffaug": "DiffAug (guided-diffusion counterfactuals, CORE-trm)",
    # Not a variant: the bundled search space ips.yaml (CORE-trm with pop_weighting=ips).
    "ips": "CORE-trm + IPS",
    # The session-kNN baselines (models.knn): fitted once, no training epochs.
    "sknn": "SKNN",
    "vsknn": "V-SKNN",
    "stan": "STAN",
    "vstan": "VSTAN",
}
# Variants whose items need semantic vectors made from item text (``data.text``).
SEMANTIC_VARIANTS = ("semsr_i", "semsr_f", "persona")
# Variants built from the whole dataset (``build_model_for``): users, item table, graph files.
DATASET_VARIANTS = ("persona",)
# Backbones the diffaug variant trains on the augmented rows (and its first stage on the real
# ones): the encoders whose config keys diffaug carries.
DIFFAUG_BASES = ("ave", "trm", "da", "enhanced")
# How the training loss weighs each row against popularity bias (models.weighting).
POP_WEIGHTINGS = ("none", "ips")
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
    # auto: bf16 where bf16 matrix products are native, else fp32; bf16_scope: which part runs
    # under bf16 (all, or the loss only); see models.precision.
    "precision": "auto",
    "bf16_scope": "all",
    # Decay of an exponential moving average of the weights, used for validation, checkpoint
    # selection and test (models.ema); 0 = off. Not the guide's EMA, which is ema_target
    # (_GUIDE): momentum-updated target item embeddings used in the training loss.
    "ema_decay": 0.0,
    # The optimiser step (models.trainer): gradients clipped to a global L2 norm of at most
    # grad_clip (0 = no clipping), and each batch of batch_size rows split into grad_accum
    # micro-batches whose gradients are accumulated before the step (a memory knob: the step
    # still sees batch_size rows).
    "grad_clip": 0.0,
    "grad_accum": 1,
    # The full-catalog loss: label smoothing of its cross-entropy (eps spread over the real
    # items, never onto padding) and its implementation: chunked (blocks of batch rows), dense
    # (one [batch x catalog] buffer, the reference) or auto, the faster here (models.precision).
    "label_smoothing": 0.0,
    "loss_impl": "auto",
    # Popularity debiasing of the training loss, for any variant (models.weighting): none, or
    # inverse-propensity weights w = (count(target) / max count)^(-ips_power), clipped at ips_clip
    # (0 = no clip) and normalised to mean 1 over the training rows.
    "pop_weighting": "none",
    "ips_power": 0.5,
    "ips_clip": 0.0,
}
_TRANSFORMER = {
    "n_layers": 2,
    "n_heads": 2,
    "inner_size": 256,
    "hidden_dropout": 0.5,
    "attn_dropout": 0.5,
    "pos_encoding": "absolute",  # absolute | relative | none (models.encoders.Transformer)
}
# What a kNN baseline has besides its hyperparameters (models.knn.KNN_DEFAULTS): the seed (of
# "random" sampling), the epoch budget a search or test stage sets (a fit is one pass, so it is
# unused) and how many rows are scored at a time.
_KNN_COMMON = {"seed": 2020, "epochs": 1, "eval_batch_size": 1024}
# Keys that change how a run is computed, not what it computes (scores are the same at any
# evaluation batch size): left out when arms are compared for fairness (hpo.fairness).
NEUTRAL_KEYS = frozenset({"eval_batch_size"})
_HN = {"hn_k": 64, "hn_lambda": 0.2}
# da_scorer "mlp" scores [f_i; f_last] with an MLP (the paper's DA); "linear" scores f_i as
# CORE-trm does, so DA with every switch off and a linear scorer is exactly CORE-trm.
_DA = {"da_gating": True, "da_recent": True, "da_residual": True, "da_scorer": "mlp"}
# layer_aggregation: weighted (learned softmax weights) | uniform (the guide's ablation: all
# layers, equal weights) | last (last layer only); see models.encoders.EnhancedEncoder.
# aux_length_weight / aux_order_weight: the guide's auxiliary tasks (session-length regression,
# shuffle detection; models.core), each weighted, off by default.
_ENHANCED = {
    "layer_aggregation": "weighted", "enh_gate": True, "enh_inbatch": True, "beta": 0.5,
    "aux_length_weight": 0.0, "aux_order_weight": 0.0,
}
# The guide's EMA: momentum m = ema_target of a target copy of the item table, which the training
# loss scores against, updated after every step by E_tgt <- m E_tgt + (1 - m) E (models.core);
# 0 = off (the loss scores against the online table). For the variants about the guide (and
# diffaug, whose backbone may be the enhanced one).
_GUIDE = {"ema_target": 0.0}
# CL4SRec (models.augment): each view of a session goes through one of cl_augmentations (a
# comma-separated string, or a list, of crop / mask / reorder; resolved to the canonical string)
# with its ratio: crop keeps eta = cl_crop_ratio of the session, mask masks gamma =
# cl_mask_ratio of it, reorder shuffles a span of beta = cl_reorder_ratio of it. NT-Xent between
# the views, weighted by cl_weight, at temperature cl_temperature. The defaults are the guide's
# setting (its props/core_trm_contrastive.yaml and the SPEC): masking only, ratio 0.2, in the
# guide's form (cl_mask "guide": to padding, never the last item); CL4SRec's form (a learned mask
# token, any item) and the other augmentations are choices.
_CONTRASTIVE = {
    "cl_weight": 0.1,
    "cl_augmentations": "mask",
    "cl_mask": "guide",
    "cl_crop_ratio": 0.6,
    "cl_mask_ratio": 0.2,
    "cl_reorder_ratio": 0.2,
    "cl_temperature": 0.2,
}
# SemSR-F: size of the projected semantic view, its dropout, and how the behavioural and the
# semantic session vectors are fused (see models.semantic).
_SEMSR_F = {"sem_size": 128, "sem_dropout": 0.2, "fusion": "gate"}
# Persona (models.persona): HDGI persona size and training, metapath families on/off and the
# co-occurrence threshold (the graph), persona fusion, candidates and the re-ranker's weight,
# nearest users averaged for sessions without a known user, and the text view of the items.
_PERSONA = {
    "persona_size": 64,
    "hdgi_epochs": 200,
    "hdgi_lr": 1e-3,
    "mp_ui": True,
    "mp_cooc": True,
    "mp_feature": True,
    "mp_kg": True,
    "cooc_min": 2,
    "persona_fusion": "gate",
    "n_candidates": 100,
    "rerank_mix": 0.5,
    "fallback_k": 10,
    "sem_size": 128,
    "sem_dropout": 0.2,
}

# diffaug (models.diffusion): base backbone and its first stage's epochs; the conditional DDPM
# (steps, beta schedule, the tail's share of the targeted items, prefix window, epochs, width,
# condition dropout); sampling (classifier-free guidance scale, denoising steps per sample, evenly
# spaced over the chain (all of it when at least diffusion_steps), rows added as a share of the
# training rows) and the loss weight of the added rows.
_DIFFAUG = {
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
    # training row whose target is not in the tail, noised to diff_anchor_t0 of the chain and
    # denoised under tail guidance, SDEdit-style: a counterfactual of that session).
    "diff_anchor": "noise",
    "diff_anchor_t0": 0.3,
}

_GROUPS = {
    "ave": (),
    "trm": (_TRANSFORMER,),
    "da": (_TRANSFORMER, _DA),
    "hn": (_TRANSFORMER, _HN),
    "dahn": (_TRANSFORMER, _DA, _HN),
    "enhanced": (_TRANSFORMER, _ENHANCED, _GUIDE),
    "contrastive": (_TRANSFORMER, _CONTRASTIVE, _GUIDE),
    "semsr_i": (_TRANSFORMER,),
    "semsr_f": (_TRANSFORMER, _SEMSR_F),
    "persona": (_TRANSFORMER, _PERSONA),
    "diffaug": (_TRANSFORMER, _DA, _ENHANCED, _GUIDE, _DIFFAUG),
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
    "cl_mask_ratio": _FRACTION,
    "cl_crop_ratio": (lambda v: 0.0 < v <= 1.0, "in (0, 1]"),
    "cl_reorder_ratio": (lambda v: 0.0 <= v <= 1.0, "in [0, 1]"),
    "ema_decay": _FRACTION,
    "ema_target": _FRACTION,
    "grad_clip": _NON_NEGATIVE,
    "aux_length_weight": _NON_NEGATIVE,
    "aux_order_weight": _NON_NEGATIVE,
    "cl_mask": (lambda v: v in MASK_MODES, f"one of {MASK_MODES}"),
    "diff_anchor": (lambda v: v in ANCHORS, f"one of {ANCHORS}"),
    "diff_anchor_t0": (lambda v: 0.0 < v <= 1.0, "in (0, 1]"),
    "label_smoothing": _FRACTION,
    "loss_impl": (lambda v: v in LOSS_CHOICES, f"one of {LOSS_CHOICES}"),
    "bf16_scope": (lambda v: v in BF16_SCOPES, f"one of {BF16_SCOPES}"),
    "sem_dropout": _FRACTION,
    "hn_lambda": (lambda v: 0.0 <= v <= 1.0, "in [0, 1]"),
    "rerank_mix": (lambda v: 0.0 <= v <= 1.0, "in [0, 1]"),
    "hdgi_lr": _POSITIVE,
    "temperature": _POSITIVE,
    "cl_temperature": _POSITIVE,
    "lr": _POSITIVE,
    "weight_decay": _NON_NEGATIVE,
    "beta": _NON_NEGATIVE,
    "cl_weight": _NON_NEGATIVE,
    "pop_weighting": (lambda v: v in POP_WEIGHTINGS, f"one of {POP_WEIGHTINGS}"),
    "ips_power": _NON_NEGATIVE,
    "ips_clip": (lambda v: v == 0 or v >= 1, "0 (no clip) or >= 1"),
    "base": (lambda v: v in DIFFAUG_BASES, f"one of {DIFFAUG_BASES}"),
    "beta_schedule": (lambda v: v in BETA_SCHEDULES, f"one of {BETA_SCHEDULES}"),
    "tail_quantile": (lambda v: 0.0 < v < 1.0 - HEAD_FRACTION, f"in (0, {1 - HEAD_FRACTION:g})"),
    "cond_dropout": (lambda v: 0.0 < v < 1.0, "in (0, 1)"),
    "guidance_scale": _NON_NEGATIVE,
    "aug_ratio": _POSITIVE,
    "aug_weight": _POSITIVE,
    "diff_hidden": (lambda v: v >= 4 and v % 4 == 0, "a positive multiple of 4"),
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
            "persona_size",
            "hdgi_epochs",
            "cooc_min",
            "n_candidates",
            "fallback_k",
            "diff_base_epochs",
            "diffusion_steps",
            "diff_window",
            "diff_epochs",
            "sample_steps",
            "grad_accum",
        ),
        _COUNT,
    ),
    "precision": (lambda v: v in PRECISIONS, f"one of {PRECISIONS}"),
    "da_scorer": (lambda v: v in DA_SCORERS, f"one of {DA_SCORERS}"),
    "fusion": (lambda v: v in FUSIONS, f"one of {FUSIONS}"),
    "persona_fusion": (lambda v: v in PERSONA_FUSIONS, f"one of {PERSONA_FUSIONS}"),
    "pos_encoding": (lambda v: v in POS_ENCODINGS, f"one of {POS_ENCODINGS}"),
    "layer_aggregation": (lambda v: v in LAYER_AGGREGATIONS, f"one of {LAYER_AGGREGATIONS}"),
    **KNN_RANGES,
}
# Keys whose value names a set: a list, or a comma-separated string; parsed (ValueError when
# invalid) and resolved to the canonical comma-separated string.
_SETS = {"cl_augmentations": parse_augmentations}


def fits_once(variant: str) -> bool:
    """Whether ``variant`` is fitted in one pass (the kNN baselines) rather than trained epoch
    by epoch: a search trial of it reports one validation result, and ASHA has nothing to stop.

    Args:
        variant: a variant name.
    """
    return variant in KNN_VARIANTS


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"unknown model {variant!r}; expected one of {VARIANTS}")


def default_config(variant: str) -> dict:
    """Every key of ``variant`` with its spec default, including "model"."""
    _check_variant(variant)
    if variant in KNN_VARIANTS:
        return {"model": variant, **_KNN_COMMON, **KNN_DEFAULTS[variant]}
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


def needs_dataset(variant: str) -> bool:
    """Whether ``variant`` is built from the dataset (``build_model_for``) rather than from the
    catalog size and item vectors alone; such a dataset also needs users in its splits and its
    graph side files attached (``data.graph_files.attach_graph_files``) when it has them."""
    _check_variant(variant)
    return variant in DATASET_VARIANTS


def dataset_needs(variants) -> dict[str, bool]:
    """What loading a dataset must attach for ``variants`` (one or several variant names), as
    keyword arguments of ``data.DatasetSource.load`` / ``check``: ``item_vectors`` (semantic
    vectors of the item text) and ``graph_files`` (users, links, knowledge graph)."""
    variants = [variants] if isinstance(variants, str) else list(variants)
    return {
        "item_vectors": any(needs_item_text(v) for v in variants),
        "graph_files": any(needs_dataset(v) for v in variants),
    }


def _canonical_set(key: str, value: object) -> object:
    """A set-valued key's value as its canonical comma-separated string (other types are left
    to ``_coerce``'s type error)."""
    if not isinstance(value, str | list | tuple):
        return value
    try:
        return ",".join(_SETS[key](value))
    except ValueError as exc:
        raise ValueError(f"config key {key!r}: {exc}") from None


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
        if key in _SETS:
            value = _canonical_set(key, value)
        config[key] = coerce(key, value, config[key])
    for key, (check, description) in _RANGES.items():
        if key in config and not check(config[key]):
            raise ValueError(f"config key {key!r} must be {description}, got {config[key]!r}")
    if config["model"] in KNN_VARIANTS:
        check_knn_params(config["model"], config)
    if "n_heads" in config and config["embedding_size"] % config["n_heads"]:
        raise ValueError("embedding_size must be a multiple of n_heads")
    if "mp_ui" in config and not any(config[key] for key in METAPATH_KEYS.values()):
        switches = sorted(METAPATH_KEYS.values())
        raise ValueError(f"at least one metapath switch {switches} must be on")
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
        pos_encoding=config["pos_encoding"],
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
            transformer, aggregation=config["layer_aggregation"], gate=config["enh_gate"]
        )
    return TrmEncoder(transformer)


def _objective(config: dict) -> Objective:
    variant = config["model"]
    if variant in ("hn", "dahn"):
        return Objective(hn_k=config["hn_k"], hn_lambda=config["hn_lambda"])
    if variant == "enhanced":
        return Objective(
            inbatch_weight=config["beta"] if config["enh_inbatch"] else 0.0,
            target_momentum=config["ema_target"],
            aux_length_weight=config["aux_length_weight"],
            aux_order_weight=config["aux_order_weight"],
        )
    if variant == "contrastive":
        return Objective(
            cl_weight=config["cl_weight"],
            cl_augmentations=parse_augmentations(config["cl_augmentations"]),
            cl_mask=config["cl_mask"],
            cl_crop_ratio=config["cl_crop_ratio"],
            cl_mask_ratio=config["cl_mask_ratio"],
            cl_reorder_ratio=config["cl_reorder_ratio"],
            cl_temperature=config["cl_temperature"],
            target_momentum=config["ema_target"],
        )
    return Objective()


def _loss_options(config: dict) -> dict:
    """The full-catalog loss's settings, the same for every variant's objective. The trainer
    resolves ``loss_impl: auto`` and ``precision: auto`` for its device before it builds the
    model (``models.precision``); a model built without a trainer (inference) takes chunked,
    which gives the same loss."""
    impl = config["loss_impl"]
    return {"label_smoothing": config["label_smoothing"],
            "loss_impl": "chunked" if impl == "auto" else impl,
            "loss_autocast": config["precision"] == "bf16" and config["bf16_scope"] == "loss"}


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
    if needs_dataset(variant):
        raise ValueError(f"model {variant!r} is built from its dataset: use build_model_for")
    if fits_once(variant):
        raise ValueError(f"model {variant!r} is a kNN baseline, fitted by "
                         "models.knn.KnnTrainer (models.trainer.make_trainer), not trained")
    if variant == "diffaug":  # the backbone; the generated rows are the trainer's
        return build_model({**config, "model": config["base"]}, n_items, item_vectors)
    if needs_item_text(variant) and item_vectors is None:
        raise ValueError(
            f"model {variant!r} needs semantic item vectors made from item text; "
            "attach them with data.text.attach_item_vectors"
        )
    options = {
        "sess_dropout": config["sess_dropout"],
        "item_dropout": config["item_dropout"],
        "temperature": config["temperature"],
        "objective": replace(_objective(config), **_loss_options(config)),
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


def build_model_for(config: dict, dataset: SessionDataset) -> CORE:
    """The model a resolved config describes, for ``dataset``: ``build_model`` with its catalog
    size and item vectors, or, for the ``persona`` variant, its personas (trained by HDGI on the
    training split's graph, or read from their cache) and the two-stage model.

    Args:
        config: a complete config (``resolve_config``).
        dataset: the dataset the model is trained on (``item_vectors`` attached for the
            variants that need item text; ``graph_files`` attached when it has them).

    Raises:
        ValueError: as ``build_model``; for ``persona``, a dataset without users or vectors.
    """
    variant = config.get("model")
    if variant not in DATASET_VARIANTS:
        return build_model(config, dataset.n_items, dataset.item_vectors)
    missing = sorted(config_keys(variant) - set(config))
    if missing:
        raise ValueError(f"build_model_for needs a resolved config; missing {missing}")
    if dataset.item_vectors is None:
        raise ValueError(
            f"model {variant!r} needs semantic item vectors made from item text; "
            "attach them with data.text.attach_item_vectors"
        )
    graph_settings, hdgi_settings = settings_from_config(config)
    personas = train_personas(dataset, graph_settings, hdgi_settings, config["seed"])
    n_users = max(
        int(split.users.max(initial=0)) + 1
        for split in (dataset.train, dataset.valid, dataset.test)
        if split is not None and split.users is not None
    )
    table, known = personas.table(max(n_users, int(personas.user_ids.max()) + 1))
    return build_persona_model(config, dataset.n_items, dataset.item_vectors, table, known,
                               personas.profiles, personas.vectors)


def build_persona_model(
    config: dict,
    n_items: int,
    item_vectors: np.ndarray,
    personas: np.ndarray,
    known: np.ndarray,
    profiles: np.ndarray,
    profile_personas: np.ndarray,
) -> PersonaCORE:
    """The ``persona`` model of a resolved config from its data (what ``build_model_for``
    derives from the dataset; ``models.recommend`` passes the copies a trained model carries).

    Args:
        config: a complete ``persona`` config (``resolve_config``).
        n_items: catalog rows (row 0 is padding).
        item_vectors: semantic item vectors [n_items, D].
        personas: persona per user id [n_users, P].
        known: bool [n_users], which user ids have a persona.
        profiles: profiles [n_known, D] of the training users.
        profile_personas: their personas [n_known, P], same order.

    Returns:
        An untrained ``PersonaCORE``.
    """
    d = config["embedding_size"]
    options = {
        "sess_dropout": config["sess_dropout"],
        "item_dropout": config["item_dropout"],
        "temperature": config["temperature"],
        "objective": Objective(**_loss_options(config)),
    }
    base = CORE(n_items, d, _encoder({**config, "model": "trm"}), **options)
    return PersonaCORE(
        n_items, d, _encoder(config), base, item_vectors, personas, known,
        profiles, profile_personas, persona_fusion=config["persona_fusion"],
        n_candidates=config["n_candidates"], rerank_mix=config["rerank_mix"],
        fallback_k=config["fallback_k"], sem_size=config["sem_size"],
        sem_dropout=config["sem_dropout"], **options,
    )
