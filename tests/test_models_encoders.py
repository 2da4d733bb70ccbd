"""Encoders keep CORE's consistency principle, ignore padding, and DA reduces to CORE-trm."""

import pytest
import torch

import models.encoders as encoders_module
from models.encoders import (
    AveEncoder,
    DualAttentionEncoder,
    EnhancedEncoder,
    Packed,
    Transformer,
    TrmEncoder,
    dropout,
    keep_mask,
    take_rows,
)
from models.registry import build_model, resolve_config

D = 16


def transformer(pos_encoding: str = "absolute") -> Transformer:
    return Transformer(
        D,
        n_layers=2,
        n_heads=2,
        inner_size=32,
        hidden_dropout=0.3,
        attn_dropout=0.3,
        max_seq_length=12,
        pos_encoding=pos_encoding,
    )


ENCODERS = {
    "ave": AveEncoder,
    "trm": lambda: TrmEncoder(transformer()),
    "da": lambda: DualAttentionEncoder(transformer()),
    "da-no-gate": lambda: DualAttentionEncoder(transformer(), gating=False),
    "da-no-recent": lambda: DualAttentionEncoder(transformer(), recent=False),
    "da-no-residual": lambda: DualAttentionEncoder(transformer(), residual=False),
    "enhanced": lambda: EnhancedEncoder(transformer()),
    "enhanced-ablated": lambda: EnhancedEncoder(transformer(), aggregation="last", gate=False),
    "enhanced-uniform": lambda: EnhancedEncoder(transformer(), aggregation="uniform"),
    "trm-relative": lambda: TrmEncoder(transformer(pos_encoding="relative")),
    "trm-no-positions": lambda: TrmEncoder(transformer(pos_encoding="none")),
}


def batch(seed: int = 0, rows: int = 9, width: int = 12) -> torch.Tensor:
    """Right-padded random sessions of lengths 1..width (one of each extreme included)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, width + 1, (rows,), generator=g)
    lengths[0], lengths[1] = 1, width
    items = torch.randint(1, 50, (rows, width), generator=g)
    return items.masked_fill(torch.arange(width) >= lengths[:, None], 0)


@pytest.mark.parametrize("name", ENCODERS)
@pytest.mark.parametrize("training", [True, False])
def test_session_vector_is_a_linear_combination_of_its_items(name, training):
    torch.manual_seed(0)
    encoder = ENCODERS[name]().train(training)
    items = batch()
    packed = Packed(items)
    x = torch.randn(len(packed.index), D)
    h, alpha = encoder(packed, x)
    x_padded = packed.unpack(x, 0.0)
    assert alpha.shape == items.shape
    assert torch.all(alpha[items == 0] == 0)
    assert torch.all(alpha >= 0)
    torch.testing.assert_close(h, torch.einsum("bl,bld->bd", alpha, x_padded))
    # h lies in the span of the session's own item embeddings (fewer items than dimensions).
    for b in range(len(items)):
        own = x_padded[b, items[b] != 0]
        coefficients = torch.linalg.lstsq(own.T.double(), h[b].double()).solution
        torch.testing.assert_close(
            (own.T.double() @ coefficients).float(), h[b], atol=1e-5, rtol=1e-5
        )


@pytest.mark.parametrize("variant", ["ave", "trm", "da", "enhanced", "contrastive"])
def test_padding_never_changes_the_session_vector(variant):
    torch.manual_seed(0)
    model = build_model(
        resolve_config(
            {"model": variant, "embedding_size": D}
            | ({} if variant == "ave" else {"inner_size": 32})
        ),
        n_items=50,
    ).eval()
    items = batch(width=10)
    wider = torch.cat([items, torch.zeros(len(items), 15, dtype=items.dtype)], dim=1)
    trimmed = items[:, : int((items != 0).sum(1).max())]
    with torch.no_grad():
        h, alpha = model.encode(items)
        for other in (wider, trimmed):
            h_other, alpha_other = model.encode(other)
            torch.testing.assert_close(h_other, h, atol=1e-6, rtol=1e-5)
            torch.testing.assert_close(alpha_other[:, :10], alpha[:, : other.shape[1]][:, :10])
        # A single session scored alone equals its row in the batch.
        torch.testing.assert_close(model.encode(items[2:3])[0], h[2:3], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("training", [True, False])
def test_dual_attention_with_switches_off_and_linear_scorer_is_trm(training):
    torch.manual_seed(0)
    trm = TrmEncoder(transformer())
    da = DualAttentionEncoder(
        transformer(), gating=False, recent=False, residual=False, scorer="linear"
    )
    state = {k.replace("scorer.", "global_scorer."): v for k, v in trm.state_dict().items()}
    da.load_state_dict(state)
    trm.train(training)
    da.train(training)
    items = batch(seed=3)
    packed = Packed(items)
    x = torch.randn(len(packed.index), D)
    torch.manual_seed(1)
    h_trm, alpha_trm = trm(packed, x)
    torch.manual_seed(1)
    h_da, alpha_da = da(packed, x)
    assert torch.equal(h_da, h_trm)
    assert torch.equal(alpha_da, alpha_trm)


def test_dual_attention_default_differs_from_trm_and_weights_sum_to_two():
    """Sanity of the full DA: residual mean adds 1 to the sum of the weights."""
    torch.manual_seed(0)
    encoder = DualAttentionEncoder(transformer()).eval()
    items = batch(seed=4)
    packed = Packed(items)
    _, alpha = encoder(packed, torch.randn(len(packed.index), D))
    torch.testing.assert_close(alpha.sum(1), torch.full((len(items),), 2.0))


def test_enhanced_layer_weights_start_at_ones_and_initialisation_follows_spec():
    torch.manual_seed(0)
    encoder = EnhancedEncoder(transformer())
    assert torch.equal(encoder.layer_logits.detach(), torch.ones(2))
    layer = encoder.transformer.layers[0]
    assert torch.all(layer.qkv.bias == 0) and torch.all(layer.norm1.weight == 1)
    assert layer.norm1.eps == 1e-12
    assert abs(layer.ff_in.weight.std().item() - 0.02) < 0.004


def test_bf16_shape_buckets_add_rows_that_change_no_real_token(monkeypatch):
    # Under bf16 on CPU the tokens and each attention block's rows are padded to fixed
    # multiples (so products keep their shapes from batch to batch): the added rows must see
    # nothing and be seen by nothing, the outputs keep only the real tokens.
    torch.manual_seed(0)
    model = transformer().eval()
    items = batch(seed=4, rows=9, width=12)
    packed = Packed(items)
    layout = packed.attention_layout(8)
    assert all(block.rows % 8 == 0 for block in layout.blocks)
    assert layout.cells > packed.attention.cells
    assert len(layout.cell.unique()) == len(packed.index)  # one cell per real token
    x = torch.randn(len(packed.index), D)
    outputs = {}
    for buckets in ((1, 1), (64, 8)):
        monkeypatch.setattr(encoders_module, "SHAPE_BUCKETS", buckets)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outputs[buckets] = model(packed, x)
    for plain, padded in zip(outputs[(1, 1)], outputs[(64, 8)], strict=True):
        assert padded.shape == plain.shape == (len(packed.index), D)
        assert padded.dtype == torch.bfloat16
        torch.testing.assert_close(padded.float(), plain.float(), atol=0.05, rtol=0.02)


@pytest.mark.parametrize("p", [0.0179, 0.2, 0.335, 0.557])
def test_bf16_dropout_draws_the_fp32_mask_and_rounds_its_scale_once(p):
    # the mask is made in x's dtype; a bf16 run must drop what an fp32 mask converted to bf16
    # drops, with the same rounded 1 / (1 - p)
    x = torch.randn(300, 70).to(torch.bfloat16)
    torch.manual_seed(5)
    got = dropout(x, p, training=True)
    torch.manual_seed(5)
    mask = keep_mask(x.shape, p, torch.device("cpu"))
    assert torch.equal(got, x * mask.mul_(1.0 / (1.0 - p)).to(torch.bfloat16))
    torch.manual_seed(5)
    bf16_mask = keep_mask(x.shape, p, torch.device("cpu"), torch.bfloat16)
    assert torch.equal(bf16_mask, mask.ne(0).to(torch.bfloat16))


def test_dropout_keeps_1_minus_p_scaled_and_is_identity_in_eval():
    torch.manual_seed(0)
    x = torch.ones(200, 500)
    dropped = dropout(x, 0.2, training=True)
    kept = dropped != 0
    assert abs(kept.float().mean().item() - 0.8) < 0.005
    assert torch.allclose(dropped[kept], torch.tensor(1.25))
    assert dropout(x, 0.2, training=False) is x


@pytest.mark.parametrize("p", [0.05, 0.2, 0.5, 0.9])
def test_keep_mask_keeps_each_entry_with_1_minus_p_independently_and_follows_the_seed(p):
    # 4 entries share one 64-bit draw: every lane (entry index mod 4) must keep 1 - p, the
    # lanes must not move together, and an odd size must not fall off the last word.
    shape = torch.Size([1001, 403])
    torch.manual_seed(3)
    mask = keep_mask(shape, p, torch.device("cpu"))
    assert mask.shape == shape and mask.dtype == torch.float32
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    lanes = mask.flatten()[: 4 * (shape.numel() // 4)].view(-1, 4)
    spread = 4 * (p * (1 - p) / len(lanes)) ** 0.5  # four standard errors
    assert torch.allclose(lanes.mean(dim=0), torch.full((4,), 1 - p), atol=spread)
    centred = lanes - lanes.mean(dim=0)
    correlation = (centred[:, :-1] * centred[:, 1:]).mean(dim=0) / (p * (1 - p))
    assert correlation.abs().max() < 0.02
    torch.manual_seed(3)
    assert torch.equal(keep_mask(shape, p, torch.device("cpu")), mask)


@pytest.mark.parametrize("name", ["trm", "da", "enhanced"])
def test_gradients_through_packing_match_finite_differences(name):
    torch.manual_seed(0)
    encoder = ENCODERS[name]().eval()
    items = batch(seed=5, rows=5, width=9)
    packed = Packed(items)
    x = torch.randn(len(packed.index), D, dtype=torch.float32, requires_grad=True)
    weights = torch.randn(len(items), D)
    (grad,) = torch.autograd.grad((encoder(packed, x)[0] * weights).sum(), x)
    for token, dim in [(0, 0), (3, 5), (len(packed.index) - 1, D - 1), (7, 2)]:
        step = torch.zeros_like(x)
        step[token, dim] = 1e-2
        with torch.no_grad():
            up = (encoder(packed, x + step)[0] * weights).sum()
            down = (encoder(packed, x - step)[0] * weights).sum()
        assert (up - down).item() / 2e-2 == pytest.approx(grad[token, dim].item(), abs=2e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("threads", [1, 2])
def test_take_rows_equals_index_select_forward_and_backward(dtype, threads):
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        generator = torch.Generator().manual_seed(0)
        source = torch.randn(300, 5, 3, generator=generator).to(dtype)
        index = torch.randperm(300, generator=generator)[:170]  # distinct; 130 rows never taken
        grad = torch.randn(170, 5, 3, generator=generator).to(dtype)
        results = []
        for take in (take_rows, lambda x, i: x.index_select(0, i)):
            leaf = source.clone().requires_grad_()
            out = take(leaf, index)
            out.backward(grad)
            results.append((out, leaf.grad))
        (out, got), (want_out, want) = results
        assert torch.equal(out, want_out) and torch.equal(got, want)
        untouched = torch.ones(300, dtype=torch.bool)
        untouched[index] = False
        assert not got[untouched].any() and got[index].ne(0).any()
    finally:
        torch.set_num_threads(previous)
