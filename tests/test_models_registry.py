"""Registry: the contract's keys and defaults, validation, and every variant builds and trains."""

import numpy as np
import pytest
import torch

from models.knn import KNN_DEFAULTS
from models.registry import (
    SEMANTIC_VARIANTS,
    VARIANTS,
    build_model,
    config_keys,
    default_config,
    fits_once,
    needs_dataset,
    needs_item_text,
    resolve_config,
)

COMMON = {
    "model",
    "embedding_size",
    "sess_dropout",
    "item_dropout",
    "temperature",
    "lr",
    "weight_decay",
    "batch_size",
    "eval_batch_size",
    "max_seq_length",
    "epochs",
    "patience",
    "seed",
    "precision",
    "bf16_scope",
    "ema_decay",
    "grad_clip",
    "grad_accum",
    "pop_weighting",
    "ips_power",
    "ips_clip",
    "loss_impl",
    "label_smoothing",
}
TRANSFORMER = {
    "n_layers", "n_heads", "inner_size", "hidden_dropout", "attn_dropout", "pos_encoding",
}
EXTRA = {
    "ave": set(),
    "trm": TRANSFORMER,
    "da": TRANSFORMER | {"da_gating", "da_recent", "da_residual", "da_scorer"},
    "hn": TRANSFORMER | {"hn_k", "hn_lambda"},
    "dahn": TRANSFORMER
    | {"da_gating", "da_recent", "da_residual", "da_scorer", "hn_k", "hn_lambda"},
    "enhanced": TRANSFORMER
    | {"layer_aggregation", "enh_gate", "enh_inbatch", "beta", "aux_length_weight",
       "aux_order_weight", "ema_target"},
    "contrastive": TRANSFORMER
    | {"cl_weight", "cl_augmentations", "cl_mask", "cl_crop_ratio", "cl_mask_ratio",
       "cl_reorder_ratio", "cl_temperature", "ema_target"},
    "semsr_i": TRANSFORMER,
    "semsr_f": TRANSFORMER | {"sem_size", "sem_dropout", "fusion"},
    "persona": TRANSFORMER
    | {"persona_size", "hdgi_epochs", "hdgi_lr", "mp_ui", "mp_cooc", "mp_feature", "mp_kg",
       "cooc_min", "persona_fusion", "n_candidates", "rerank_mix", "fallback_k", "sem_size",
       "sem_dropout"},
    "diffaug": TRANSFORMER
    | {"da_gating", "da_recent", "da_residual", "da_scorer", "layer_aggregation", "enh_gate",
       "enh_inbatch", "beta", "aux_length_weight", "aux_order_weight", "ema_target", "base",
       "diff_base_epochs", "diffusion_steps", "beta_schedule", "tail_quantile", "diff_window",
       "diff_epochs", "diff_hidden", "cond_dropout", "guidance_scale", "sample_steps",
       "aug_ratio", "aug_weight", "diff_anchor", "diff_anchor_t0"},
}


def test_variants_and_keys_follow_the_contract():
    assert VARIANTS == (
        "ave", "trm", "da", "hn", "dahn", "enhanced", "contrastive", "semsr_i", "semsr_f",
        "persona", "diffaug", "sknn", "vsknn", "stan", "vstan",
    )
    for variant in VARIANTS:
        if fits_once(variant):  # a kNN baseline: its hyperparameters, no training keys
            assert config_keys(variant) == frozenset(
                {"model", "seed", "epochs", "eval_batch_size", *KNN_DEFAULTS[variant]})
        else:
            assert config_keys(variant) == frozenset(COMMON | EXTRA[variant])
        assert default_config(variant)["model"] == variant
    assert [v for v in VARIANTS if needs_dataset(v)] == ["persona"]  # built by build_model_for
    assert needs_item_text("persona") and not needs_item_text("trm")


def test_knn_configs_are_resolved_and_checked_like_the_others():
    config = resolve_config({"model": "vstan", "k": 50, "lambda_idf": 0})
    assert config["k"] == 50 and config["lambda_idf"] == 0.0  # an int taken for a float
    assert config["sample_size"] == KNN_DEFAULTS["vstan"]["sample_size"]
    with pytest.raises(ValueError, match="'k' must be >= 1"):
        resolve_config({"model": "sknn", "k": 0})
    with pytest.raises(ValueError, match="similarity"):
        resolve_config({"model": "sknn", "similarity": "vec"})  # V-SKNN's, not SKNN's
    with pytest.raises(ValueError, match="unknown config key"):
        resolve_config({"model": "sknn", "lambda_spw": 1.0})  # STAN's
    with pytest.raises(TypeError, match="sampling"):
        resolve_config({"model": "stan", "sampling": 1})
    with pytest.raises(ValueError, match="kNN baseline"):
        build_model(config, n_items=10)
    assert fits_once("stan") and not fits_once("trm")


def test_spec_defaults():
    config = default_config("dahn")
    assert (config["embedding_size"], config["n_layers"], config["n_heads"]) == (100, 2, 2)
    assert (config["inner_size"], config["hidden_dropout"], config["attn_dropout"]) == (
        256,
        0.5,
        0.5,
    )
    assert (config["sess_dropout"], config["item_dropout"], config["temperature"]) == (
        0.2,
        0.2,
        0.07,
    )
    assert (config["lr"], config["batch_size"], config["patience"], config["epochs"]) == (
        1e-3,
        2048,
        5,
        300,
    )
    assert (config["hn_k"], config["hn_lambda"], config["precision"]) == (64, 0.2, "auto")
    assert default_config("enhanced")["beta"] == 0.5
    contrastive = default_config("contrastive")
    # The guide's contrastive setting (its props file and the SPEC): masking only, ratio 0.2,
    # to padding and never the last item; weight 0.1, temperature 0.2.
    assert (contrastive["cl_weight"], contrastive["cl_augmentations"], contrastive["cl_mask"],
            contrastive["cl_mask_ratio"], contrastive["cl_temperature"]) == (
        0.1, "mask", "guide", 0.2, 0.2)
    # The guide's further options are off by default, and the step is plain Adam.
    assert (config["grad_clip"], config["grad_accum"]) == (0.0, 1)
    assert contrastive["ema_target"] == default_config("enhanced")["ema_target"] == 0.0


def test_resolve_config_rejects_unknown_keys_by_name():
    with pytest.raises(ValueError, match="n_layers"):
        resolve_config({"model": "ave", "n_layers": 3})
    with pytest.raises(ValueError, match="model"):
        resolve_config({"lr": 0.1})
    with pytest.raises(ValueError, match="unknown model"):
        resolve_config({"model": "gru"})


def test_resolve_config_merges_coerces_and_validates():
    config = resolve_config({"model": "hn", "lr": 1, "hn_k": np.int64(8), "temperature": 0.1})
    assert config["lr"] == 1.0 and isinstance(config["lr"], float)
    assert config["hn_k"] == 8 and type(config["hn_k"]) is int
    assert config["n_heads"] == 2
    for bad in ({"hn_k": 2.5}, {"batch_size": True}, {"precision": 16}):
        with pytest.raises(TypeError):
            resolve_config({"model": "hn", **bad})
    for bad in (
        {"hn_lambda": 1.5},
        {"item_dropout": 1.0},
        {"temperature": 0.0},
        {"precision": "fp16"},
        {"n_heads": 3},
    ):
        with pytest.raises(ValueError):
            resolve_config({"model": "hn", **bad})


# The persona variant is built from a dataset (tests/test_models_persona.py), the kNN baselines
# are fitted, not trained (tests/test_models_knn.py).
@pytest.mark.parametrize(
    "variant", [v for v in VARIANTS if not needs_dataset(v) and not fits_once(v)])
def test_every_variant_trains_and_predicts(variant):
    torch.manual_seed(0)
    config = {"model": variant, "embedding_size": 16}
    if variant != "ave":
        config["inner_size"] = 32
    if variant in ("hn", "dahn"):
        config["hn_k"] = 4
    vectors = None
    if variant in SEMANTIC_VARIANTS:
        vectors = np.random.default_rng(0).normal(size=(30, 12)).astype(np.float32)
        vectors[0] = 0
    model = build_model(resolve_config(config), n_items=30, item_vectors=vectors)
    items = torch.tensor([[1, 2, 3, 0], [4, 0, 0, 0], [5, 6, 7, 8]])
    targets = torch.tensor([4, 5, 9])
    loss = model(items, targets)
    loss.backward()
    assert torch.isfinite(loss)
    assert model.item_embedding.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        scores = model.predict(items)
    assert scores.shape == (3, 30)
    assert torch.all(scores[:, 0] == float("-inf")) and torch.all(torch.isfinite(scores[:, 1:]))
    if variant != "semsr_i":  # SemSR-I starts from projected text, not CORE's uniform init
        bound = 1 / 16**0.5
        assert model.item_embedding.abs().max() <= bound
