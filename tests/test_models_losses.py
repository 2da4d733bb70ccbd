"""Objectives: the fused catalog loss equals autograd references; HN, in-batch, NT-Xent.
(The contrastive augmentations and NT-Xent's negatives: tests/test_models_enhancements.py.)"""

import pytest
import torch
import torch.nn.functional as F

from models.losses import (
    catalog_loss,
    hard_negatives,
    in_batch_session_loss,
    nt_xent,
)
from models.registry import build_model, resolve_config

B, N, D = 12, 40, 8


def inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    query = F.normalize(torch.randn(B, D, generator=g), dim=-1) / 0.07
    table = F.normalize(torch.randn(N, D, generator=g), dim=-1)
    targets = torch.randint(1, N, (B,), generator=g)
    return query.requires_grad_(), table.requires_grad_(), targets


def reference_loss(query, table, targets, k, lam):
    """The spec's definition written with plain autograd."""
    z = query @ table.t()
    loss = (1 - lam) * F.cross_entropy(z, targets)
    if lam > 0:
        negatives = hard_negatives(z.detach(), targets, k)
        margin = z.gather(1, negatives) - z.gather(1, targets[:, None])
        loss = loss + lam * F.softplus(margin).mean()
    return loss


@pytest.mark.parametrize("lam", [0.0, 0.2, 1.0])
def test_catalog_loss_and_gradients_match_autograd_reference(lam):
    query, table, targets = inputs()
    loss = catalog_loss(query, table, targets, hn_k=5, hn_lambda=lam)
    grads = torch.autograd.grad(loss, (query, table))
    expected = reference_loss(query, table, targets, 5, lam)
    expected_grads = torch.autograd.grad(expected, (query, table))
    torch.testing.assert_close(loss, expected)
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


def test_catalog_loss_under_bf16_autocast_stays_close_and_returns_fp32_gradients():
    query, table, targets = inputs(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = catalog_loss(query, table, targets, hn_k=5, hn_lambda=0.2)
    assert loss.dtype == torch.float32
    grad_query, grad_table = torch.autograd.grad(loss, (query, table))
    assert grad_query.dtype == grad_table.dtype == torch.float32
    torch.testing.assert_close(
        loss, reference_loss(query, table, targets, 5, 0.2), rtol=2e-2, atol=2e-2
    )


def test_hard_negatives_are_the_top_scores_excluding_target_and_padding():
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 6, (B, N), generator=g).float()  # many ties
    targets = torch.randint(1, N, (B,), generator=g)
    scores[:, 0] = 100.0  # the padding item would win
    scores[torch.arange(B), targets] = 99.0  # and so would the target
    k = 7
    negatives = hard_negatives(scores, targets, k)
    assert negatives.shape == (B, k)
    assert not torch.any(negatives == 0)
    assert not torch.any(negatives == targets[:, None])
    assert all(len(set(row.tolist())) == k for row in negatives)
    allowed = scores.clone()
    allowed[:, 0] = float("-inf")
    allowed[torch.arange(B), targets] = float("-inf")
    best = allowed.topk(k, dim=1).values
    torch.testing.assert_close(scores.gather(1, negatives).sort(1, descending=True).values, best)


def test_hn_with_lambda_zero_is_plain_cross_entropy_training():
    config = {"embedding_size": D, "inner_size": 16}
    items = torch.tensor([[3, 4, 5], [6, 0, 0], [7, 8, 0]])
    targets = torch.tensor([9, 10, 11])
    losses = []
    for variant in ({"model": "hn", "hn_lambda": 0.0}, {"model": "trm"}):
        torch.manual_seed(0)
        model = build_model(resolve_config({**config, **variant}), n_items=20)
        torch.manual_seed(1)
        loss = model(items, targets)
        loss.backward()
        losses.append((loss, model.item_embedding.grad))
    assert torch.equal(losses[0][0], losses[1][0])
    assert torch.equal(losses[0][1], losses[1][1])


def test_in_batch_session_loss_matches_definition():
    h = F.normalize(torch.randn(5, D), dim=-1)
    expected = torch.stack(
        [
            torch.logsumexp(torch.stack([h[b] @ h[c] / 0.1 for c in range(5) if c != b]), 0)
            for b in range(5)
        ]
    ).mean()
    torch.testing.assert_close(in_batch_session_loss(h, 0.1), expected)
    assert in_batch_session_loss(h[:1], 0.1).item() == 0.0


def test_nt_xent_is_symmetric_and_small_for_aligned_views():
    torch.manual_seed(0)
    a, b = F.normalize(torch.randn(6, D), dim=-1), F.normalize(torch.randn(6, D), dim=-1)
    torch.testing.assert_close(nt_xent(a, b, 0.2), nt_xent(b, a, 0.2))
    far = F.normalize(torch.eye(D)[:6], dim=-1)  # orthogonal sessions, identical views
    assert nt_xent(far, far, 0.01) < 1e-3 < nt_xent(a, b, 0.01)


def test_model_loss_is_cross_entropy_of_cosine_logits_over_temperature():
    """Robust distance measuring: without dropout, the training loss is CE over h_s E'^T / tau
    with E' the row-normalised table (padding row included, as in CORE's training)."""
    torch.manual_seed(0)
    model = build_model(
        resolve_config({"model": "ave", "embedding_size": D, "temperature": 0.1}), n_items=20
    )
    model.eval()
    items = torch.tensor([[3, 4, 5], [6, 0, 0]])
    targets = torch.tensor([9, 10])
    real = (items != 0).unsqueeze(-1)
    h = F.normalize((model.item_embedding[items] * real).sum(1), dim=-1)
    logits = h @ F.normalize(model.item_embedding, dim=-1).t() / 0.1
    torch.testing.assert_close(model(items, targets), F.cross_entropy(logits, targets))
    scores = model.predict(items)
    torch.testing.assert_close(scores[:, 1:], logits[:, 1:])
    assert torch.all(scores[:, 0] == float("-inf"))
