"""Synthetic generator: deterministic, realistic shape, and learnable beyond popularity."""

from __future__ import annotations

import numpy as np
import pytest

from data import DataError
from data.atomic import load_atomic
from data.synthetic import (
    PRESETS,
    THEMES,
    SyntheticConfig,
    generate_events,
    make_dataset,
    write_atomic,
)


def test_same_seed_same_data_other_seed_other_data():
    first, second, other = make_dataset(seed=5), make_dataset(seed=5), make_dataset(seed=6)
    for split in ("train", "valid", "test"):
        np.testing.assert_array_equal(first.split(split).prefixes, second.split(split).prefixes)
        np.testing.assert_array_equal(first.split(split).targets, second.split(split).targets)
    assert len(first.train) != len(other.train) or not np.array_equal(
        first.train.targets, other.train.targets
    )


def test_tiny_is_test_sized():
    dataset = make_dataset("tiny")
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
    assert [p.name for p in paths] == [
        "syn.train.inter", "syn.valid.inter", "syn.test.inter", "syn.item"
    ]
    assert paths[0].read_text().split("\n", 1)[0].endswith("\titem_id:token\tuser_id:token")
    loaded, built = load_atomic(tmp_path, "syn"), make_dataset("tiny", seed=4)
    assert loaded.n_items == built.n_items
    np.testing.assert_array_equal(loaded.test.prefixes, built.test.prefixes)
    for split in ("train", "valid", "test"):
        np.testing.assert_array_equal(loaded.split(split).users, built.split(split).users)
    assert loaded.items.texts() == built.items.texts()
    assert loaded.items.types == {"title": "token_seq", "category": "token"}


def _title_words(text: str) -> set[str]:
    """The topic words of a synthetic title 'Adjective word word 123 | Category'."""
    return set(text.split(" | ")[0].split()[1:3])


def test_every_item_has_a_title_and_a_category():
    dataset = make_dataset("tiny", seed=2)
    titles, categories = dataset.items.fields["title"], dataset.items.fields["category"]
    assert titles[0] == categories[0] == ""
    assert all(len(t.split()) == 4 and t.split()[-1].isdigit() for t in titles[1:])
    assert set(categories[1:]) <= set(THEMES) and len(set(categories[1:])) > 3
    assert dataset.items.has_text and dataset.items.items_with_text() == dataset.n_items - 1
    again = make_dataset("tiny", seed=2).items.texts()
    assert again == dataset.items.texts() != make_dataset("tiny", seed=3).items.texts()


def test_item_text_follows_the_latent_clusters():
    """Consecutive clicks mostly stay in a cluster, so their titles share a topic word far more
    often than random item pairs; but titles are not identical."""
    dataset = make_dataset("small", seed=0)
    words = [_title_words(text) for text in dataset.items.texts()]
    train = dataset.train
    last = train.prefixes[np.arange(len(train)), train.lengths - 1]

    def shared(a, b):
        return np.mean([bool(words[x] & words[y]) for x, y in zip(a, b, strict=True)])

    rng = np.random.default_rng(0)
    random_pairs = rng.integers(1, dataset.n_items, size=(2, 5000))
    consecutive = shared(last[:5000], train.targets[:5000])
    baseline = shared(*random_pairs)
    assert consecutive > baseline + 0.3, (consecutive, baseline)
    distinct = len(set(dataset.items.fields["title"][1:]))
    assert distinct > 0.9 * (dataset.n_items - 1)


def test_sessions_have_users_who_prefer_some_clusters():
    dataset = make_dataset("small", seed=0)
    train = dataset.train
    assert train.users is not None and train.users.min() >= 1
    every = np.concatenate([dataset.split(s).users for s in ("train", "valid", "test")])
    n_users = len(np.unique(every))
    assert np.array_equal(np.unique(every), np.arange(1, n_users + 1))  # numbered 1..n_users
    assert 0.5 * 8000 / 8 <= n_users <= 8000 / 8
    # one category per session (of its first item); a user's sessions agree far more often
    categories = dataset.items.fields["category"]
    starts = train.lengths == 1  # one row per session
    session_category = categories[train.prefixes[starts, 0]][:2000]
    session_user = train.users[starts][:2000]
    same_user = session_user[:, None] == session_user[None, :]
    same_category = session_category[:, None] == session_category[None, :]
    off_diagonal = ~np.eye(len(session_user), dtype=bool)
    within = same_category[same_user & off_diagonal].mean()
    across = same_category[~same_user].mean()
    assert within > across + 0.2, (within, across)


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
