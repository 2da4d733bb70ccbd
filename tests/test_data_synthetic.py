"""Synthetic generator: deterministic, realistic shape, and learnable beyond popularity."""

from __future__ import annotations

import time

import numpy as np
import pytest

from data import DataError
from data.atomic import load_atomic
from data.synthetic import PRESETS, SyntheticConfig, generate_events, make_dataset, write_atomic


def test_same_seed_same_data_other_seed_other_data():
    first, second, other = make_dataset(seed=5), make_dataset(seed=5), make_dataset(seed=6)
    for split in ("train", "valid", "test"):
        np.testing.assert_array_equal(first.split(split).prefixes, second.split(split).prefixes)
        np.testing.assert_array_equal(first.split(split).targets, second.split(split).targets)
    assert len(first.train) != len(other.train) or not np.array_equal(
        first.train.targets, other.train.targets
    )


def test_tiny_is_fast_and_test_sized():
    start = time.perf_counter()
    dataset = make_dataset("tiny")
    assert time.perf_counter() - start < 1.0
    assert dataset.name == "synthetic-tiny"
    assert 100 <= dataset.n_items <= 201
    assert 1_000 <= len(dataset.train) <= 3_000 and len(dataset.valid) > 100
    for split in ("train", "valid", "test"):
        part = dataset.split(split)
        assert part.lengths.min() >= 1 and part.targets.min() >= 1
        assert part.targets.max() < dataset.n_items and part.prefixes.max() < dataset.n_items


def test_session_lengths_vary_and_long_sessions_hit_the_prefix_window():
    dataset = make_dataset("small")
    lengths = dataset.train.lengths
    assert lengths.max() == 50 and np.mean(lengths <= 3) > 0.3
    assert 5_000 <= PRESETS["small"].n_sessions <= 10_000
    assert 900 <= dataset.n_items <= 2_001


def test_popularity_is_skewed():
    counts = np.sort(np.bincount(make_dataset("small").train.targets))[::-1]
    top_share = counts[: len(counts) // 10].sum() / counts.sum()
    assert top_share > 0.3  # top 10% of items take well over 10% of the clicks


def _recall_at_20(scores, targets):
    top = np.argpartition(-scores, 20, axis=1)[:, :20]
    return float((top == targets[:, None]).any(axis=1).mean())


@pytest.mark.parametrize("seed", [0, 1])
def test_first_order_markov_beats_popularity_on_valid(seed):
    dataset = make_dataset("tiny", seed=seed)
    train, valid = dataset.train, dataset.valid
    last = train.prefixes[np.arange(len(train)), train.lengths - 1]
    transitions = np.zeros((dataset.n_items, dataset.n_items))
    np.add.at(transitions, (last, train.targets), 1)
    popularity = np.bincount(train.targets, minlength=dataset.n_items).astype(float)
    popularity[0] = -1  # never recommend padding
    valid_last = valid.prefixes[np.arange(len(valid)), valid.lengths - 1]
    markov = _recall_at_20(transitions[valid_last] + 1e-6 * popularity, valid.targets)
    popular = _recall_at_20(np.tile(popularity, (len(valid), 1)), valid.targets)
    assert markov > popular + 0.15, (markov, popular)


def test_intent_shift_switches_cluster_inside_sessions():
    calm = generate_events(SyntheticConfig(200, 150, 8, shift_prob=0.0), seed=0)
    shifty = generate_events(SyntheticConfig(200, 150, 8, shift_prob=1.0), seed=0)

    def distinct_items_per_session(events):
        return events.groupby("session")["item"].nunique().mean()

    assert distinct_items_per_session(shifty) > distinct_items_per_session(calm)


def test_overrides_and_unknown_parameters():
    assert len(make_dataset("tiny", n_sessions=800).train) > len(make_dataset("tiny").train)
    with pytest.raises(DataError, match="unknown synthetic parameter"):
        make_dataset("tiny", n_session=10)
    with pytest.raises(DataError, match="unknown synthetic preset"):
        make_dataset("huge")


def test_write_atomic_round_trips(tmp_path):
    paths = write_atomic(tmp_path, name="syn", preset="tiny", seed=4)
    assert [p.name for p in paths] == ["syn.train.inter", "syn.valid.inter", "syn.test.inter"]
    loaded, built = load_atomic(tmp_path, "syn"), make_dataset("tiny", seed=4)
    assert loaded.n_items == built.n_items
    np.testing.assert_array_equal(loaded.test.prefixes, built.test.prefixes)


def test_a_train_tail_keeps_the_latest_rows_and_everything_else(tmp_path):
    from data import DatasetSource

    write_atomic(tmp_path / "tiny", name="tiny", preset="tiny", seed=0)
    full = DatasetSource("tiny", tmp_path).load()
    source = DatasetSource("tiny", tmp_path, train_rows=100)
    cut = source.load()
    assert source.label == cut.name == "tiny-last100" and DatasetSource("tiny").label == "tiny"
    assert np.array_equal(cut.train.targets, full.train.targets[-100:])
    assert np.array_equal(cut.train.prefixes, full.train.prefixes[-100:])
    assert cut.n_items == full.n_items
    assert np.array_equal(cut.valid.targets, full.valid.targets)
    assert np.array_equal(cut.test.targets, full.test.targets)
    assert len(full.with_train_tail(10**9).train) == len(full.train)
    with pytest.raises(ValueError, match=">= 1"):
        full.with_train_tail(0)
