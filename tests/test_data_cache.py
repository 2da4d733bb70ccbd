"""The cache store (data.cache): one root, keyed entries of arrays, tensors and JSON records,
atomic writes, and loading that never unpickles."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from data.cache import KEY, CacheStore, cache_root, folder_tag


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CORE_CACHE_DIR", str(tmp_path / "cache"))


def test_one_root_with_a_folder_per_kind(tmp_path, monkeypatch):
    assert cache_root() == tmp_path / "cache"
    assert CacheStore("persona").folder == tmp_path / "cache" / "persona"
    assert CacheStore().folder == tmp_path / "cache"
    assert CacheStore("x", folder=tmp_path / "elsewhere").folder == tmp_path / "elsewhere"
    monkeypatch.delenv("CORE_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "core-hpo"
    assert folder_tag(tmp_path) == folder_tag(tmp_path / "." / "") != folder_tag(tmp_path / "a")


def test_arrays_are_read_back_only_under_their_key(tmp_path):
    store = CacheStore("kind")
    arrays = {"vectors": np.arange(6, dtype=np.float32).reshape(2, 3), "names": np.array(["a"])}
    path = store.write_arrays("entry.npz", "k1", arrays)
    assert path == tmp_path / "cache" / "kind" / "entry.npz"
    found = store.read_arrays("entry.npz", "k1")
    assert set(found) == {"vectors", "names"} and KEY not in found
    np.testing.assert_array_equal(found["vectors"], arrays["vectors"])
    assert store.read_arrays("entry.npz", "k2") is None  # another key: stale
    assert store.read_arrays("missing.npz", "k1") is None
    path.write_bytes(path.read_bytes()[:100])  # damaged
    assert store.read_arrays("entry.npz", "k1") is None
    assert [p.name for p in path.parent.iterdir()] == ["entry.npz"]  # no temporary files


def test_tensors_round_trip_and_pickled_objects_are_never_loaded(tmp_path):
    store = CacheStore("kind")
    state = {"weight": torch.ones(2, 2)}
    store.write_tensors("model.pt", "k", {"state": state, "losses": [0.5, 0.25]})
    found = store.read_tensors("model.pt", "k")
    assert torch.equal(found["state"]["weight"], state["weight"])
    assert found["losses"] == [0.5, 0.25] and KEY not in found
    assert store.read_tensors("model.pt", "other") is None

    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    with open(store.path("evil.pt"), "wb") as file:
        pickle.dump({KEY: "k", "x": Payload()}, file, protocol=2)
    assert store.read_tensors("evil.pt", "k") is None
    with open(store.path("evil.npz"), "wb") as file:
        np.savez(file, **{KEY: np.asarray("k")}, x=np.array([Payload()], dtype=object))
    assert store.read_arrays("evil.npz", "k") is None
    with open(store.path("lone.npz"), "wb") as file:  # an array, not an archive of entries
        np.save(file, np.zeros(3))
    assert store.read_arrays("lone.npz", "k") is None


def test_records_are_merged_atomically(tmp_path):
    store = CacheStore()
    assert store.read_records("timings.json") == {}
    store.write_record("timings.json", "a", 1.5)
    store.write_record("timings.json", "b", {"choice": "dense"})
    assert store.read_records("timings.json") == {"a": 1.5, "b": {"choice": "dense"}}
    store.path("timings.json").write_text("[1, 2")  # damaged: read as empty, then rewritten
    assert store.read_records("timings.json") == {}
    store.write_record("timings.json", "c", 2)
    assert store.read_records("timings.json") == {"c": 2}
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["timings.json"]


def test_an_unwritable_store_writes_nothing(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    store = CacheStore(folder=blocker / "cache")
    assert store.write_arrays("x.npz", "k", {"a": np.zeros(1)}) is None
    assert store.write_tensors("x.pt", "k", {"a": torch.zeros(1)}) is None
    assert store.write_record("x.json", "k", 1) is None
    assert store.read_records("x.json") == {}
