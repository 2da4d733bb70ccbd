"""Popularity bias: the IPS loss weights (models.weighting) and the report's popularity view
(verdict.popularity: ARP, tail share, exposure Gini, session tests on tail targets)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from data.dataset import SessionDataset, Split
from models.registry import VARIANTS, default_config, fits_once, resolve_config
from models.weighting import ips_weights, training_rows
from verdict.beyond import item_groups
from verdict.popularity import (
    average_recommendation_popularity,
    exposure_gini,
    gini,
    popularity_metrics,
    popularity_table,
    tail_session_tests,
    tail_share,
)
from verdict.results import exposure_counts
from verdict.row_tables import popularity_markdown
from verdict.session_level import row_level_tests

# ------------------------------------------------------------------ IPS


def test_ips_weights_follow_the_documented_formula():
    # counts: item 1 three times, item 2 once, item 3 twice (max 3)
    targets = np.array([1, 1, 1, 2, 3, 3])
    raw = np.array([1.0, 1.0, 1.0, 3.0, 1.5, 1.5])  # (count / 3) ** -1
    assert ips_weights(targets, 1.0) == pytest.approx(raw / raw.mean())
    half = (np.array([3, 3, 3, 1, 2, 2]) / 3.0) ** -0.5
    assert ips_weights(targets, 0.5) == pytest.approx(half / half.mean())
    clipped = np.minimum(raw, 2.0)  # no row weighs more than twice a row of item 1
    assert ips_weights(targets, 1.0, clip=2.0) == pytest.approx(clipped / clipped.mean())
    assert ips_weights(targets, 0.0) == pytest.approx(np.ones(6))
    weights = ips_weights(targets, 1.0)
    assert weights.dtype == np.float32 and weights.mean() == pytest.approx(1.0)
    # a rarer target weighs more
    assert weights[3] > weights[4] > weights[0]


def test_ips_weights_reject_bad_settings():
    with pytest.raises(ValueError, match="ips_power"):
        ips_weights(np.array([1, 2]), -0.5)
    with pytest.raises(ValueError, match="ips_clip"):
        ips_weights(np.array([1, 2]), 1.0, clip=0.5)
    with pytest.raises(ValueError, match="at least one"):
        ips_weights(np.array([], dtype=np.int64), 1.0)


def test_pop_weighting_is_a_common_key_of_every_trained_variant():
    for variant in (v for v in VARIANTS if not fits_once(v)):
        config = default_config(variant)
        assert (config["pop_weighting"], config["ips_power"], config["ips_clip"]) == (
            "none", 0.5, 0.0)
    assert resolve_config({"model": "ave", "pop_weighting": "ips"})["pop_weighting"] == "ips"
    for bad in ({"pop_weighting": "snips"}, {"ips_power": -1.0}, {"ips_clip": 0.5}):
        with pytest.raises(ValueError):
            resolve_config({"model": "trm", **bad})


def small_dataset() -> SessionDataset:
    targets = [1, 1, 1, 1, 2, 2, 3, 4]
    train = Split.from_rows([[2], [3], [4], [2, 3], [1], [4], [1, 2], [3]], targets)
    return SessionDataset("small", 5, train, train.subset(slice(0, 2)), None)


def test_training_rows_weigh_the_real_rows_by_ips_only_when_asked():
    dataset = small_dataset()
    plain = training_rows(resolve_config({"model": "ave"}), dataset.train, dataset.n_items)
    assert plain.weights is None and plain.split is dataset.train
    config = resolve_config({"model": "ave", "pop_weighting": "ips", "ips_power": 1.0})
    rows = training_rows(config, dataset.train, dataset.n_items)
    assert rows.weights == pytest.approx(ips_weights(dataset.train.targets, 1.0))


def test_the_trainer_passes_the_ips_weights_to_the_loss():
    from models.trainer import Trainer

    dataset = small_dataset()
    config = {"model": "ave", "pop_weighting": "ips", "ips_power": 1.0, "embedding_size": 8,
              "batch_size": 4, "epochs": 1}
    trainer = Trainer(config, dataset, device="cpu", num_threads=1)
    seen = []
    forward = trainer.model.forward

    def spy(items, targets, **kwargs):
        seen.append((targets.clone(), kwargs["weights"].clone()))
        return forward(items, targets, **kwargs)

    trainer.model.forward = spy
    trainer._train_epoch()
    expected = dict(zip(dataset.train.targets.tolist(), ips_weights(dataset.train.targets, 1.0),
                        strict=False))
    assert sum(len(t) for t, _ in seen) == len(dataset.train)
    for targets, weights in seen:
        assert weights.numpy() == pytest.approx([expected[t] for t in targets.tolist()])


# ------------------------------------------------------------------ popularity view

# ids 1..10; counts as in tests/test_report.py: head (20%) = items 3 and 9, cold = item 5
POPULARITY = np.array([0, 5, 1, 9, 1, 0, 3, 3, 2, 7, 4], dtype=np.int64)


def arp(topk, k):
    return average_recommendation_popularity(exposure_counts(topk, len(POPULARITY), k),
                                             POPULARITY)


def test_arp_is_the_mean_of_each_lists_mean_training_popularity():
    topk = np.array([[3, 9], [2, 5]])
    # row 1: (9 + 7) / 2 = 8; row 2: (1 + 0) / 2 = 0.5
    assert arp(topk, k=2) == pytest.approx(4.25)
    assert arp(topk, k=1) == pytest.approx(5.0)
    # padding is not an item: a list [3, 0] has mean popularity 9
    assert arp(np.array([[3, 0]]), 2) == 9.0
    assert np.isnan(average_recommendation_popularity(np.zeros(11, int), POPULARITY))


def test_tail_share_counts_tail_slots():
    tail = item_groups(POPULARITY)["tail"]
    assert tail[[1, 2, 4, 6, 7, 8, 10]].all() and not tail[[3, 9, 5]].any()
    topk = np.array([[3, 1, 5, 2], [9, 3, 10, 0]])  # tail items: 1, 2, 10 of 7 real slots
    assert tail_share(exposure_counts(topk, 11, k=4), tail) == pytest.approx(3 / 7)
    assert tail_share(exposure_counts(topk, 11, k=1), tail) == 0.0


def test_gini_on_hand_computed_cases():
    assert gini([4, 4, 4, 4]) == 0.0
    assert gini([0, 0, 0, 0]) == 0.0
    assert gini([0, 0, 0, 8]) == pytest.approx(3 / 4)  # one item: (n - 1) / n
    # sorted [0, 0, 1, 3]: sum (2i - n - 1) x_i = 1 * 1 + 3 * 3 = 10; / (4 * 4)
    assert gini([3, 0, 1, 0]) == pytest.approx(0.625)
    with pytest.raises(ValueError):
        gini([1, -1])


def test_exposure_gini_is_zero_for_uniform_exposure_and_near_one_for_one_item():
    n_items = 101  # 100 catalog items
    uniform = np.arange(1, 101).reshape(10, 10)  # every item in exactly one list
    assert exposure_gini(exposure_counts(uniform, n_items, k=10)) == pytest.approx(0.0)
    one_item = np.ones((50, 1), dtype=np.int64)
    assert exposure_gini(exposure_counts(one_item, n_items, k=1)) == pytest.approx(0.99)
    # never-recommended items count as zero exposure
    half = exposure_counts(np.arange(1, 51).reshape(5, 10), n_items, k=10)
    assert exposure_gini(half) == pytest.approx(0.5)


def per_row_for(variants, n_rows=60, n_seeds=3):
    rng = np.random.default_rng(5)
    return {
        ("d", v): [(rng.integers(1, 40, size=n_rows),
                    exposure_counts(rng.integers(1, 11, size=(n_rows, 20)), 11))
                   for _ in range(n_seeds)]
        for v in variants
    }


def test_popularity_table_averages_each_metric_over_seeds():
    per_row = per_row_for(("trm", "diffaug"))
    table = popularity_table(per_row, {"d": POPULARITY})
    assert len(table) == 2 and (table["n_seeds"] == 3).all()
    for (_, variant), seeds in per_row.items():
        row = table[table["variant"] == variant].iloc[0]
        values = pd.DataFrame(popularity_metrics(exposure, POPULARITY) for _, exposure in seeds)
        for name in ("arp", "tail_share", "gini"):
            assert row[f"{name}_20"] == pytest.approx(values[name].mean())
            assert row[f"{name}_20_std"] == pytest.approx(values[name].std(ddof=1))
            assert row[f"{name}_20_ci_low"] < row[f"{name}_20"] < row[f"{name}_20_ci_high"]
    assert table["catalog_tail_share"].iloc[0] == pytest.approx(0.7)
    markdown = popularity_markdown(table, tail_session_tests(
        per_row, {"d": np.arange(60) % 10 + 1}, {"d": POPULARITY}, "trm", n_resamples=200), 0.2)
    assert "ARP@20" in markdown and "Gini@20" in markdown and "| d | DiffAug (" in markdown


def test_tail_session_tests_use_only_tail_target_rows_and_correct_within_the_family():
    per_row = per_row_for(("trm", "diffaug", "ips"))
    targets = np.arange(60) % 10 + 1
    tail = item_groups(POPULARITY)["tail"][targets]
    out = tail_session_tests(per_row, {"d": targets}, {"d": POPULARITY}, "trm",
                             n_resamples=500, seed=3, correction="holm")
    assert (out["subset"] == "tail targets").all()
    assert (out["n_rows"] == tail.sum()).all() and tail.sum() < 60
    assert (out["family_size"] == 4).all()  # 2 variants x 2 metrics
    ranks = {v: np.stack([r[tail] for r, _ in seeds]) for (_, v), seeds in per_row.items()}
    direct = row_level_tests(ranks, "trm", n_resamples=500, seed=3, correction="holm")
    assert out["p_randomization"].to_numpy() == pytest.approx(
        direct["p_randomization"].to_numpy())
    assert out["p_randomization_adjusted"].to_numpy() == pytest.approx(
        direct["p_randomization_adjusted"].to_numpy())
    # a variant that ranks every tail target first is found there
    per_row = per_row_for(("trm", "diffaug"), n_rows=300)
    targets = np.arange(300) % 10 + 1
    tail = item_groups(POPULARITY)["tail"][targets]
    better = {key: [(np.where(tail, 1, r), t) for r, t in seeds] if key[1] == "diffaug"
              else seeds for key, seeds in per_row.items()}
    found = tail_session_tests(better, {"d": targets}, {"d": POPULARITY}, "trm",
                               n_resamples=2000)
    gain = found[(found["variant"] == "diffaug") & (found["metric"] == "recall_20")]
    assert gain["mean_diff"].iloc[0] > 0.5 and bool(gain["significant"].iloc[0])
