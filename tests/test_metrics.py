"""Ranking metrics against a brute-force reference, ties and the padding column included."""

import math

import numpy as np
import pytest
import torch

from models.metrics import METRIC_NAMES, metrics_from_ranks, rank_and_top_


def brute_force(scores: torch.Tensor, targets: torch.Tensor) -> tuple[list[int], dict]:
    ranks = []
    for row, target in zip(scores.tolist(), targets.tolist(), strict=True):
        ranks.append(sum(s >= row[target] for s in row))
    metrics = {}
    for k in (10, 20):
        metrics[f"recall_{k}"] = sum(r <= k for r in ranks) / len(ranks)
        metrics[f"mrr_{k}"] = sum(1 / r for r in ranks if r <= k) / len(ranks)
        metrics[f"ndcg_{k}"] = sum(1 / math.log2(r + 1) for r in ranks if r <= k) / len(ranks)
    return ranks, metrics


@pytest.mark.parametrize("levels", [4, 30, 10_000])  # heavy ties ... almost none
def test_ranks_and_metrics_match_brute_force(levels):
    g = torch.Generator().manual_seed(levels)
    scores = torch.randint(0, levels, (64, 60), generator=g).float()
    scores[:, 0] = float("-inf")  # the padding column, as the model's predict() returns it
    targets = torch.randint(1, 60, (64,), generator=g)
    expected_ranks, expected = brute_force(scores, targets)
    ranks, top = rank_and_top_(scores.clone(), targets)
    assert ranks.dtype == torch.int64
    assert ranks.tolist() == expected_ranks
    metrics = metrics_from_ranks(ranks.numpy())
    assert list(metrics) == list(METRIC_NAMES)
    for name, value in expected.items():
        assert metrics[name] == pytest.approx(value, abs=1e-12)
    # Top-20 lists hold the 20 best scores, best first, never the padding item.
    assert top.shape == (64, 20) and not torch.any(top == 0)
    best = scores.sort(dim=1, descending=True).values[:, :20]
    assert torch.equal(scores.gather(1, top), best)


def test_metrics_of_known_ranks():
    metrics = metrics_from_ranks(np.array([1, 2, 11, 25]))
    assert metrics["recall_10"] == 0.5 and metrics["recall_20"] == 0.75
    assert metrics["mrr_10"] == pytest.approx((1 + 1 / 2) / 4)
    assert metrics["mrr_20"] == pytest.approx((1 + 1 / 2 + 1 / 11) / 4)
    assert metrics["ndcg_20"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(12)) / 4)


def test_padding_column_never_counts_as_higher():
    scores = torch.tensor([[float("-inf"), 0.5, 0.2, 0.9]])
    ranks, top = rank_and_top_(scores, torch.tensor([2]), k=3)
    assert ranks.item() == 3
    assert top.tolist() == [[3, 1, 2]]


def test_ties_count_against_the_target():
    # A target scored 0 like most of the catalog (a kNN model that cannot score it) ranks last
    # among the ties, not first: 1 item above it, 3 tied with it (itself included).
    scores = torch.tensor([[float("-inf"), 0.0, 0.7, 0.0, 0.0]])
    ranks, _ = rank_and_top_(scores, torch.tensor([3]), k=2)
    assert ranks.item() == 4
    # A unique score keeps the usual rank.
    scores = torch.tensor([[float("-inf"), 0.0, 0.7, 0.1]])
    ranks, _ = rank_and_top_(scores, torch.tensor([3]), None)
    assert ranks.item() == 2
