"""The enhanced-CORE guide's features compute what they claim: CL4SRec's augmentations and NT-Xent,
the guide's own mask and its contrastive setting as trial 0, relative positions, the weight
average, the guide's EMA target embeddings and auxiliary tasks, the enhanced encoder's layer
aggregation, their config validation, and that the defaults leave the existing models
unchanged."""

import math

import pytest
import torch
import torch.nn.functional as F
from trainer_runs import straight_and_resumed

import models.core as core_module
from data.synthetic import make_dataset
from hpo.optuna_study import published_params
from hpo.space import load_space
from models.augment import augment, crop, mask, mask_to_padding, parse_augmentations, reorder
from models.ema import WeightEMA
from models.encoders import EnhancedEncoder, Packed, RelativePositionBias, Transformer
from models.losses import nt_xent
from models.registry import build_model, default_config, resolve_config
from models.train import _assignment
from models.trainer import Trainer

D = 16
MASK_ID = 999
TRIALS = 300


def sessions(
    rows: int = TRIALS, width: int = 10, seed: int = 0, n_items: int = 201, full: bool = False
) -> torch.Tensor:
    """Right-padded sessions of lengths 1..width (all ``width`` when ``full``), distinct item
    ids in 1..n_items - 1 within each row."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, width + 1, (rows,), generator=g)
    lengths[0] = width
    if full:
        lengths[:] = width
    items = torch.stack([torch.randperm(n_items - 1, generator=g)[:width] + 1 for _ in range(rows)])
    return items.masked_fill(torch.arange(width) >= lengths[:, None], 0)


def real(row: torch.Tensor) -> list[int]:
    return [int(i) for i in row if i != 0]


# -- CL4SRec augmentations ------------------------------------------------------------------


def test_crop_keeps_a_contiguous_span_moved_to_the_front():
    items = sessions()
    torch.manual_seed(0)
    view = crop(items, 0.6)
    starts = set()
    for original, cropped in zip(items, view, strict=True):
        n, kept = len(real(original)), real(cropped)
        k = max(1, math.floor(0.6 * n))
        assert len(kept) == k and (cropped[:k] != 0).all() and (cropped[k:] == 0).all()
        windows = [real(original)[s : s + k] for s in range(n - k + 1)]
        assert kept in windows
        starts.add(windows.index(kept))
    assert len(starts) > 1  # a random span, not always the prefix


def test_mask_keeps_positions_and_masks_floor_gamma_n_items():
    items = sessions()
    torch.manual_seed(0)
    view = mask(items, 0.3, MASK_ID)
    assert torch.equal(view != 0, items != 0)  # padding and positions unchanged
    masked = view == MASK_ID
    assert torch.equal(masked.sum(dim=1), (0.3 * (items != 0).sum(dim=1)).floor().long())
    assert torch.equal(view[~masked], items[~masked])
    assert masked.any()


def test_reorder_permutes_only_inside_its_span():
    items = sessions()
    torch.manual_seed(0)
    view = reorder(items, 0.5)
    changed_rows = 0
    for original, shuffled in zip(items, view, strict=True):
        n = len(real(original))
        span = math.floor(0.5 * n)
        assert torch.equal(shuffled[n:], original[n:])
        moved = (shuffled != original).nonzero().squeeze(1).tolist()
        if moved:
            changed_rows += 1
            assert moved[-1] - moved[0] < span  # inside one window of `span` positions
            window = slice(moved[0], moved[-1] + 1)
            assert sorted(shuffled[window].tolist()) == sorted(original[window].tolist())
    assert changed_rows > TRIALS // 3


def test_each_view_draws_one_augmentation_per_session():
    items = sessions(width=8, full=True)
    torch.manual_seed(0)
    options = {"crop_ratio": 0.5, "mask_ratio": 0.25, "reorder_ratio": 0.5, "mask_id": MASK_ID,
               "mask_mode": "cl4srec"}
    view = augment(items, ("crop", "mask", "reorder"), **options)
    is_mask = (view == MASK_ID).any(dim=1)
    is_crop = (view != 0).sum(dim=1) == 4
    is_reorder = ~is_mask & ~is_crop
    assert not (is_mask & is_crop).any()
    for row in is_reorder.nonzero().squeeze(1):
        assert sorted(view[row].tolist()) == sorted(items[row].tolist())
    for kind in (is_mask, is_crop, is_reorder):
        assert 0.2 < kind.float().mean() < 0.47
    other = augment(items, ("crop", "mask", "reorder"), **options)
    assert not torch.equal(view, other)  # the two views draw independently
    only_crop = augment(items, ("crop",), **options)
    assert ((only_crop != 0).sum(dim=1) == 4).all()


def test_contrastive_views_put_the_mask_embedding_at_kept_positions():
    torch.manual_seed(0)
    config = resolve_config(
        {"model": "contrastive", "embedding_size": D, "inner_size": 32,
         "cl_augmentations": "mask", "cl_mask": "cl4srec", "cl_mask_ratio": 0.5}
    )
    model = build_model(config, n_items=40).eval()
    assert model.mask_embedding.shape == (D,)
    items = sessions(rows=8, width=6, n_items=40)
    torch.manual_seed(1)
    a, b = model.views(items)
    torch.manual_seed(1)
    options = {"crop_ratio": 0.6, "mask_ratio": 0.5, "reorder_ratio": 0.2, "mask_id": 40,
               "mask_mode": "cl4srec"}
    va, vb = (augment(items, ("mask",), **options) for _ in range(2))
    assert (va == 40).any() and torch.equal(va != 0, items != 0)
    table = torch.cat([model.item_embedding, model.mask_embedding[None]])
    torch.testing.assert_close(a, model.encode(va, table)[0])
    torch.testing.assert_close(b, model.encode(vb, table)[0])
    # The mask token's vector is what the masked positions contribute, and it is trained.
    model.train()
    model(items, torch.randint(1, 40, (8,))).backward()
    assert model.mask_embedding.grad.abs().sum() > 0


# -- the guide's contrastive setting ---------------------------------------------------------


def last_items(items: torch.Tensor) -> torch.Tensor:
    """Each row's last real item (the one at its last non-padding position, holes or not)."""
    last = ((items != 0) * torch.arange(1, items.shape[1] + 1)).argmax(dim=1)
    return items.gather(1, last[:, None]).squeeze(1)


def test_the_guides_mask_masks_to_padding_with_probability_gamma_and_never_the_last_item():
    items = sessions(rows=2000, width=10, n_items=301)
    torch.manual_seed(0)
    view = mask_to_padding(items, 0.2)
    real = items != 0
    masked = real & (view == 0)
    assert torch.equal(view[~masked], items[~masked])  # the rest untouched, in place
    assert torch.equal(last_items(items), view.gather(1, (real.sum(1) - 1)[:, None]).squeeze(1))
    assert torch.equal(last_items(items), last_items(view))
    maskable = real.sum() - len(items)  # every real item but the rows' last ones
    share = masked.sum().item() / maskable.item()
    assert abs(share - 0.2) < 0.02  # Bernoulli(0.2) per maskable item: sd 0.003 here
    # Short sessions are masked too (a count of floor(0.2 n) would spare every n < 5) ...
    short = (real.sum(1) <= 4) & (real.sum(1) >= 2)
    assert masked[short].any()
    # ... and even at a ratio near 1 the last item stays, so no view is empty.
    nearly_all = mask_to_padding(items, 0.999)
    assert torch.equal(last_items(items), nearly_all.gather(1, (real.sum(1) - 1)[:, None])[:, 0])
    assert ((nearly_all != 0).sum(dim=1) >= 1).all()


def test_contrastive_trial_0_is_the_guides_setting_and_never_masks_the_last_item(monkeypatch):
    params, skipped = published_params(load_space("contrastive.yaml"))
    assert skipped == []
    guide = {"cl_augmentations": "mask", "cl_mask": "guide", "cl_mask_ratio": 0.2,
             "cl_weight": 0.1, "cl_temperature": 0.2, "ema_target": 0.0}
    assert {key: params[key] for key in guide} == guide
    assert "cl_crop_ratio" not in params and "cl_reorder_ratio" not in params
    config = resolve_config({"model": "contrastive", "embedding_size": D, "inner_size": 32,
                             **params})
    model = build_model(config, n_items=201)
    assert model.mask_embedding is None  # masked to padding: no learned token
    views = []

    def recorded(*args, **kwargs):
        views.append(augment(*args, **kwargs))
        return views[-1]

    monkeypatch.setattr(core_module, "augment", recorded)
    items = sessions(rows=500, width=8)
    torch.manual_seed(0)
    model.train()
    model(items, torch.randint(1, 201, (len(items),))).backward()
    assert len(views) == 2
    for view in views:
        assert view.max() < 201  # padding or real ids, never a token past the catalog
        assert torch.equal(last_items(items), last_items(view))
        holes = (items != 0) & (view == 0)
        assert holes.any() and torch.equal(view[~holes], items[~holes])


def test_a_masked_position_is_a_hole_the_encoder_skips():
    torch.manual_seed(0)
    config = resolve_config({"model": "trm", "embedding_size": D, "inner_size": 32})
    model = build_model(config, n_items=40).eval()
    items = torch.tensor([[5, 0, 7, 9, 0, 0], [3, 0, 6, 0, 0, 0]])  # a hole at position 1
    with torch.no_grad():
        h, alpha = model.encode(items)
    assert torch.isfinite(h).all()
    assert (alpha[items == 0] == 0).all() and torch.allclose(alpha.sum(1), torch.ones(2))
    # CORE-ave's session is the mean of the items that remain.
    ave = build_model(resolve_config({"model": "ave", "embedding_size": D}), n_items=40).eval()
    with torch.no_grad():
        expected = F.normalize(ave.item_embedding[[5, 7, 9]].mean(0), dim=-1)
        torch.testing.assert_close(ave.encode(items)[0][0], expected)


# -- NT-Xent --------------------------------------------------------------------------------


def test_nt_xent_uses_both_views_of_the_other_sessions_as_negatives():
    torch.manual_seed(0)
    n, tau = 4, 0.5
    a, b = F.normalize(torch.randn(n, D), dim=-1), F.normalize(torch.randn(n, D), dim=-1)
    z = [*a, *b]
    losses = []
    for i in range(2 * n):
        positive = (i + n) % (2 * n)
        others = [j for j in range(2 * n) if j != i]
        assert len(others) - 1 == 2 * n - 2  # negatives per anchor
        denominator = sum(math.exp(float(z[i] @ z[j]) / tau) for j in others)
        losses.append(-math.log(math.exp(float(z[i] @ z[positive]) / tau) / denominator))
    assert nt_xent(a, b, tau).item() == pytest.approx(sum(losses) / len(losses), rel=1e-5)
    # Other-view-only InfoNCE (N - 1 negatives) is a different number.
    cross = F.cross_entropy(a @ b.t() / tau, torch.arange(n))
    assert abs(nt_xent(a, b, tau).item() - cross.item()) > 1e-3


def test_nt_xent_counts_2n_minus_2_negatives():
    """Orthogonal sessions with identical views: every anchor's positive has logit 1/tau and its
    2N - 2 negatives logit 0, so the loss is log(1 + (2N - 2) exp(-1/tau))."""
    n, tau = 5, 2.0
    views = torch.eye(D)[:n]
    assert nt_xent(views, views, tau).item() == pytest.approx(
        math.log(1 + (2 * n - 2) * math.exp(-1 / tau)), rel=1e-6
    )


# -- relative positions ---------------------------------------------------------------------


def transformer(pos_encoding: str, max_seq_length: int = 12) -> Transformer:
    torch.manual_seed(0)
    module = Transformer(D, 2, 2, 32, 0.0, 0.0, max_seq_length, pos_encoding=pos_encoding)
    for parameter in module.parameters():  # non-trivial values everywhere, bias included
        torch.nn.init.normal_(parameter, std=0.3)
    return module.eval()


def test_relative_bias_depends_only_on_the_clipped_distance():
    bias = RelativePositionBias(n_heads=3, max_distance=4)
    torch.nn.init.normal_(bias.bias.weight)
    table = bias(7)
    assert table.shape == (1, 3, 7, 7)
    for j in range(7):
        for k in range(7):
            distance = min(max(j - k, 0), 4)
            torch.testing.assert_close(table[0, :, j, k], bias.bias.weight[distance])
    assert not torch.equal(table[0, :, 3, 3], table[0, :, 3, 2])  # distances 0 and 1 differ


def dense_reference(module: Transformer, items: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The transformer over [B, L] written densely: positions (absolute embedding or relative
    bias on the logits), causal mask over real keys, post-LN layers (eval mode)."""
    batch, length, _ = x.shape
    positions = torch.arange(length)
    heads = module.layers[0].n_heads
    bias = torch.zeros(heads, length, length)
    if module.pos_encoding == "absolute":
        x = x + module.position.weight[:length]
    if module.pos_encoding == "relative":
        distance = (positions[:, None] - positions[None, :]).clamp(0, module.relative.max_distance)
        bias = module.relative.bias.weight[distance].permute(2, 0, 1)
    visible = torch.ones(length, length, dtype=torch.bool).tril() & (items != 0)[:, None, None]
    tokens = module.norm(x)
    for layer in module.layers:
        q, k, v = layer.qkv(tokens).view(batch, length, 3, heads, -1).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + bias
        scores = scores.masked_fill(~visible, -10_000.0)
        context = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(batch, length, -1)
        tokens = layer.norm1(tokens + layer.proj(context))
        tokens = layer.norm2(tokens + layer.ff_out(F.gelu(layer.ff_in(tokens))))
    return tokens


@pytest.mark.parametrize("pos_encoding", ["absolute", "relative", "none"])
def test_transformer_positions_match_a_dense_reference(pos_encoding):
    module = transformer(pos_encoding)
    items = sessions(rows=9, width=12)
    packed = Packed(items)
    x = torch.randn(len(packed.index), D)
    with torch.no_grad():
        out = packed.unpack(module(packed, x)[-1], 0.0)
        expected = dense_reference(module, items, packed.unpack(x, 0.0))
    torch.testing.assert_close(out[items != 0], expected[items != 0], atol=1e-4, rtol=1e-4)


def test_relative_bias_reaches_the_logits_and_is_shared_by_the_layers():
    relative, none = transformer("relative"), transformer("none")
    assert relative.position is None and none.position is None
    assert [n for n, _ in relative.named_parameters() if "relative" in n] == [
        "relative.bias.weight"  # one table for all layers
    ]
    none.load_state_dict(
        {k: v for k, v in relative.state_dict().items() if not k.startswith("relative")}
    )
    items = sessions(rows=9, width=12)
    packed = Packed(items)
    x = torch.randn(len(packed.index), D)
    with torch.no_grad():
        assert not torch.allclose(relative(packed, x)[-1], none(packed, x)[-1])
        relative.relative.bias.weight.zero_()
        torch.testing.assert_close(relative(packed, x)[-1], none(packed, x)[-1])


# -- weight average -------------------------------------------------------------------------


def test_ema_weights_equal_the_closed_form():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    decay, history = 0.8, []
    ema = WeightEMA(model, decay)
    for _ in range(5):
        optimizer.zero_grad()
        model(torch.randn(4, 3)).pow(2).sum().backward()
        optimizer.step()
        ema.update(model)
        history.append(model.weight.detach().clone())
    t = len(history)
    closed = decay ** (t - 1) * history[0] + sum(
        (1 - decay) * decay ** (t - s) * history[s - 1] for s in range(2, t + 1)
    )
    state = ema.model_state(model)
    torch.testing.assert_close(state["weight"], closed)
    assert not torch.allclose(state["weight"], model.weight)
    assert ema.n_averaged == t


SMALL = {"embedding_size": 16, "inner_size": 32, "batch_size": 64, "eval_batch_size": 64,
         "seed": 7}
CPU = {"device": "cpu", "num_threads": 1}


@pytest.fixture(scope="module")
def dataset():
    return make_dataset("tiny", seed=0)


def test_trainer_validates_selects_and_resumes_with_the_averaged_weights(dataset, tmp_path):
    config = {**SMALL, "model": "trm", "epochs": 2, "ema_decay": 0.9}
    trainer = Trainer(config, dataset, **CPU)
    metrics = trainer.run_epoch()
    averaged = trainer.ema.model_state(trainer.model)
    for key, value in averaged.items():
        torch.testing.assert_close(trainer.best_state[key], value)
    assert not torch.equal(trainer.best_state["item_embedding"], trainer.model.item_embedding)
    with trainer._weights(averaged):
        assert trainer.evaluate("valid", use_best=False)["mrr_20"] == metrics["valid_mrr_20"]
    assert trainer.evaluate("valid", use_best=False)["mrr_20"] != metrics["valid_mrr_20"]

    trainer.save_checkpoint(tmp_path / "ckpt.pt")
    trainer.run_epoch()
    resumed = Trainer(config, dataset, **CPU)
    resumed.load_checkpoint(tmp_path / "ckpt.pt")
    assert resumed.ema.n_averaged == -(-len(dataset.train) // config["batch_size"])  # steps
    resumed.run_epoch()
    times = ("epoch_time", "train_time")
    strip = [{k: v for k, v in m.items() if k not in times} for m in trainer.history]
    assert [{k: v for k, v in m.items() if k not in times} for m in resumed.history] == strip
    for name, value in trainer.ema.state_dict()["averages"].items():
        assert torch.equal(resumed.ema.state_dict()["averages"][name], value), name


def test_default_trainer_has_no_average_and_selects_the_raw_weights(dataset):
    trainer = Trainer({**SMALL, "model": "trm", "epochs": 1}, dataset, **CPU)
    assert trainer.ema is None
    trainer.run_epoch()
    assert torch.equal(trainer.best_state["item_embedding"], trainer.model.item_embedding)


# -- the guide's EMA target embeddings and auxiliary tasks -----------------------------------


def deterministic(variant: str = "enhanced", **extra):
    """A small model with every dropout off (train mode is then deterministic) and, for
    enhanced, no in-batch term: its loss is the full-catalog cross-entropy plus ``extra``'s."""
    options = {"enh_inbatch": False} if variant == "enhanced" else {}
    config = resolve_config({
        "model": variant, "embedding_size": D, "inner_size": 32, "sess_dropout": 0.0,
        "item_dropout": 0.0, "hidden_dropout": 0.0, "attn_dropout": 0.0, **options, **extra,
    })
    torch.manual_seed(0)
    return build_model(config, n_items=40).train()


def cross_entropy(model, h: torch.Tensor, table: torch.Tensor, targets: torch.Tensor):
    """CORE's training loss written out: softmax over the whole catalog of cos / tau."""
    return F.cross_entropy(h @ F.normalize(table, dim=-1).t() / model.temperature, targets)


def test_with_ema_target_the_loss_scores_against_the_momentum_copy_without_gradient():
    model = deterministic(ema_target=0.9)
    assert torch.equal(model.target_embedding, model.item_embedding)  # the copy starts as E
    assert deterministic().target_embedding is None  # off by default: no copy at all
    with torch.no_grad():
        model.target_embedding.copy_(torch.randn(40, D))
    items = sessions(rows=16, width=6, n_items=30)  # sessions use items 1..29 only
    targets = torch.arange(30, 46) % 10 + 30  # items 30..39: targets, never in a session
    loss = model(items, targets)
    h = model.encode(items)[0]
    torch.testing.assert_close(loss, cross_entropy(model, h, model.target_embedding, targets))
    assert not torch.allclose(loss, cross_entropy(model, h, model.item_embedding, targets))
    loss.backward()
    assert not model.target_embedding.requires_grad
    assert (model.item_embedding.grad[30:] == 0).all()  # no gradient reaches E through the copy
    assert model.item_embedding.grad[1:30].abs().sum() > 0  # the sessions still train E
    # Inference scores against the online table.
    model.eval()
    with torch.no_grad():
        expected = model.encode(items)[0] @ F.normalize(model.item_embedding, dim=-1).t()
        torch.testing.assert_close(model.predict(items)[:, 1:], expected[:, 1:] / model.temperature)


def test_the_target_table_moves_by_the_momentum_rule_after_every_step(dataset, tmp_path):
    config = {**SMALL, "model": "contrastive", "epochs": 2, "ema_target": 0.9}
    trainer = Trainer(config, dataset, **CPU)
    model = trainer.model
    rows = trainer._split_rows("train")
    for step in range(3):
        before = model.target_embedding.clone()
        trainer._train_step(rows, torch.arange(64) + 64 * step, step, 3)
        expected = 0.9 * before + 0.1 * model.item_embedding.detach()
        torch.testing.assert_close(model.target_embedding, expected)
        assert not torch.allclose(model.target_embedding, model.item_embedding)
    # The copy is part of the checkpoint: a resumed run continues it exactly.
    straight, resumed = straight_and_resumed(config, dataset, tmp_path, **CPU)
    assert torch.equal(resumed.model.target_embedding, straight.model.target_embedding)
    assert resumed.history[-1]["valid_mrr_20"] == straight.history[-1]["valid_mrr_20"]


def test_the_auxiliary_tasks_add_their_weighted_losses():
    plain = deterministic()
    assert plain.length_head is None and plain.order_head is None  # off by default
    model = deterministic(aux_length_weight=0.5, aux_order_weight=0.3)
    items = sessions(rows=64, width=6, n_items=40)
    targets = torch.randint(1, 40, (64,), generator=torch.Generator().manual_seed(1))
    torch.manual_seed(5)
    loss = model(items, targets)  # every dropout is off: the shuffle is the first draw
    h = model.encode(items)[0]
    n = (items != 0).sum(dim=1).float()
    length = ((model.length_head(h).squeeze(1) - n.log()) ** 2).mean()
    torch.manual_seed(5)
    shuffled = reorder(items, 1.0)
    changed = (shuffled != items).any(dim=1).float()
    assert (changed[n == 1] == 0).all() and changed.sum() > len(items) / 2
    for row in range(len(items)):  # a permutation of the session's own items
        assert sorted(real(shuffled[row])) == sorted(real(items[row]))
    logits = model.order_head(torch.cat([h, model.encode(shuffled)[0]])).squeeze(1)
    order = F.binary_cross_entropy_with_logits(
        logits, torch.cat([torch.zeros_like(changed), changed]))
    ce = cross_entropy(model, h, model.item_embedding, targets)
    torch.testing.assert_close(loss, ce + 0.5 * length + 0.3 * order)
    loss.backward()
    assert model.length_head.weight.grad.abs().sum() > 0
    assert model.order_head.weight.grad.abs().sum() > 0


# -- layer aggregation ----------------------------------------------------------------------


def enhanced(aggregation: str) -> EnhancedEncoder:
    torch.manual_seed(0)
    return EnhancedEncoder(transformer("absolute"), aggregation=aggregation, gate=False).eval()


def test_uniform_aggregation_is_the_mean_of_the_layer_outputs():
    uniform, last = enhanced("uniform"), enhanced("last")
    assert uniform.layer_logits is None
    last.load_state_dict(uniform.state_dict())
    items = sessions(rows=9, width=12)
    packed = Packed(items)
    x = torch.randn(len(packed.index), D)
    with torch.no_grad():
        h, _ = uniform(packed, x)
        outputs = uniform.transformer(packed, x)
        f = (outputs[0] + outputs[1]) / 2
        alpha = 0.5 * packed.softmax(uniform.scorer(f)) + 0.5 * packed.mean_weights()
        torch.testing.assert_close(h, packed.weighted_sum(alpha, x))
        assert not torch.allclose(h, last(packed, x)[0])
        # The learned weights start where the ablation stays (softmax of equal logits).
        weighted = enhanced("weighted")
        weighted.load_state_dict({**uniform.state_dict(), "layer_logits": torch.ones(2)})
        torch.testing.assert_close(weighted(packed, x)[0], h)
        weighted.layer_logits.copy_(torch.tensor([3.0, -3.0]))
        assert not torch.allclose(weighted(packed, x)[0], h)


# -- configuration --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "key", "value"),
    [
        ("contrastive", "cl_augmentations", "shuffle"),
        ("contrastive", "cl_augmentations", ["crop", "shuffle"]),
        ("contrastive", "cl_augmentations", ""),
        ("contrastive", "cl_crop_ratio", 0.0),
        ("contrastive", "cl_mask_ratio", 1.0),
        ("contrastive", "cl_reorder_ratio", 1.5),
        ("trm", "pos_encoding", "foo"),
        ("semsr_f", "pos_encoding", "rotary"),
        ("enhanced", "layer_aggregation", "max"),
        ("trm", "ema_decay", 1.0),
        ("ave", "ema_decay", -0.1),
        ("enhanced", "enh_multilayer", True),  # replaced by layer_aggregation
        ("contrastive", "cl_dropout", 0.2),  # replaced by cl_mask_ratio
        ("contrastive", "cl_mask", "bert"),
        ("enhanced", "ema_target", 1.0),
        ("contrastive", "ema_target", -0.5),
        ("trm", "ema_target", 0.9),  # the guide's variants only
        ("enhanced", "aux_length_weight", -0.1),
        ("enhanced", "aux_order_weight", -1.0),
        ("trm", "aux_order_weight", 0.1),
        ("trm", "grad_clip", -1.0),
        ("ave", "grad_accum", 0),
    ],
)
def test_invalid_values_are_errors_naming_the_key(model, key, value):
    with pytest.raises(ValueError, match=key):
        resolve_config({"model": model, key: value})


def test_augmentation_sets_from_the_command_line_or_a_list_are_canonical():
    key, value = _assignment("cl_augmentations=crop,mask,reorder")
    assert resolve_config({"model": "contrastive", key: value})[key] == "crop,mask,reorder"
    assert resolve_config({"model": "contrastive", key: ["reorder", "crop"]})[key] == "crop,reorder"
    assert parse_augmentations("mask, crop,mask") == ("crop", "mask")
    assert default_config("contrastive")[key] == "mask"  # the guide's setting
    with pytest.raises(TypeError, match=key):
        resolve_config({"model": "contrastive", key: 3})


@pytest.mark.parametrize("variant", ["trm", "da", "enhanced", "hn", "contrastive"])
def test_explicit_defaults_build_the_same_model_as_no_keys(variant):
    explicit = {"pos_encoding": "absolute", "ema_decay": 0.0}
    if variant == "enhanced":
        explicit["layer_aggregation"] = "weighted"
    models = []
    for extra in ({}, explicit):
        torch.manual_seed(0)
        config = resolve_config({"model": variant, "embedding_size": D, "inner_size": 32, **extra})
        models.append(build_model(config, n_items=40).eval())
    plain, defaults = models
    state = plain.state_dict()
    assert "encoder.transformer.position.weight" in state
    assert not any("relative" in key for key in state)
    for key, value in defaults.state_dict().items():
        assert torch.equal(state[key], value), key
    items = sessions(rows=9, width=12, n_items=40)
    assert torch.equal(plain.predict(items), defaults.predict(items))
