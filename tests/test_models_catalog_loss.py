"""The full-catalog loss: the chunked implementation equals the dense reference (loss and
gradients, fp32) on odd shapes, never holds a [batch x catalog] tensor, and label smoothing
matches torch's with the padding column excluded; block-wise evaluation ranks as a dense one."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import models.catalog_loss as catalog_module
import models.trainer as trainer_module
from data.synthetic import make_dataset
from models.catalog_loss import _column_top, block_rows, catalog_loss, hard_negatives
from models.encoders import dropout
from models.registry import build_model, resolve_config
from models.trainer import Trainer


def inputs(n_rows, n_items, d, seed=0, scale=1 / 0.07):
    g = torch.Generator().manual_seed(seed)
    query = F.normalize(torch.randn(n_rows, d, generator=g), dim=-1) * scale
    table = F.normalize(torch.randn(n_items, d, generator=g), dim=-1)
    targets = torch.randint(1, n_items, (n_rows,), generator=g)
    return query, table, targets


def loss_and_grads(impl, query, table, targets, **options):
    query = query.clone().requires_grad_()
    table = table.clone().requires_grad_()
    loss = catalog_loss(query, table, targets, impl=impl, **options)
    return (loss, *torch.autograd.grad(loss, (query, table)))


def assert_same(got, want):
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)
    for a, b in zip(got[1:], want[1:], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


# (batch, catalog, d, hn_k, hn_lambda, label_smoothing, rows per block)
CASES = {
    "ce, rows divide the batch": (12, 40, 8, 0, 0.0, 0.0, 4),
    "ce, last block shorter": (13, 41, 8, 0, 0.0, 0.0, 5),
    "batch of one": (1, 7, 3, 2, 0.5, 0.1, None),
    "one block for the whole batch": (9, 33, 5, 3, 0.2, 0.0, 64),
    "hybrid, odd catalog": (13, 101, 8, 10, 0.3, 0.0, 4),
    "hybrid with smoothing": (9, 300, 16, 3, 0.2, 0.1, 2),
    "bpr only, k close to the catalog": (5, 50, 4, 48, 1.0, 0.0, 3),
    "smoothing only": (7, 64, 6, 0, 0.0, 0.3, 3),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_chunked_loss_and_gradients_equal_the_dense_reference(case):
    n_rows, n_items, d, k, lam, eps, rows = case
    query, table, targets = inputs(n_rows, n_items, d)
    options = {"hn_k": k, "hn_lambda": lam, "label_smoothing": eps}
    dense = loss_and_grads("dense", query, table, targets, **options)
    chunked = loss_and_grads("chunked", query, table, targets, rows=rows, **options)
    assert_same(chunked, dense)


@pytest.mark.parametrize("group", [2, 3, 7])
def test_grouped_negative_mining_equals_dense_when_k_spans_many_groups(monkeypatch, group):
    """Small groups put the grouped top-k path to work with K larger than a group, a catalog that
    is not a multiple of the group, and the target or padding among the best logits."""
    monkeypatch.setattr(catalog_module, "NEGATIVE_GROUP", group)
    query, table, targets = inputs(11, 203, 8, seed=group)
    table[0] = F.normalize(query[0], dim=0)  # padding would be row 0's best item
    table[targets[1]] = F.normalize(query[1], dim=0)  # the target row 1's
    options = {"hn_k": 6, "hn_lambda": 0.4}
    dense = loss_and_grads("dense", query, table, targets, **options)
    chunked = loss_and_grads("chunked", query, table, targets, rows=3, **options)
    assert_same(chunked, dense)


def test_column_top_equals_topk_on_both_paths(monkeypatch):
    g = torch.Generator().manual_seed(0)
    block = torch.randn(1003, 6, generator=g)
    for group in (2, 5, 1000):  # grouped (with a tail), grouped, plain top-k
        monkeypatch.setattr(catalog_module, "NEGATIVE_GROUP", group)
        values, ids = _column_top(block, 9)
        expected = block.t().topk(9, dim=1)
        torch.testing.assert_close(values, expected.values)
        assert torch.equal(ids, expected.indices)


def test_large_logits_take_the_shifted_path_and_still_match():
    """Past SAFE_LOGIT the exp would overflow without the per-row max shift."""
    query, table, targets = inputs(6, 50, 4, scale=200.0)
    assert 200.0 > catalog_module.SAFE_LOGIT
    for options in ({}, {"hn_k": 4, "hn_lambda": 0.3, "label_smoothing": 0.2}):
        dense = loss_and_grads("dense", query, table, targets, **options)
        chunked = loss_and_grads("chunked", query, table, targets, rows=4, **options)
        assert torch.isfinite(chunked[0])
        assert_same(chunked, dense)


def smoothed_reference(query, table, targets, eps):
    """torch's label-smoothed cross-entropy over the real items (padding column excluded)."""
    query, table = query.clone().requires_grad_(), table.clone().requires_grad_()
    loss = F.cross_entropy((query @ table.t())[:, 1:], targets - 1, label_smoothing=eps)
    return (loss, *torch.autograd.grad(loss, (query, table)))


@pytest.mark.parametrize("impl", ["dense", "chunked"])
@pytest.mark.parametrize("eps", [0.1, 0.5])
def test_label_smoothing_matches_torch_with_the_padding_column_excluded(impl, eps):
    """With the padding item out of the softmax (its logit -inf: here a table row pointing away
    from every query, through an extra dimension), the loss and gradients equal
    ``F.cross_entropy(logits[:, 1:], targets - 1, label_smoothing=eps)``."""
    query, table, targets = inputs(10, 30, 6)
    query = torch.cat([query, torch.ones(10, 1)], dim=1)
    table = torch.cat([table, torch.zeros(30, 1)], dim=1)
    table[0, -1] = -1e4  # z_0 = -1e4 + O(15): exp underflows to exactly 0
    got = loss_and_grads(impl, query, table, targets, label_smoothing=eps, rows=3)
    assert_same(got, smoothed_reference(query, table, targets, eps))
    assert torch.all(got[2][0] == 0)  # padding row: no mass, no gradient


@pytest.mark.parametrize("impl", ["dense", "chunked"])
def test_label_smoothing_puts_no_mass_on_padding_with_padding_in_the_softmax(impl):
    """The general case: soft targets (1 - eps) one-hot + eps / (N - 1) on every real item, zero
    on padding, against the full softmax (padding included, as in CORE's training)."""
    query, table, targets = inputs(8, 25, 5, seed=3)
    eps = 0.2
    soft = torch.full((8, 25), eps / 24)
    soft[:, 0] = 0.0
    soft[torch.arange(8), targets] += 1 - eps
    q, t = query.clone().requires_grad_(), table.clone().requires_grad_()
    want_loss = F.cross_entropy(q @ t.t(), soft)
    want = (want_loss, *torch.autograd.grad(want_loss, (q, t)))
    got = loss_and_grads(impl, query, table, targets, label_smoothing=eps, rows=3)
    assert_same(got, want)
    plain = loss_and_grads(impl, query, table, targets, rows=3)
    assert not torch.allclose(got[0], plain[0])


@pytest.mark.parametrize("scale", [1 / 0.07, 70.0])  # 70: logits past SAFE_LOGIT, max shift
def test_chunked_bf16_stays_close_to_fp32_and_returns_fp32_gradients(scale):
    query, table, targets = inputs(64, 500, 16, seed=1, scale=scale)
    options = {"hn_k": 8, "hn_lambda": 0.2, "label_smoothing": 0.1}
    reference = loss_and_grads("dense", query, table, targets, **options)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = loss_and_grads("chunked", query, table, targets, rows=24, **options)
    assert got[0].dtype == got[1].dtype == got[2].dtype == torch.float32
    torch.testing.assert_close(got[0], reference[0], rtol=1e-2, atol=2e-2)
    for a, b in zip(got[1:], reference[1:], strict=True):
        assert (a - b).norm() < 0.05 * b.norm()


class _LargestOutput(TorchDispatchMode):
    """Records the largest number of elements of any tensor an op returns."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for value in out if isinstance(out, tuple | list) else (out,):
            if isinstance(value, torch.Tensor):
                self.largest = max(self.largest, value.numel())
        return out


@pytest.mark.parametrize("impl", ["dense", "chunked"])
def test_only_the_dense_path_materialises_batch_times_catalog(impl):
    n_rows, n_items, rows = 64, 2000, 8
    query, table, targets = inputs(n_rows, n_items, 8)
    query.requires_grad_()
    table.requires_grad_()
    with _LargestOutput() as probe:
        loss = catalog_loss(query, table, targets, hn_k=4, hn_lambda=0.2, label_smoothing=0.1,
                            impl=impl, rows=rows)
        loss.backward()
    if impl == "dense":
        assert probe.largest >= n_rows * n_items
    else:
        assert probe.largest <= rows * n_items


def test_chunked_without_gradients_gives_the_same_loss():
    query, table, targets = inputs(10, 40, 4)
    hybrid = {"hn_k": 3, "hn_lambda": 0.3, "label_smoothing": 0.1}
    with torch.no_grad():
        value = catalog_loss(query, table, targets, rows=3, **hybrid)
    torch.testing.assert_close(value, catalog_loss(query, table, targets, impl="dense", **hybrid))


def test_block_rows_fit_the_budget():
    cpu = torch.device("cpu")
    rows = block_rows(37_367, torch.bfloat16, cpu)
    assert rows * 37_367 * 2 <= catalog_module.BLOCK_BYTES["cpu"] < (rows + 1) * 37_367 * 2
    assert block_rows(37_367, torch.float32, cpu) == pytest.approx(rows / 2, abs=1)
    assert block_rows(10**9, torch.float32, cpu) == catalog_module.MIN_BLOCK_ROWS


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"impl": "sparse"}, "impl"),
        ({"label_smoothing": 1.0}, "label_smoothing"),
        ({"hn_lambda": 1.5}, "hn_lambda"),
    ],
)
def test_invalid_options_are_rejected(options, message):
    query, table, targets = inputs(2, 5, 3)
    with pytest.raises(ValueError, match=message):
        catalog_loss(query, table, targets, **options)


def test_hard_negatives_skip_target_and_padding():
    scores = torch.tensor([[9.0, 8.0, 7.0, 6.0, 5.0], [1.0, 2.0, 3.0, 4.0, 5.0]])
    assert hard_negatives(scores, torch.tensor([1, 4]), 2).tolist() == [[2, 3], [3, 2]]


@pytest.mark.parametrize("variant", ["ave", "hn"])
def test_model_config_selects_the_implementation_and_smoothing(variant):
    items = torch.tensor([[3, 4, 5], [6, 0, 0], [7, 8, 0]])
    targets = torch.tensor([9, 10, 11])
    results = {}
    for impl in ("dense", "chunked"):
        for eps in (0.0, 0.2):
            config = {"model": variant, "embedding_size": 8, "inner_size": 16, "hn_k": 3}
            config.update({"loss_impl": impl, "label_smoothing": eps, "item_dropout": 0.0})
            if variant == "ave":
                config.pop("inner_size"), config.pop("hn_k")
            torch.manual_seed(0)
            model = build_model(resolve_config(config), n_items=20).eval()
            loss = model(items, targets)
            loss.backward()
            results[impl, eps] = (loss, model.item_embedding.grad)
    for eps in (0.0, 0.2):
        assert_same(results["chunked", eps], results["dense", eps])
    assert not torch.allclose(results["chunked", 0.0][0], results["chunked", 0.2][0])


@pytest.mark.parametrize(
    ("key", "value"), [("loss_impl", "sparse"), ("label_smoothing", 1.0), ("label_smoothing", -0.1)]
)
def test_registry_validates_the_loss_keys(key, value):
    assert resolve_config({"model": "ave"})["loss_impl"] == "auto"  # the faster one here
    assert resolve_config({"model": "trm"})["label_smoothing"] == 0.0
    with pytest.raises(ValueError, match=key):
        resolve_config({"model": "ave", key: value})


def dense_ranks(scores, targets):
    """The number of items scoring at least as high as the target (ties count against it)."""
    target_scores = scores.gather(1, targets[:, None])
    return (scores >= target_scores).sum(dim=1)


def test_block_wise_evaluation_ranks_equal_a_dense_ranking_with_ties(monkeypatch):
    dataset = make_dataset("tiny", seed=0)
    config = {"model": "ave", "embedding_size": 8, "epochs": 1, "eval_batch_size": 37}
    trainer = Trainer(config, dataset, device="cpu", num_threads=1)
    with torch.no_grad():  # duplicate rows tie many items, some with the targets
        table = trainer.model.item_embedding
        half = (len(table) - 1) // 2
        table[1 : 1 + half] = table[1 + half : 1 + 2 * half]
    monkeypatch.setattr(trainer_module, "SCORE_BLOCK_FLOATS", 5 * dataset.n_items)
    metrics, ranks, top = trainer.evaluate_detailed("valid", use_best=False)
    trainer.model.eval()
    rows = trainer._split_rows("valid")
    items, targets = rows.batch(slice(0, len(rows)))
    with torch.no_grad():
        scores = trainer.model.predict(items)
    expected = dense_ranks(scores, targets).numpy()
    ties = (scores == scores.gather(1, targets[:, None])).sum(dim=1) > 1
    assert ties.sum() > 5  # targets tied with other items
    np.testing.assert_array_equal(ranks, expected)
    # Top-20 lists hold the 20 best scores (which of several tied items is listed may differ).
    torch.testing.assert_close(
        scores.gather(1, torch.from_numpy(top).long()), scores.topk(20, dim=1).values
    )
    in_top = (top == targets.numpy()[:, None]).any(axis=1)
    np.testing.assert_array_equal(in_top[~ties.numpy()], (ranks <= 20)[~ties.numpy()])


def test_normalized_dropout_equals_dropout_then_normalize_with_the_same_draws():
    """Same seed, same mask as the two autograd ops (models.encoders.dropout then F.normalize),
    the same values and gradients."""
    g = torch.Generator().manual_seed(0)
    table = torch.randn(300, 12, generator=g)
    upstream = torch.randn(300, 12, generator=g)
    x, y = table.clone().requires_grad_(), table.clone().requires_grad_()
    torch.manual_seed(1)
    got = catalog_module.normalized_dropout(x, 0.3, training=True)
    (grad,) = torch.autograd.grad(got, x, upstream)
    torch.manual_seed(1)
    want = F.normalize(dropout(y, 0.3, training=True), dim=-1)
    (want_grad,) = torch.autograd.grad(want, y, upstream)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(grad, want_grad)
    dropped = got == 0
    assert 0.25 < dropped.float().mean() < 0.35
    assert torch.all(grad[dropped] == 0)
    evaluated = catalog_module.normalized_dropout(table, 0.3, training=False)
    torch.testing.assert_close(evaluated, F.normalize(table, dim=-1))


# ------------------------------------------------------------------ per-row weights (issue 18)


@pytest.mark.parametrize("impl", ["dense", "chunked"])
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_all_ones_weights_equal_the_unweighted_loss(impl, case):
    n_rows, n_items, d, k, lam, eps, rows = case
    query, table, targets = inputs(n_rows, n_items, d, seed=4)
    options = {"hn_k": k, "hn_lambda": lam, "label_smoothing": eps}
    if impl == "chunked":
        options["rows"] = rows
    plain = loss_and_grads(impl, query, table, targets, **options)
    ones = loss_and_grads(impl, query, table, targets, weights=torch.ones(n_rows), **options)
    assert_same(ones, plain)


@pytest.mark.parametrize("impl", ["dense", "chunked"])
@pytest.mark.parametrize("case", [CASES["hybrid with smoothing"], CASES["ce, last block shorter"],
                                  CASES["smoothing only"]])
def test_weights_scale_each_rows_contribution(impl, case):
    """Weighted loss and gradients = (1 / B) sum_i w_i (row i's own loss and gradients), the
    rows' terms computed one row at a time (normalised by the row count, not by sum(w))."""
    n_rows, n_items, d, k, lam, eps, rows = case
    query, table, targets = inputs(n_rows, n_items, d, seed=5)
    options = {"hn_k": k, "hn_lambda": lam, "label_smoothing": eps}
    weights = torch.linspace(0.0, 3.0, n_rows)
    got = loss_and_grads(impl, query, table, targets, weights=weights,
                         **options, **({"rows": rows} if impl == "chunked" else {}))
    singles = [loss_and_grads("dense", query[i : i + 1], table, targets[i : i + 1], **options)
               for i in range(n_rows)]
    want_loss = sum(w * s[0] for w, s in zip(weights, singles, strict=True)) / n_rows
    want_query = torch.cat([w * s[1] for w, s in zip(weights, singles, strict=True)]) / n_rows
    want_table = sum(w * s[2] for w, s in zip(weights, singles, strict=True)) / n_rows
    assert_same(got, (want_loss, want_query, want_table))
    assert torch.all(got[1][0] == 0)  # the first row weighs 0: no gradient reaches its query


def test_weights_must_match_the_batch():
    query, table, targets = inputs(4, 10, 3)
    with pytest.raises(ValueError, match="weights"):
        catalog_loss(query, table, targets, weights=torch.ones(3))


def test_model_forward_passes_weights_to_the_loss():
    torch.manual_seed(0)
    model = build_model(resolve_config({"model": "ave", "embedding_size": 8, "item_dropout": 0.0}),
                        n_items=20).eval()
    items = torch.tensor([[1, 2, 0], [3, 4, 5], [6, 0, 0]])
    targets = torch.tensor([7, 8, 9])
    plain = model(items, targets)
    assert torch.allclose(model(items, targets, torch.ones(3)), plain)
    assert torch.allclose(model(items, targets, torch.full((3,), 2.0)), 2 * plain)
    first_only = model(items, targets, torch.tensor([3.0, 0.0, 0.0]))
    assert torch.allclose(first_only, model(items[:1], targets[:1]))  # 3 * l_0 / 3
