"""CORE's own variants (ave, trm, da, hn, dahn, enhanced, contrastive) as specs
(``models.spec``), and the key groups the other trained variants build on: the keys every trained
variant has (``CORE_KEYS``), the transformer's, and the encoders' and objectives' of the guide.

A CORE variant is CORE (``models.core``) with an encoder (``models.encoders``) and an objective
(``Objective``); its builder reads the config once: ``transformer`` for the shared backbone, the
variant's encoder and objective functions, and ``core_options`` for what every CORE model takes.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from torch import nn

from models.augment import MASK_MODES, parse_augmentations
from models.core import CORE, Objective
from models.encoders import (
    DA_SCORERS,
    LAYER_AGGREGATIONS,
    POS_ENCODINGS,
    AveEncoder,
    DualAttentionEncoder,
    EnhancedEncoder,
    Transformer,
    TrmEncoder,
)
from models.precision import BF16_SCOPES, LOSS_CHOICES, PRECISIONS
from models.spec import (
    COUNT,
    FRACTION,
    NON_NEGATIVE,
    OPEN_UNIT,
    POSITIVE,
    UNIT_INTERVAL,
    Keys,
    VariantSpec,
    counts,
    one_of,
)

# How the training loss weighs each row against popularity bias (models.weighting).
POP_WEIGHTINGS = ("none", "ips")

CORE_KEYS = Keys(
    {
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
        # auto: bf16 where bf16 matrix products are native, else fp32; bf16_scope: which part
        # runs under bf16 (the loss only, or all of the step); see models.precision.
        "precision": "auto",
        "bf16_scope": "all",
        # Decay of an exponential moving average of the weights, used for validation, checkpoint
        # selection and test (models.ema); 0 = off. Not the guide's EMA, which is ema_target
        # (GUIDE): momentum-updated target item embeddings used in the training loss.
        "ema_decay": 0.0,
        # The optimiser step (models.trainer): gradients clipped to a global L2 norm of at most
        # grad_clip (0 = no clipping), and each batch of batch_size rows split into grad_accum
        # micro-batches whose gradients are accumulated before the step (a memory knob: the
        # step still sees batch_size rows).
        "grad_clip": 0.0,
        "grad_accum": 1,
        # The full-catalog loss: label smoothing of its cross-entropy (eps spread over the real
        # items, never onto padding) and its implementation: chunked (blocks of batch rows),
        # dense (one [batch x catalog] buffer, the reference) or auto, the faster here
        # (models.precision).
        "label_smoothing": 0.0,
        "loss_impl": "auto",
        # Popularity debiasing of the training loss, for any variant (models.weighting): none,
        # or inverse-propensity weights w = (count(target) / max count)^(-ips_power), clipped
        # at ips_clip (0 = no clip) and normalised to mean 1 over the training rows.
        "pop_weighting": "none",
        "ips_power": 0.5,
        "ips_clip": 0.0,
    },
    {
        "sess_dropout": FRACTION,
        "item_dropout": FRACTION,
        "temperature": POSITIVE,
        "lr": POSITIVE,
        "weight_decay": NON_NEGATIVE,
        **counts("embedding_size", "batch_size", "eval_batch_size", "max_seq_length", "epochs",
                 "patience", "grad_accum"),
        "precision": one_of(PRECISIONS),
        "bf16_scope": one_of(BF16_SCOPES),
        "ema_decay": FRACTION,
        "grad_clip": NON_NEGATIVE,
        "label_smoothing": FRACTION,
        "loss_impl": one_of(LOSS_CHOICES),
        "pop_weighting": one_of(POP_WEIGHTINGS),
        "ips_power": NON_NEGATIVE,
        "ips_clip": (lambda v: v == 0 or v >= 1, "0 (no clip) or >= 1"),
    },
)


def _heads_divide_the_width(config: dict) -> None:
    if config["embedding_size"] % config["n_heads"]:
        raise ValueError("embedding_size must be a multiple of n_heads")


TRANSFORMER = Keys(
    {
        "n_layers": 2,
        "n_heads": 2,
        "inner_size": 256,
        "hidden_dropout": 0.5,
        "attn_dropout": 0.5,
        "pos_encoding": "absolute",  # absolute | relative | none (models.encoders.Transformer)
    },
    {
        **counts("n_layers", "n_heads", "inner_size"),
        "hidden_dropout": FRACTION,
        "attn_dropout": FRACTION,
        "pos_encoding": one_of(POS_ENCODINGS),
    },
    rules=(_heads_divide_the_width,),
)
# da_scorer "mlp" scores [f_i; f_last] with an MLP (the paper's DA); "linear" scores f_i as
# CORE-trm does, so DA with every switch off and a linear scorer is exactly CORE-trm.
DA = Keys(
    {"da_gating": True, "da_recent": True, "da_residual": True, "da_scorer": "mlp"},
    {"da_scorer": one_of(DA_SCORERS)},
)
HN = Keys({"hn_k": 64, "hn_lambda": 0.2}, {"hn_k": COUNT, "hn_lambda": UNIT_INTERVAL})
# layer_aggregation: weighted (learned softmax weights) | uniform (the guide's ablation: all
# layers, equal weights) | last (last layer only); see models.encoders.EnhancedEncoder.
# aux_length_weight / aux_order_weight: the guide's auxiliary tasks (session-length regression,
# shuffle detection; models.core), each weighted, off by default.
ENHANCED = Keys(
    {"layer_aggregation": "weighted", "enh_gate": True, "enh_inbatch": True, "beta": 0.5,
     "aux_length_weight": 0.0, "aux_order_weight": 0.0},
    {"layer_aggregation": one_of(LAYER_AGGREGATIONS), "beta": NON_NEGATIVE,
     "aux_length_weight": NON_NEGATIVE, "aux_order_weight": NON_NEGATIVE},
)
# The guide's EMA: momentum m = ema_target of a target copy of the item table, which the
# training loss scores against, updated after every step by E_tgt <- m E_tgt + (1 - m) E
# (models.core); 0 = off (the loss scores against the online table). For the variants about the
# guide (and diffaug, whose backbone may be the enhanced one).
GUIDE = Keys({"ema_target": 0.0}, {"ema_target": FRACTION})
# CL4SRec (models.augment): each view of a session goes through one of cl_augmentations (a
# comma-separated string, or a list, of crop / mask / reorder; resolved to the canonical string)
# with its ratio: crop keeps eta = cl_crop_ratio of the session, mask masks gamma =
# cl_mask_ratio of it, reorder shuffles a span of beta = cl_reorder_ratio of it. NT-Xent between
# the views, weighted by cl_weight, at temperature cl_temperature. The defaults are the guide's
# setting (its props/core_trm_contrastive.yaml and the SPEC): masking only, ratio 0.2, in the
# guide's form (cl_mask "guide": to padding, never the last item); CL4SRec's form (a learned
# mask token, any item) and the other augmentations are choices.
CONTRASTIVE = Keys(
    {
        "cl_weight": 0.1,
        "cl_augmentations": "mask",
        "cl_mask": "guide",
        "cl_crop_ratio": 0.6,
        "cl_mask_ratio": 0.2,
        "cl_reorder_ratio": 0.2,
        "cl_temperature": 0.2,
    },
    {
        "cl_weight": NON_NEGATIVE,
        "cl_mask": one_of(MASK_MODES),
        "cl_crop_ratio": OPEN_UNIT,
        "cl_mask_ratio": FRACTION,
        "cl_reorder_ratio": UNIT_INTERVAL,
        "cl_temperature": POSITIVE,
    },
    sets={"cl_augmentations": parse_augmentations},
)


# --------------------------------------------------------------------------- settings


def transformer(config: dict) -> Transformer:
    """The transformer backbone of a resolved config (its ``TRANSFORMER`` keys are the
    transformer's keyword arguments).

    Args:
        config: a resolved config of a variant with the ``TRANSFORMER`` keys.

    Returns:
        An untrained ``Transformer``.
    """
    return Transformer(config["embedding_size"], max_seq_length=config["max_seq_length"],
                       **{key: config[key] for key in TRANSFORMER.defaults})


def trm_encoder(config: dict) -> nn.Module:
    """CORE-trm's encoder of a resolved config.

    Args:
        config: a resolved config of a variant with the ``TRANSFORMER`` keys.

    Returns:
        An untrained ``TrmEncoder``.
    """
    return TrmEncoder(transformer(config))


def _ave_encoder(config: dict) -> nn.Module:
    return AveEncoder()


def _da_encoder(config: dict) -> nn.Module:
    return DualAttentionEncoder(
        transformer(config),
        gating=config["da_gating"],
        recent=config["da_recent"],
        residual=config["da_residual"],
        scorer=config["da_scorer"],
    )


def _enhanced_encoder(config: dict) -> nn.Module:
    return EnhancedEncoder(
        transformer(config), aggregation=config["layer_aggregation"], gate=config["enh_gate"]
    )


def _plain(config: dict) -> Objective:
    return Objective()


def _hn_objective(config: dict) -> Objective:
    return Objective(**{key: config[key] for key in HN.defaults})


def _enhanced_objective(config: dict) -> Objective:
    return Objective(
        inbatch_weight=config["beta"] if config["enh_inbatch"] else 0.0,
        target_momentum=config["ema_target"],
        aux_length_weight=config["aux_length_weight"],
        aux_order_weight=config["aux_order_weight"],
    )


def _contrastive_objective(config: dict) -> Objective:
    terms = {key: config[key] for key in CONTRASTIVE.defaults}  # Objective's field names
    terms["cl_augmentations"] = parse_augmentations(terms["cl_augmentations"])
    return Objective(**terms, target_momentum=config["ema_target"])


def core_options(config: dict, objective: Objective | None = None) -> dict:
    """CORE's keyword options of a resolved config: the dropouts, the temperature and the
    objective with the full-catalog loss's settings, the same for every variant. The trainer
    resolves ``loss_impl: auto`` and ``precision: auto`` for its device before it builds the
    model (``models.precision``); a model built without a trainer (inference) takes chunked,
    which gives the same loss.

    Args:
        config: a resolved config.
        objective: the variant's objective terms (default: plain CORE).

    Returns:
        ``sess_dropout``, ``item_dropout``, ``temperature`` and ``objective``.
    """
    impl = config["loss_impl"]
    loss = {"label_smoothing": config["label_smoothing"],
            "loss_impl": "chunked" if impl == "auto" else impl,
            "loss_autocast": config["precision"] == "bf16" and config["bf16_scope"] == "loss"}
    return {
        "sess_dropout": config["sess_dropout"],
        "item_dropout": config["item_dropout"],
        "temperature": config["temperature"],
        "objective": replace(objective or Objective(), **loss),
    }


def _core_builder(encoder, objective=_plain):
    """The builder of CORE with ``encoder(config)`` and ``objective(config)``."""

    def build(config: dict, n_items: int, item_vectors: np.ndarray | None = None) -> CORE:
        return CORE(n_items, config["embedding_size"], encoder(config),
                    **core_options(config, objective(config)))

    return build


def _spec(name: str, label: str, groups: tuple[Keys, ...], encoder, objective=_plain):
    return VariantSpec(name, label, (CORE_KEYS, *groups), build=_core_builder(encoder, objective))


SPECS = {
    spec.name: spec
    for spec in (
        _spec("ave", "CORE-ave", (), _ave_encoder),
        _spec("trm", "CORE-trm", (TRANSFORMER,), trm_encoder),
        _spec("da", "CORE-DA", (TRANSFORMER, DA), _da_encoder),
        _spec("hn", "CORE-HN", (TRANSFORMER, HN), trm_encoder, _hn_objective),
        _spec("dahn", "CORE-DAHN", (TRANSFORMER, DA, HN), _da_encoder, _hn_objective),
        _spec("enhanced", "CORE-trm-enhanced", (TRANSFORMER, ENHANCED, GUIDE), _enhanced_encoder,
              _enhanced_objective),
        _spec("contrastive", "CORE-trm-contrastive", (TRANSFORMER, CONTRASTIVE, GUIDE),
              trm_encoder, _contrastive_objective),
    )
}
