"""Session-kNN baselines (models.knn) against a plain per-row reference written from the
formulas, session rebuilding from CORE's prefix rows, sampling, and the configuration API."""

from __future__ import annotations

import math

import numpy as np
import pytest

from data.dataset import Split
from models.knn import (
    KNN_DEFAULTS,
    KNN_RANGES,
    KNN_VARIANTS,
    SIMILARITIES,
    WEIGHTINGS,
    build_knn,
    days_to_time,
    rebuild_sessions,
)

N_ITEMS = 40
TRAIN_ITEMS = 30  # ids 1..30 occur in training; 31..39 only in the current sessions
MAX_LEN = 6  # a small prefix window, so that many training sessions are longer than it


def rows_of(sessions: list[list[int]], max_len: int = MAX_LEN) -> Split:
    """CORE's training rows of ``sessions``: v1..v(m-1) -> vm, ..., v1 -> v2 per session."""
    prefixes, targets = [], []
    for session in sessions:
        for j in range(len(session) - 1, 0, -1):
            prefixes.append(session[:j])
            targets.append(session[j])
    return Split.from_rows(prefixes, targets, max_len=max_len)


def random_sessions(seed: int, n: int = 80) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, TRAIN_ITEMS + 1) ** 0.7
    popularity /= popularity.sum()
    return [list(rng.choice(np.arange(1, TRAIN_ITEMS + 1), size=rng.integers(2, 15),
                            p=popularity)) for _ in range(n)]


def random_queries(seed: int, n: int = 60) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, MAX_LEN + 1, size=n)
    prefixes = np.zeros((n, MAX_LEN), dtype=np.int32)
    for row, length in enumerate(lengths):
        known = rng.integers(1, TRAIN_ITEMS + 1, size=length)
        unseen = rng.integers(TRAIN_ITEMS + 1, N_ITEMS, size=length)
        prefixes[row, :length] = np.where(rng.random(length) < 0.15, unseen, known)
    return prefixes, lengths


# -- the reference: one current session at a time, straight from the formulas -----------------

def position_weight(name, p, length):
    return {"same": 1.0, "div": p / length, "linear": max(0.0, 1 - 0.1 * (length - p)),
            "log": 1 / math.log10(length - p + 1.7), "quadratic": (p / length) ** 2}[name]


def score_decay(name, step):
    return {"same": 1.0, "div": 1 / step, "linear": max(0.0, 1 - 0.1 * step),
            "log": 1 / math.log10(step + 1.7), "quadratic": 1 / step**2}[name]


def reference_scores(variant: str, params: dict, sessions, query: list[int]) -> np.ndarray:
    n = len(sessions)
    length = len(query)
    q_last = {item: p for p, item in enumerate(query, start=1)}  # last click wins
    q_set = set(query)
    clicks = {}
    for session in sessions:
        for item in session:
            clicks[item] = clicks.get(item, 0) + 1
    idf = {item: math.log(n / count) for item, count in clicks.items()}

    candidates = [s for s in range(n) if q_set & set(sessions[s])]
    if params["sample_size"] and len(candidates) > params["sample_size"]:
        candidates = sorted(candidates)[-params["sample_size"]:]  # the most recent

    if variant == "sknn":
        weight = dict.fromkeys(q_last, 1.0)
    elif variant == "vsknn":
        weight = {i: position_weight(params["weighting"], p, length) for i, p in q_last.items()}
    else:
        weight = {i: math.exp((p - length) / params["lambda_spw"]) for i, p in q_last.items()}
    norm = math.sqrt(sum(w * w for w in weight.values()))
    similarity_name = params.get("similarity", "cosine")

    sims = {}
    for s in candidates:
        items = set(sessions[s])
        shared = q_set & items
        dot = sum(weight[i] for i in shared)
        if similarity_name == "cosine":
            sim = dot / (norm * math.sqrt(len(items)))
        elif similarity_name == "jaccard":
            sim = len(shared) / len(q_set | items)
        else:  # vec
            sim = dot / len(q_set)
        if variant in ("stan", "vstan"):
            sim *= math.exp(-(1 - s / n) / params["lambda_snh"])
        sims[s] = sim
    neighbours = sorted(candidates, key=lambda s: (np.float32(sims[s]), s),
                        reverse=True)[: params["k"]]

    scores = np.zeros(N_ITEMS)
    for s in neighbours:
        session = sessions[s]
        n_last = {item: p for p, item in enumerate(session, start=1)}
        shared = q_set & set(session)
        last_match = max(q_last[i] for i in shared)
        anchor = max(n_last[i] for i in shared)
        for item in set(session):
            value = sims[s]
            if variant == "vsknn":
                value *= score_decay(params["weighting_score"], length - last_match + 1)
                value *= 1 + params["idf_weighting"] * idf[item]
            if variant in ("stan", "vstan"):
                value *= math.exp(-abs(n_last[item] - anchor) / params["lambda_inh"])
            if variant == "vstan":
                value *= math.exp((last_match - length) / params["lambda_ipw"])
                value *= 1 + params["lambda_idf"] * idf[item]
            scores[item] += value
    scores[0] = -np.inf
    return scores


CASES = [
    ("sknn", {"k": 5, "sample_size": 12, "similarity": "cosine"}),
    ("sknn", {"k": 4, "sample_size": 0, "similarity": "jaccard"}),
    ("vsknn", {"k": 5, "sample_size": 12, "similarity": "vec", "weighting": "div",
               "weighting_score": "div", "idf_weighting": 0.0}),
    ("vsknn", {"k": 6, "sample_size": 15, "similarity": "cosine", "weighting": "linear",
               "weighting_score": "linear", "idf_weighting": 2.0}),
    ("vsknn", {"k": 5, "sample_size": 10, "similarity": "vec", "weighting": "log",
               "weighting_score": "quadratic", "idf_weighting": 1.0}),
    ("vsknn", {"k": 3, "sample_size": 0, "similarity": "cosine", "weighting": "quadratic",
               "weighting_score": "log", "idf_weighting": 5.0}),
    ("vsknn", {"k": 7, "sample_size": 20, "similarity": "vec", "weighting": "same",
               "weighting_score": "same", "idf_weighting": 0.0}),
    ("stan", {"k": 5, "sample_size": 12, "lambda_spw": 1.02, "lambda_snh": 0.2,
              "lambda_inh": 2.05}),
    ("stan", {"k": 3, "sample_size": 0, "lambda_spw": 0.4525, "lambda_snh": days_to_time(5),
              "lambda_inh": 0.4525}),
    ("vstan", {"k": 5, "sample_size": 12, "similarity": "cosine", "lambda_spw": 1.02,
               "lambda_snh": 0.3, "lambda_inh": 2.05, "lambda_ipw": 1.02, "lambda_idf": 5.0}),
    ("vstan", {"k": 4, "sample_size": 15, "similarity": "vec", "lambda_spw": 3.62,
               "lambda_snh": 0.1, "lambda_inh": 0.905, "lambda_ipw": 0.4525,
               "lambda_idf": 0.0}),
]


@pytest.mark.parametrize(("variant", "params"), CASES,
                         ids=[f"{v}-{i}" for i, (v, _) in enumerate(CASES)])
def test_scores_match_the_per_row_reference(variant, params, monkeypatch):
    sessions = random_sessions(seed=1)
    prefixes, lengths = random_queries(seed=2)
    # Several blocks of rows, so that the block loop is exercised too.
    monkeypatch.setattr("models.knn.base.BLOCK_CELLS", 7 * N_ITEMS)
    model = build_knn({"model": variant, "seed": 0, **params}, N_ITEMS).fit(rows_of(sessions))
    got = model.scores(prefixes, lengths)
    assert got.dtype == np.float32 and got.shape == (len(lengths), N_ITEMS)
    expected = np.stack([reference_scores(variant, params, sessions,
                                          list(prefixes[r, : lengths[r]]))
                         for r in range(len(lengths))])
    np.testing.assert_allclose(got, expected, rtol=2e-5, atol=1e-9)
    # The case is not trivial: sampling and the top-k both cut somewhere.
    candidates = [sum(bool(set(prefixes[r, : lengths[r]]) & set(s)) for s in sessions)
                  for r in range(len(lengths))]
    limit = params["sample_size"] or len(sessions)
    if params["sample_size"]:
        assert max(candidates) > params["sample_size"]
    assert max(min(c, limit) for c in candidates) > params["k"]
    assert (got[:, 1:] > 0).any(axis=1).mean() > 0.5


@pytest.mark.parametrize("variant", KNN_VARIANTS)
def test_neighbours_come_only_from_the_training_split(variant):
    train_sessions = random_sessions(seed=3, n=40)
    model = build_knn({"model": variant}, N_ITEMS).fit(rows_of(train_sessions))
    # Item 35 occurs only in "validation" rows; items 3 and 7 in training too.
    prefixes = np.array([[3, 35, 7, 0, 0, 0], [35, 0, 0, 0, 0, 0]], dtype=np.int32)
    lengths = np.array([3, 1])
    scores = model.scores(prefixes, lengths)
    assert scores[0, 35] == 0 and scores[0, 3] > 0 and scores[0, 7] > 0
    assert np.all(scores[1, 1:] == 0)
    found = model.neighbours(prefixes, lengths)
    assert len(found.sessions) and np.all(found.rows == 0)
    for session in found.sessions:
        assert 0 <= session < len(train_sessions)
        assert {3, 7} & set(train_sessions[session])


@pytest.mark.parametrize("variant", KNN_VARIANTS)
def test_a_session_without_neighbours_scores_zeros(variant):
    model = build_knn({"model": variant}, N_ITEMS).fit(rows_of(random_sessions(seed=4)))
    prefixes = np.array([[31, 32, 31, 0, 0, 0], [5, 0, 0, 0, 0, 0], [0] * 6], dtype=np.int32)
    scores = model.scores(prefixes, np.array([3, 1, 0]))
    assert not np.isnan(scores).any()
    assert np.isneginf(scores[:, 0]).all()
    assert np.all(scores[0, 1:] == 0) and np.all(scores[2, 1:] == 0)
    assert np.isfinite(scores[:, 1:]).all() and (scores[1, 1:] > 0).any()


def test_sessions_are_rebuilt_from_prefix_rows():
    sessions = [[1, 2], list(range(1, 13)), [5, 5, 6], [7, 8, 9, 7, 8, 9, 7, 8, 9], [4, 3]]
    train = rows_of(sessions)  # window 6: sessions of 8+ items have rows of length 6
    assert train.lengths.max() == MAX_LEN
    items, offsets = rebuild_sessions(train)
    assert items.dtype == np.int32 and offsets.dtype == np.int64
    assert [items[a:b].tolist() for a, b in zip(offsets[:-1], offsets[1:], strict=True)] \
        == sessions

    # A split cut inside the second session: its last 4 rows rebuild its first 5 items.
    cut = train.subset(slice(1 + 11 - 4, None))
    items, offsets = rebuild_sessions(cut)
    rebuilt = [items[a:b].tolist() for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
    assert rebuilt == [sessions[1][:5], *sessions[2:]]

    # A long CORE-sized session (window 50) with a 60-item session.
    long_session = [int(v) for v in np.random.default_rng(0).integers(1, 30, size=60)]
    items, offsets = rebuild_sessions(rows_of([long_session, [3, 4]], max_len=50))
    assert items[offsets[0]:offsets[1]].tolist() == long_session


def test_malformed_layouts_are_refused():
    sessions = [[1, 2, 3, 4], list(range(1, 10)), [5, 6]]
    train = rows_of(sessions)
    order = np.arange(len(train))
    order[[3, 4]] = order[[4, 3]]  # the first two rows (both of length 6) of the 2nd session
    with pytest.raises(ValueError, match="training row 3 is not in CORE"):
        rebuild_sessions(train.subset(order))
    with pytest.raises(ValueError, match=r"training row 8 \(the last\) has length 3"):
        rebuild_sessions(train.subset(slice(0, 9)))  # ends inside the second session
    prefixes = train.prefixes.copy()
    prefixes[5, 2] = 30  # row 5 (of the 9-item session) no longer extends row 6
    with pytest.raises(ValueError, match="training row 5 is not in CORE's prefix layout"):
        rebuild_sessions(Split(prefixes, train.lengths, train.targets))
    with pytest.raises(ValueError, match="empty"):
        rebuild_sessions(train.subset(slice(0, 0)))
    order = np.arange(len(train))
    order[[0, 1]] = order[[1, 0]]  # a length-2 row before the length-3 row of its session
    with pytest.raises(ValueError, match="training row 0 is not in CORE's prefix layout"):
        build_knn({"model": "sknn"}, N_ITEMS).fit(train.subset(order))


@pytest.mark.parametrize("variant", KNN_VARIANTS)
def test_random_sampling_is_seeded(variant):
    train = rows_of(random_sessions(seed=5))
    prefixes, lengths = random_queries(seed=6)

    def scores(seed, sampling="random", sample_size=8):
        config = {"model": variant, "seed": seed, "sampling": sampling,
                  "sample_size": sample_size, "k": 5}
        return build_knn(config, N_ITEMS).fit(train).scores(prefixes, lengths)

    first = scores(1)
    np.testing.assert_array_equal(first, scores(1))
    assert not np.array_equal(first, scores(2))
    assert not np.array_equal(first, scores(1, sampling="recent"))
    # The same session gets the same sample whatever the batch it comes in.
    config = {"model": variant, "seed": 1, "sampling": "random", "sample_size": 8, "k": 5}
    model = build_knn(config, N_ITEMS).fit(train)
    np.testing.assert_array_equal(model.scores(prefixes[7:9], lengths[7:9]), first[7:9])
    # A sample as large as the candidates is all of them, whatever the sampling.
    np.testing.assert_array_equal(scores(1, sample_size=1000),
                                  scores(1, sampling="recent", sample_size=1000))


def test_random_samples_are_uniform_over_the_candidates():
    # 40 sessions share item 1; a sample of 10 should reach old ones, unlike "recent".
    sessions = [[1, 2 + s % 20] for s in range(40)]
    train = rows_of(sessions)
    query = (np.array([[1, 0, 0, 0, 0, 0]], dtype=np.int32), np.array([1]))
    picked = np.zeros(40)
    for seed in range(60):
        model = build_knn({"model": "sknn", "seed": seed, "sampling": "random",
                           "sample_size": 10, "k": 10}, N_ITEMS).fit(train)
        found = model.neighbours(*query)
        assert len(found.sessions) == 10
        picked[found.sessions] += 1
    assert picked[:30].sum() > 0.5 * picked.sum()  # 75% expected for a uniform sample
    assert picked.min() > 0


def test_configuration_api():
    assert set(KNN_DEFAULTS) == set(KNN_VARIANTS)
    for variant, defaults in KNN_DEFAULTS.items():
        assert {"k", "sample_size", "sampling"} <= set(defaults)
        for key, value in defaults.items():
            assert type(value) in (int, float, str), (variant, key)
            check, _ = KNN_RANGES[key]
            assert check(value), (variant, key, value)
        model = build_knn({"model": variant, "seed": 3}, N_ITEMS)
        assert model.params == defaults
    assert set(KNN_RANGES) == {key for d in KNN_DEFAULTS.values() for key in d}
    assert KNN_DEFAULTS["stan"]["lambda_snh"] == pytest.approx(5 / 150)
    assert set(WEIGHTINGS) == {"same", "div", "linear", "log", "quadratic"}
    assert SIMILARITIES["sknn"] == ("cosine", "jaccard")

    model = build_knn({"model": "vsknn", "seed": 0, "k": 7, "idf_weighting": 2,
                       "epochs": 3}, N_ITEMS)  # ints accepted for floats, trainer keys ignored
    assert model.k == 7 and model.idf_weighting == 2.0
    with pytest.raises(ValueError, match="has no hyperparameter"):
        build_knn({"model": "stan", "weighting": "div"}, N_ITEMS)
    with pytest.raises(ValueError, match="'similarity' must be one of"):
        build_knn({"model": "sknn", "similarity": "vec"}, N_ITEMS)
    with pytest.raises(ValueError, match="'k' must be >= 1"):
        build_knn({"model": "sknn", "k": 0}, N_ITEMS)
    with pytest.raises(ValueError, match="lambda_inh"):
        build_knn({"model": "vstan", "lambda_inh": 0.0}, N_ITEMS)
    with pytest.raises(TypeError, match="sample_size"):
        build_knn({"model": "stan", "sample_size": 10.5}, N_ITEMS)
    with pytest.raises(ValueError, match="unknown kNN model"):
        build_knn({"model": "trm"}, N_ITEMS)
    with pytest.raises(RuntimeError, match="not fitted"):
        build_knn({"model": "sknn"}, N_ITEMS).scores(np.ones((1, 6), np.int32), np.ones(1))


# ---------------------------------------------------------------- the trainer of the protocol


def test_knn_trainer_fits_once_validates_and_keeps_test_for_the_end(tmp_path):
    from data.synthetic import make_dataset
    from models.knn.trainer import KnnTrainer
    from models.trainers import make_trainer

    dataset = make_dataset("tiny", seed=0)
    trainer = make_trainer({"model": "stan", "k": 20}, dataset.without_test())
    assert isinstance(trainer, KnnTrainer) and not trainer.should_stop
    record = trainer.run_epoch()
    assert trainer.should_stop and record["epoch"] == 1 and record["best_epoch"] == 1
    assert "train_loss" not in record  # no loss: a fit
    assert record["valid_mrr_20"] == record["best_valid_mrr_20"] == trainer.best_metrics[
        "valid_mrr_20"]
    with pytest.raises(PermissionError):
        trainer.evaluate("test")
    full = make_trainer({"model": "stan", "k": 20}, dataset)
    full.fit()
    metrics, ranks, tops = full.evaluate_detailed("test")
    assert len(ranks) == len(dataset.test) and tops.shape == (len(dataset.test), 20)
    assert not (tops == 0).any()  # padding is never recommended
    # ranks are the project's: ties against the target, through rank_and_top_
    model = build_knn(full.config, dataset.n_items).fit(dataset.train)
    scores = model.scores(dataset.test.prefixes, dataset.test.lengths)
    expected = (scores >= scores[np.arange(len(scores)), dataset.test.targets][:, None]).sum(1)
    assert ranks.tolist() == expected.tolist()
    # a checkpoint restores the record; the model is refitted, so scores are the same
    full.save_checkpoint(tmp_path / "knn.pt")
    again = make_trainer({"model": "stan", "k": 20}, dataset)
    again.load_checkpoint(tmp_path / "knn.pt")
    assert again.should_stop and again.history == full.history
    assert again.evaluate("test") == metrics
    with pytest.raises(ValueError, match="different config"):
        make_trainer({"model": "stan", "k": 21}, dataset).load_checkpoint(tmp_path / "knn.pt")
    timing = again.time_epoch(batches=1)
    assert timing["train_batches"] == 1 and timing["epoch_s"] > 0
