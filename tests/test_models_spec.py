"""Variant specs (models.spec): every default, its order and every range pinned, so that moving a
key group between modules cannot change a default silently; the registry as a table of specs;
the dual-view item table that SemSR-F and the persona model share."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models import registry
from models.core_variants import CORE_KEYS
from models.persona.model import PersonaCORE
from models.persona.spec import build_persona_model
from models.semantic import DualViewCORE, SemanticFusionCORE
from models.spec import Keys, VariantSpec

COMMON = [
    ("embedding_size", 100), ("sess_dropout", 0.2), ("item_dropout", 0.2), ("temperature", 0.07),
    ("lr", 1e-3), ("weight_decay", 0.0), ("batch_size", 2048), ("eval_batch_size", 2048),
    ("max_seq_length", 50), ("epochs", 300), ("patience", 5), ("seed", 2020),
    ("precision", "auto"), ("bf16_scope", "all"), ("ema_decay", 0.0), ("grad_clip", 0.0),
    ("grad_accum", 1), ("label_smoothing", 0.0), ("loss_impl", "auto"), ("pop_weighting", "none"),
    ("ips_power", 0.5), ("ips_clip", 0.0),
]
TRANSFORMER = [("n_layers", 2), ("n_heads", 2), ("inner_size", 256), ("hidden_dropout", 0.5),
               ("attn_dropout", 0.5), ("pos_encoding", "absolute")]
DA = [("da_gating", True), ("da_recent", True), ("da_residual", True), ("da_scorer", "mlp")]
HN = [("hn_k", 64), ("hn_lambda", 0.2)]
ENHANCED = [("layer_aggregation", "weighted"), ("enh_gate", True), ("enh_inbatch", True),
            ("beta", 0.5), ("aux_length_weight", 0.0), ("aux_order_weight", 0.0)]
GUIDE = [("ema_target", 0.0)]
CONTRASTIVE = [("cl_weight", 0.1), ("cl_augmentations", "mask"), ("cl_mask", "guide"),
               ("cl_crop_ratio", 0.6), ("cl_mask_ratio", 0.2), ("cl_reorder_ratio", 0.2),
               ("cl_temperature", 0.2)]
SEMSR_F = [("sem_size", 128), ("sem_dropout", 0.2), ("fusion", "gate")]
PERSONA = [("persona_size", 64), ("hdgi_epochs", 200), ("hdgi_lr", 1e-3), ("mp_ui", True),
           ("mp_cooc", True), ("mp_feature", True), ("mp_kg", True), ("cooc_min", 2),
           ("persona_fusion", "gate"), ("n_candidates", 100), ("rerank_mix", 0.5),
           ("fallback_k", 10), ("sem_size", 128), ("sem_dropout", 0.2)]
DIFFAUG = [("base", "trm"), ("diff_base_epochs", 3), ("diffusion_steps", 50),
           ("beta_schedule", "linear"), ("tail_quantile", 0.5), ("diff_window", 5),
           ("diff_epochs", 10), ("diff_hidden", 128), ("cond_dropout", 0.1),
           ("guidance_scale", 3.0), ("sample_steps", 10), ("aug_ratio", 0.2), ("aug_weight", 0.5),
           ("diff_anchor", "noise"), ("diff_anchor_t0", 0.3)]
KNN_RUN = [("seed", 2020), ("epochs", 1), ("eval_batch_size", 1024)]
STAN = [("lambda_spw", 1.02), ("lambda_snh", 5 / 150), ("lambda_inh", 2.05)]
DEFAULTS = {
    "ave": COMMON,
    "trm": COMMON + TRANSFORMER,
    "da": COMMON + TRANSFORMER + DA,
    "hn": COMMON + TRANSFORMER + HN,
    "dahn": COMMON + TRANSFORMER + DA + HN,
    "enhanced": COMMON + TRANSFORMER + ENHANCED + GUIDE,
    "contrastive": COMMON + TRANSFORMER + CONTRASTIVE + GUIDE,
    "semsr_i": COMMON + TRANSFORMER,
    "semsr_f": COMMON + TRANSFORMER + SEMSR_F,
    "persona": COMMON + TRANSFORMER + PERSONA,
    "diffaug": COMMON + TRANSFORMER + DA + ENHANCED + GUIDE + DIFFAUG,
    "sknn": KNN_RUN + [("k", 100), ("sample_size", 1000), ("sampling", "recent"),
                       ("similarity", "cosine")],
    "vsknn": KNN_RUN + [("k", 100), ("sample_size", 1000), ("sampling", "recent"),
                        ("similarity", "vec"), ("weighting", "div"), ("weighting_score", "div"),
                        ("idf_weighting", 0.0)],
    "stan": KNN_RUN + [("k", 100), ("sample_size", 5000), ("sampling", "recent"), *STAN],
    "vstan": KNN_RUN + [("k", 100), ("sample_size", 5000), ("sampling", "recent"),
                        ("similarity", "cosine"), *STAN, ("lambda_ipw", 1.02),
                        ("lambda_idf", 5.0)],
}
# Every constrained key and how its range reads in an error message.
RANGES = {
    "sess_dropout": "in [0, 1)", "item_dropout": "in [0, 1)", "temperature": "> 0",
    "lr": "> 0", "weight_decay": ">= 0", "embedding_size": ">= 1", "batch_size": ">= 1",
    "eval_batch_size": ">= 1", "max_seq_length": ">= 1", "epochs": ">= 1", "patience": ">= 1",
    "grad_accum": ">= 1", "precision": "one of ('auto', 'fp32', 'bf16')",
    "bf16_scope": "one of ('all', 'loss')", "ema_decay": "in [0, 1)", "grad_clip": ">= 0",
    "label_smoothing": "in [0, 1)", "loss_impl": "one of ('auto', 'chunked', 'dense')",
    "pop_weighting": "one of ('none', 'ips')", "ips_power": ">= 0",
    "ips_clip": "0 (no clip) or >= 1",
    "n_layers": ">= 1", "n_heads": ">= 1", "inner_size": ">= 1", "hidden_dropout": "in [0, 1)",
    "attn_dropout": "in [0, 1)", "pos_encoding": "one of ('absolute', 'relative', 'none')",
    "da_scorer": "one of ('mlp', 'linear')", "hn_k": ">= 1", "hn_lambda": "in [0, 1]",
    "layer_aggregation": "one of ('weighted', 'uniform', 'last')", "beta": ">= 0",
    "aux_length_weight": ">= 0", "aux_order_weight": ">= 0", "ema_target": "in [0, 1)",
    "cl_weight": ">= 0", "cl_mask": "one of ('guide', 'cl4srec')", "cl_crop_ratio": "in (0, 1]",
    "cl_mask_ratio": "in [0, 1)", "cl_reorder_ratio": "in [0, 1]", "cl_temperature": "> 0",
    "sem_size": ">= 1", "sem_dropout": "in [0, 1)", "fusion": "one of ('concat', 'gate')",
    "persona_size": ">= 1", "hdgi_epochs": ">= 1", "cooc_min": ">= 1", "n_candidates": ">= 1",
    "fallback_k": ">= 1", "hdgi_lr": "> 0", "persona_fusion": "one of ('gate', 'concat')",
    "rerank_mix": "in [0, 1]",
    "base": "one of ('ave', 'trm', 'da', 'enhanced')", "diff_base_epochs": ">= 1",
    "diffusion_steps": ">= 1", "diff_window": ">= 1", "diff_epochs": ">= 1",
    "sample_steps": ">= 1", "beta_schedule": "one of ('linear', 'cosine')",
    "tail_quantile": "in (0, 0.8)", "diff_hidden": "a positive multiple of 4",
    "cond_dropout": "in (0, 1)", "guidance_scale": ">= 0", "aug_ratio": "> 0",
    "aug_weight": "> 0", "diff_anchor": "one of ('noise', 'observed')",
    "diff_anchor_t0": "in (0, 1]",
    "k": ">= 1", "sample_size": ">= 0 (0 = every session sharing an item)",
    "sampling": "one of ('recent', 'random')",
    "similarity": "one of sknn ('cosine', 'jaccard'), vsknn ('vec', 'cosine'), "
                  "vstan ('cosine', 'vec')",
    "weighting": "one of ('same', 'div', 'linear', 'log', 'quadratic')",
    "weighting_score": "one of ('same', 'div', 'linear', 'log', 'quadratic')",
    "idf_weighting": ">= 0 (finite; 0 = off)", "lambda_spw": "> 0 (finite)",
    "lambda_snh": "> 0 (finite)", "lambda_inh": "> 0 (finite)", "lambda_ipw": "> 0 (finite)",
    "lambda_idf": ">= 0 (finite; 0 = off)",
}


@pytest.mark.parametrize("variant", list(DEFAULTS))
def test_every_default_and_its_order_are_pinned(variant):
    config = registry.default_config(variant)
    assert list(config.items()) == [("model", variant), *DEFAULTS[variant]]
    assert all(type(config[key]) is type(value) for key, value in DEFAULTS[variant])


def test_every_range_is_pinned_and_checked_by_resolve_config():
    found = {}
    for spec in registry.SPECS.values():
        for group in spec.keys:
            for key, (_, description) in group.ranges.items():
                assert found.setdefault(key, description) == description, key
    assert found == RANGES
    assert registry.VARIANTS == tuple(DEFAULTS)
    # one message for a value out of range, whichever variant has the key
    for variant in ("semsr_f", "persona"):
        with pytest.raises(ValueError, match=r"config key 'sem_dropout' must be in \[0, 1\), "
                                             r"got 1\.0"):
            registry.resolve_config({"model": variant, "sem_dropout": 1.0})


def test_a_spec_is_its_key_groups_in_order():
    spec = registry.spec("dahn")
    assert spec.label == registry.LABELS["dahn"] == "CORE-DAHN" and spec.keys[0] is CORE_KEYS
    assert spec.default_config() == registry.default_config("dahn")
    assert not spec.fits_once and registry.spec("stan").fits_once
    with pytest.raises(ValueError, match="unknown model 'gru'"):
        registry.spec("gru")
    with pytest.raises(ValueError, match="without a default: .*'b'"):
        Keys({"a": 1}, {"b": (lambda v: True, "anything")})
    toy = VariantSpec("toy", "Toy", (Keys({"a": 1}, {"a": (lambda v: v > 0, "> 0")}),
                                     Keys({"b": "x"}, rules=(lambda c: None,))))
    assert toy.resolve({"a": 3}) == {"model": "toy", "a": 3, "b": "x"}
    with pytest.raises(ValueError, match="config key 'a' must be > 0, got 0"):
        toy.resolve({"a": 0})
    with pytest.raises(TypeError, match="config key 'b' expects str"):
        toy.resolve({"b": 1})


VECTORS = np.random.default_rng(0).normal(size=(12, 6)).astype(np.float32)
SMALL = {"embedding_size": 8, "inner_size": 16, "n_layers": 1, "sem_size": 4}
ENCODER = [
    "encoder.transformer.position.weight", "encoder.transformer.norm.weight",
    "encoder.transformer.norm.bias", "encoder.transformer.layers.0.qkv.weight",
    "encoder.transformer.layers.0.qkv.bias", "encoder.transformer.layers.0.proj.weight",
    "encoder.transformer.layers.0.proj.bias", "encoder.transformer.layers.0.norm1.weight",
    "encoder.transformer.layers.0.norm1.bias", "encoder.transformer.layers.0.ff_in.weight",
    "encoder.transformer.layers.0.ff_in.bias", "encoder.transformer.layers.0.ff_out.weight",
    "encoder.transformer.layers.0.ff_out.bias", "encoder.transformer.layers.0.norm2.weight",
    "encoder.transformer.layers.0.norm2.bias", "encoder.scorer.weight", "encoder.scorer.bias",
]
ITEM_VIEWS = ["sem_project.weight", "sem_project.bias", "item_fuse.weight", "item_fuse.bias"]


def persona_model(fusion: str = "gate") -> PersonaCORE:
    config = registry.resolve_config({"model": "persona", **SMALL, "persona_size": 3,
                                      "persona_fusion": fusion})
    known = np.array([0, 1, 1, 1, 1], bool)
    return build_persona_model(config, 12, item_vectors=VECTORS,
                               personas=np.ones((5, 3), np.float32), known=known,
                               profiles=np.ones((4, 6), np.float32),
                               profile_personas=np.ones((4, 3), np.float32))


@pytest.mark.parametrize("fusion", ["gate", "concat"])
def test_both_dual_view_models_keep_their_checkpoint_layout(fusion):
    """Bundles and checkpoints written before still load, and the parameters keep their order
    (the optimiser's state and the gradient norm's sum follow it)."""
    config = registry.resolve_config({"model": "semsr_f", **SMALL, "fusion": fusion})
    semsr = registry.build_model(config, 12, VECTORS)
    assert isinstance(semsr, SemanticFusionCORE) and isinstance(semsr, DualViewCORE)
    assert list(semsr.state_dict()) == ["item_embedding", *ENCODER, *ITEM_VIEWS,
                                        "sem_attention.query.weight", "sem_attention.query.bias",
                                        "sem_attention.key.weight", "sem_attention.score.weight",
                                        "sem_out.weight", "sem_out.bias", "combine.weight",
                                        "combine.bias"]
    assert [name for name, _ in semsr.named_buffers()] == ["semantic"]
    persona = persona_model(fusion)
    assert isinstance(persona, DualViewCORE)
    base = ["base.item_embedding", *(f"base.{name}" for name in ENCODER)]
    assert list(persona.state_dict()) == ["item_embedding", *ENCODER, *base, *ITEM_VIEWS,
                                          "persona_project.weight", "persona_project.bias",
                                          "fuse.weight", "fuse.bias"]
    assert [name for name, _ in persona.named_buffers()] == [
        "semantic", "unit_semantic", "personas", "known", "profiles", "profile_personas"]
    # one item view: the same table from the same weights in both models
    persona.load_state_dict({**persona.state_dict(),
                             **{k: v for k, v in semsr.state_dict().items()
                                if k in ITEM_VIEWS or k == "item_embedding"}})
    with torch.no_grad():
        assert torch.equal(persona.eval().item_table(), semsr.eval().item_table())
    # concat fusion starts as the identity on the session vector, in both models
    if fusion == "concat":
        for layer in (semsr.combine, persona.fuse):
            assert torch.equal(layer.weight[:, :8], torch.eye(8))
