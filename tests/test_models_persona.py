"""Persona variant: the training-only graph, metapath adjacencies, HDGI, the persona cache, the
candidate-then-re-rank step, the fallback for unknown users and the trainer's user batches."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from data.dataset import GraphFiles, SessionDataset, Split
from data.items import ItemTable
from data.synthetic import make_dataset
from models.persona import hdgi as hdgi_module
from models.persona.graph import (
    GraphSettings,
    HeteroGraph,
    build_graph,
    feature_fields,
    metapath_adjacency,
    metapath_counts,
    persona_groups,
    session_of_rows,
    top_k_per_row,
    user_metapaths,
)
from models.persona.hdgi import HDGISettings, cache_key, train_personas
from models.persona.model import PersonaCORE, two_stage_scores
from models.registry import build_model, build_model_for, resolve_config
from models.trainer import Trainer

SMALL = {"embedding_size": 16, "inner_size": 32, "batch_size": 256, "eval_batch_size": 64}
FAST_HDGI = {"hdgi_epochs": 30, "persona_size": 16}


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Every test gets its own persona cache folder and an empty in-process cache."""
    monkeypatch.setenv("CORE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(hdgi_module, "_MEMORY", {})


def expand(sessions: list[list[int]], users: list[int], max_len: int = 10) -> Split:
    """Rows of sessions as the pipeline expands them (longest prefix first), with users."""
    prefixes, targets, row_users = [], [], []
    for items, user in zip(sessions, users, strict=True):
        for end in range(len(items) - 1, 0, -1):
            prefixes.append(items[:end])
            targets.append(items[end])
            row_users.append(user)
    split = Split.from_rows(prefixes, targets, max_len=max_len)
    return replace(split, users=np.asarray(row_users, dtype=np.int64))


def unit_vectors(n_items: int, dim: int = 12, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(n_items, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors[0] = 0
    return vectors


def hand_dataset() -> SessionDataset:
    """Items 1..9, users 1..3 in train; valid/test add pairs and a user never seen in train."""
    train = expand([[1, 2, 3], [2, 3, 4], [5, 6], [5, 6, 7]], [1, 1, 2, 0])
    valid = expand([[1, 8, 9], [8, 9]], [1, 4])  # user 1 with items 8, 9; new user 4
    test = expand([[9, 1], [2, 9]], [2, 0])
    genres = ["", "a", "a b", "b", "b", "c", "c", "c", "a", "a"]
    items = ItemTable.from_columns(
        10, np.arange(1, 10), {"genre": genres[1:], "title": [f"t{i} x{i}" for i in range(1, 10)]},
        {"genre": "token_seq", "title": "token_seq"},
    )
    return SessionDataset("hand", 10, train, valid, test, items=items,
                          item_vectors=unit_vectors(10))


# --------------------------------------------------------------------------- graph


def test_sessions_are_recovered_from_expanded_rows():
    split = expand([[1, 2, 3, 4], [5, 6], [7, 8, 9]], [1, 1, 2])
    assert session_of_rows(split).tolist() == [0, 0, 0, 1, 2, 2]
    # Two sessions of different users that look like one (lengths 2 then 1) are still two.
    tricky = expand([[1, 2], [3, 1]], [1, 2])
    tricky = replace(tricky, lengths=np.array([1, 1], np.int32))
    assert session_of_rows(tricky).tolist() == [0, 1]


def test_no_validation_or_test_interaction_enters_the_graph():
    dataset = hand_dataset()
    graph = build_graph(dataset, GraphSettings(cooc_min=1))
    assert graph.user_ids.tolist() == [1, 2]  # user 4 (valid only) and user 0 have no node
    interacts = graph.relation("user", "item").toarray()
    assert np.flatnonzero(interacts[0]).tolist() == [1, 2, 3, 4]
    assert np.flatnonzero(interacts[1]).tolist() == [5, 6]
    assert interacts[:, [8, 9]].sum() == 0  # items 8, 9 occur in valid/test only
    cooc = graph.relation("item", "item", "co_occurs").toarray()
    assert cooc[1, 2] and cooc[2, 4] and cooc[5, 7]  # user 0's training session counts too
    assert not cooc[1, 4] and not cooc[8, 9] and not cooc[1, 9]
    # Replacing valid and test changes nothing in the graph or the persona cache key.
    other = replace(dataset, valid=expand([[1, 5]], [2]), test=None)
    assert build_graph(other, GraphSettings(cooc_min=1)).summary() == graph.summary()
    settings = (GraphSettings(), HDGISettings())
    assert cache_key(other, *settings, seed=1) == cache_key(dataset, *settings, seed=1)
    # ... while a training row does.
    changed = replace(dataset, train=dataset.train.subset(slice(1, None)))
    assert cache_key(changed, *settings, seed=1) != cache_key(dataset, *settings, seed=1)


def test_co_occurrence_threshold_and_feature_fields():
    dataset = hand_dataset()
    cooc = build_graph(dataset, GraphSettings(cooc_min=2)).relation("item", "item").toarray()
    assert np.argwhere(cooc).tolist() == [[2, 3], [3, 2], [5, 6], [6, 5]]  # in two sessions
    assert feature_fields(dataset.items) == ["genre"]  # titles identify items: not a feature
    graph = build_graph(dataset)
    assert graph.nodes["genre"] == 3
    assert graph.relation("item", "genre").sum() == 10


def hand_graph() -> HeteroGraph:
    """3 users, 4 items, 2 genres; u0: i0 i1, u1: i1, u2: i3; i0 i1 in g0, i2 i3 in g1; two KG
    relations linking i0 and i2 to entity e0 (one of them twice, in both directions)."""
    interacts = sp.csr_matrix(np.array([[1, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1]], float))
    genre = sp.csr_matrix(np.array([[1, 0], [1, 0], [0, 1], [0, 1]], float))
    directed = sp.csr_matrix(np.array([[1], [0], [1], [0]], float))
    starring = sp.csr_matrix(np.array([[1], [0], [0], [0]], float))
    return HeteroGraph(
        nodes={"user": 3, "item": 4, "genre": 2, "entity": 1},
        relations={
            ("user", "interacts", "item"): interacts,
            ("item", "has_genre", "genre"): genre,
            ("item", "directed_by", "entity"): directed,
            ("entity", "directed", "item"): directed.T.tocsr(),
            ("item", "starring", "entity"): starring,
        },
        user_ids=np.array([1, 2, 3]),
        feature_fields=("genre",),
    )


def test_metapath_adjacency_on_a_hand_made_graph():
    graph = hand_graph()
    ui, iu = ("user", "interacts", "item"), ("item", "interacts", "user")
    uiu = (ui, iu)
    assert metapath_counts(graph, uiu).toarray().tolist() == [[2, 1, 0], [1, 1, 0], [0, 0, 1]]
    igi = (("item", None, "genre"), ("genre", None, "item"))
    assert metapath_counts(graph, igi).toarray()[0].tolist() == [1, 1, 0, 0]
    # I-E-I over the union of relations (binary): i0 and i2 share e0 once, whatever the names.
    iei = (("item", None, "entity"), ("entity", None, "item"))
    assert metapath_counts(graph, iei).toarray().tolist() == [
        [1, 0, 1, 0], [0, 0, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]
    ]
    # Random walk u0 -> u1 is 1/2 * 1/2, u1 -> u0 is 1 * 1/2; symmetrised; no self-loops.
    adjacency = metapath_adjacency(graph, uiu).toarray()
    assert adjacency[0, 1] == adjacency[1, 0] == pytest.approx(0.375)
    assert np.all(np.diag(adjacency) == 0) and adjacency[0, 2] == adjacency[2, 0] == 0
    uigiu = (ui, ("item", None, "genre"), ("genre", None, "item"), iu)
    via_genre = metapath_adjacency(graph, uigiu).toarray()
    assert via_genre[0, 1] > 0 and via_genre[0, 2] == 0 and via_genre[1, 2] == 0
    names = [path.name for path in user_metapaths(graph, GraphSettings())]
    assert names == ["U-I-U", "U-I-genre-I-U", "U-I-E-I-U"]  # no co-occurrence edges: dropped
    with pytest.raises(ValueError, match="path back"):
        metapath_adjacency(graph, (ui,))


def test_top_k_per_row_keeps_the_largest_entries():
    matrix = sp.csr_matrix(np.array([[0.1, 0.5, 0.3, 0.0], [0.0, 0.0, 0.2, 0.0]]))
    kept = top_k_per_row(matrix, 2).toarray()
    assert kept.tolist() == [[0.0, 0.5, 0.3, 0.0], [0.0, 0.0, 0.2, 0.0]]


def test_kg_entities_relations_and_pruning():
    dataset = hand_dataset()
    # items 1, 2, 3 link to films f1, f2, f3; e1 is shared by f1 and f2 (listed once in each
    # direction), e2 touches f3 only (pruned), f1 -> f3 is a film-film triple.
    entities = np.array(["f1", "f2", "f3", "e1", "e2"])
    relations = np.array(["film.actor", "actor.film", "film.sequel"])
    kg = np.array([[0, 0, 3], [3, 1, 1], [2, 0, 4], [0, 2, 2]])
    item_entity = np.full(10, -1)
    item_entity[[1, 2, 3]] = [0, 1, 2]
    dataset = replace(dataset, graph_files=GraphFiles(entities, relations, item_entity, kg))
    graph = build_graph(dataset)
    assert graph.nodes["entity"] == 1
    assert graph.relation("item", "entity").toarray()[:4, 0].tolist() == [0, 1, 1, 0]
    assert graph.relation("item", "item", "film.sequel").toarray()[1, 3] == 1
    assert "U-I-E-I-U" in [p.name for p in user_metapaths(graph, GraphSettings())]


# --------------------------------------------------------------------------- HDGI


def planted_dataset(n_communities: int = 4, users_per: int = 12, items_per: int = 10):
    """Users of a community click only items of that community; item text is pure noise, so
    the communities are visible only through the graph."""
    rng = np.random.default_rng(0)
    sessions, users = [], []
    for user in range(n_communities * users_per):
        community = user // users_per
        pool = 1 + community * items_per + np.arange(items_per)
        for _ in range(2):
            sessions.append(rng.choice(pool, size=4, replace=False).tolist())
            users.append(user + 1)
    n_items = 1 + n_communities * items_per
    train = expand(sessions, users)
    valid = expand(sessions[:4], users[:4])
    dataset = SessionDataset("planted", n_items, train, valid, None,
                             item_vectors=unit_vectors(n_items, dim=16, seed=1))
    return dataset, np.arange(n_communities * users_per) // users_per


def nearest_neighbour_accuracy(vectors: np.ndarray, labels: np.ndarray) -> float:
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    return float(np.mean(labels[similarity.argmax(axis=1)] == labels))


def test_dgi_loss_falls_and_personas_separate_planted_communities():
    dataset, community = planted_dataset()
    personas = train_personas(
        dataset, GraphSettings(metapaths=("ui", "cooc")),
        HDGISettings(size=16, epochs=100, lr=0.005), seed=0, use_cache=False, log=lambda line: None,
    )
    losses = personas.losses
    assert losses.min() < 0.5 * losses[0]
    assert np.mean(losses[-10:]) < np.mean(losses[:10])
    order = np.argsort(personas.user_ids)
    learned = nearest_neighbour_accuracy(personas.vectors[order], community)
    random = nearest_neighbour_accuracy(
        np.random.default_rng(0).normal(size=personas.vectors.shape), community
    )
    assert learned >= 0.9 > random + 0.4


def test_personas_are_cached_and_leave_the_global_rng_alone(tmp_path):
    dataset, _ = planted_dataset(2, 6, 6)
    settings = (GraphSettings(metapaths=("ui",)), HDGISettings(size=8, epochs=5))
    state = torch.get_rng_state()
    first = train_personas(dataset, *settings, seed=3, log=lambda line: None)
    assert torch.equal(torch.get_rng_state(), state)
    assert first.source == "trained"
    assert train_personas(dataset, *settings, seed=3, log=lambda line: None).source == "memory"
    hdgi_module._MEMORY.clear()
    lines = []
    again = train_personas(dataset, *settings, seed=3, log=lines.append)
    assert again.source.startswith(str(tmp_path / "cache" / "persona"))
    assert "reused cache" in lines[0]
    np.testing.assert_array_equal(again.vectors, first.vectors)
    np.testing.assert_array_equal(again.user_ids, first.user_ids)
    other = train_personas(dataset, *settings, seed=4, log=lambda line: None)
    assert other.source == "trained" and not np.array_equal(other.vectors, first.vectors)


# --------------------------------------------------------------------------- two stages


def test_candidate_then_rerank_returns_the_rerankers_order_within_the_candidates():
    generator = torch.Generator().manual_seed(0)
    candidate = torch.randn(4, 30, generator=generator) * 5
    rerank = torch.randn(4, 30, generator=generator) * 5
    candidate[:, 0] = rerank[:, 0] = float("-inf")
    n = 8
    scores = two_stage_scores(candidate, rerank, n, mix=1.0)
    assert torch.all(scores[:, 0] == float("-inf")) and torch.isfinite(scores[:, 1:]).all()
    ranking = scores.argsort(dim=1, descending=True)
    for row in range(4):
        chosen = candidate[row].topk(n).indices
        assert set(ranking[row, :n].tolist()) == set(chosen.tolist())
        expected = chosen[rerank[row, chosen].argsort(descending=True)]
        assert ranking[row, :n].tolist() == expected.tolist()
        # Outside the candidates: the candidate model's order, padding last.
        rest = candidate[row].argsort(descending=True)[n:]
        assert ranking[row, n:].tolist() == rest.tolist()
    # mix 0 keeps the candidate order everywhere; any mix keeps candidates above the rest.
    only_candidate = two_stage_scores(candidate, rerank, n, mix=0.0)
    assert torch.equal(
        only_candidate.argsort(dim=1, descending=True), candidate.argsort(dim=1, descending=True)
    )
    half = two_stage_scores(candidate, rerank, n, mix=0.5)
    top = candidate.topk(n, dim=1).indices
    inside = torch.zeros_like(half, dtype=torch.bool).scatter_(1, top, True)
    lowest_candidate = half.masked_fill(~inside, float("inf")).amin(dim=1)
    highest_other = half.masked_fill(inside, float("-inf")).amax(dim=1)
    assert torch.all(lowest_candidate > highest_other)


def synthetic_dataset() -> SessionDataset:
    dataset = make_dataset("tiny", seed=0)
    return dataset.with_item_vectors(unit_vectors(dataset.n_items, dim=12), "random")


def test_persona_model_trains_predicts_and_falls_back_for_unknown_users():
    dataset = synthetic_dataset()
    config = resolve_config({"model": "persona", **SMALL, **FAST_HDGI, "n_candidates": 20})
    with pytest.raises(ValueError, match="build_model_for"):
        build_model(config, dataset.n_items, dataset.item_vectors)
    torch.manual_seed(0)
    model = build_model_for(config, dataset)
    assert isinstance(model, PersonaCORE)
    assert "personas" not in model.state_dict()  # data, not weights
    items = torch.tensor([[1, 2, 3, 0], [4, 0, 0, 0], [5, 6, 7, 8]])
    targets = torch.tensor([4, 5, 9])
    users = torch.tensor([1, 0, 10_000])  # known, unknown, beyond the table
    loss = model(items, targets, users)
    loss.backward()
    assert torch.isfinite(loss)
    for parameter in (model.item_embedding, model.base.item_embedding,
                      model.persona_project.weight):
        assert parameter.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        assert model.known_users(users).tolist() == [True, False, False]
        # The fallback: mean persona of the nearest training users by profile.
        session = torch.nn.functional.normalize(model.unit_semantic[items[1:]].sum(1), dim=1)
        nearest = (session @ model.profiles.T).topk(model.fallback_k, dim=1).indices
        expected = torch.nn.functional.normalize(model.profile_personas[nearest].mean(1), dim=1)
        personas = model.persona_of(items, users)
        torch.testing.assert_close(personas[1:], expected)
        torch.testing.assert_close(personas[0], model.personas[1])
        scores = model.predict(items, users)
    assert scores.shape == (3, dataset.n_items)
    assert torch.all(scores[:, 0] == float("-inf")) and torch.isfinite(scores[:, 1:]).all()


def test_trainer_feeds_users_and_ranks_the_two_stage_scores():
    dataset = synthetic_dataset()
    config = {"model": "persona", **SMALL, **FAST_HDGI, "epochs": 1, "seed": 5,
              "n_candidates": 20, "rerank_mix": 1.0}
    trainer = Trainer(config, dataset, device="cpu", num_threads=1)
    assert trainer.with_users
    items, targets, users = trainer._split_rows("valid").batch(slice(0, 5))
    np.testing.assert_array_equal(users.numpy(), dataset.valid.users[:5])
    metrics = trainer.run_epoch()
    assert 0 <= metrics["valid_mrr_20"] <= metrics["valid_recall_20"] <= 1
    _, ranks, tops = trainer.evaluate_detailed("valid")
    model = trainer.model.eval()
    with torch.no_grad():
        scores = model.predict(*trainer._split_rows("valid").batch(slice(0, 64))[::2])
        candidates = model.candidate_scores(items, users).topk(20, dim=1).indices
    assert tops[:64].tolist() == scores.topk(20, dim=1).indices.tolist()
    # With mix 1 the top 20 are the candidates, in the re-ranker's order.
    assert sorted(tops[0].tolist()) == sorted(candidates[0].tolist())
    # A dataset without users: every row falls back, and the persona model refuses to build.
    plain = replace(dataset, train=replace(dataset.train, users=None))
    with pytest.raises(ValueError, match="no users"):
        Trainer(config, plain, device="cpu", num_threads=1)


def test_persona_groups_label_known_few_and_unknown_rows():
    dataset = hand_dataset()  # training rows: user 1 four, user 2 one, user 0 two
    assert persona_groups(dataset, "valid", few_rows=3).tolist() == ["known"] * 2 + ["unknown"]
    assert persona_groups(dataset, "valid", few_rows=4).tolist() == ["few"] * 2 + ["unknown"]
    assert persona_groups(dataset, "test", few_rows=1).tolist() == ["few", "unknown"]
    assert persona_groups(dataset, "test", few_rows=0).tolist() == ["known", "unknown"]
    without_users = replace(dataset, test=replace(dataset.test, users=None))
    assert persona_groups(without_users, "test").tolist() == ["unknown", "unknown"]


def test_config_switches_validate():
    config = resolve_config({"model": "persona", "mp_cooc": False, "rerank_mix": 1})
    assert config["rerank_mix"] == 1.0 and not config["mp_cooc"]
    off = {key: False for key in ("mp_ui", "mp_cooc", "mp_feature", "mp_kg")}
    with pytest.raises(ValueError, match="metapath"):
        resolve_config({"model": "persona", **off})
    for bad in ({"rerank_mix": 1.5}, {"persona_fusion": "sum"}, {"n_candidates": 0}):
        with pytest.raises(ValueError):
            resolve_config({"model": "persona", **bad})
