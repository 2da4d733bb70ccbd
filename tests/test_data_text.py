"""Semantic item vectors (data.text): the real packaged MiniLM, its cache, and dataset wiring."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from data import DataError, load_dataset, text
from data.cache import CacheStore, folder_tag
from data.synthetic import write_atomic
from data.text import TextModelError

REPO = Path(__file__).resolve().parents[1]


class Items:
    """Stand-in for data.items.ItemTable: only the ``texts()`` contract."""

    def __init__(self, texts: list[str]) -> None:
        self._texts = list(texts)

    def texts(self) -> list[str]:
        return list(self._texts)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Caches go to the test's folder, never to ~/.cache."""
    monkeypatch.setenv("CORE_CACHE_DIR", str(tmp_path / "cache"))


def cached(name: str) -> Path:
    """The file of the text-vector cache entry ``name``."""
    return CacheStore(text.TEXT_VECTORS).path(name)


@pytest.fixture(scope="session")
def minilm() -> Path:
    return Path(text.default_text_model())


def fake_vectors(texts, *_args, **_kwargs) -> np.ndarray:
    """Deterministic unit vectors per text (zero for empty), without loading any model."""
    out = np.zeros((len(texts), 8), dtype=np.float32)
    for row, value in enumerate(texts):
        if value.strip():
            seed = int.from_bytes(hashlib.sha256(value.encode()).digest()[:4], "little")
            vector = np.random.default_rng(seed).standard_normal(8)
            out[row] = vector / np.linalg.norm(vector)
    return out


@pytest.fixture
def encoder_calls(monkeypatch) -> list[list[str]]:
    """Replace the encoder with ``fake_vectors``; the list records each call's texts."""
    calls: list[list[str]] = []

    def encode(texts, *args, **kwargs):
        calls.append(list(texts))
        return fake_vectors(texts)

    monkeypatch.setattr(text, "encode_texts", encode)
    return calls


@pytest.fixture
def model_copy(minilm, tmp_path) -> Path:
    """The packaged model's files under another path: weights linked, small files copied."""
    copy = tmp_path / "model-copy"
    for source in minilm.rglob("*"):
        target = copy / source.relative_to(minilm)
        if source.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif source.stat().st_size > 1_000_000:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(source)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return copy


def fake_model(folder: Path) -> Path:
    """A minimal folder that passes the structural check (for tests that never load it)."""
    folder.mkdir(parents=True)
    (folder / "modules.json").write_text(json.dumps([{"idx": 0, "path": "", "type": "x"}]))
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"weights-0")
    return folder


# --------------------------------------------------------------------------- the real model


def test_minilm_gives_384_dim_unit_rows_and_zero_rows_for_empty_text(minilm):
    texts = ["", "Toy Story (1995)", "   ", "GoldenEye (1995)", "Four Rooms (1995)"]
    vectors = text.encode_texts(texts, minilm, show_progress=False)
    assert vectors.shape == (5, 384) and vectors.dtype == np.float32
    assert np.isfinite(vectors).all()
    assert not vectors[[0, 2]].any()  # empty and whitespace-only: exactly zero
    np.testing.assert_allclose(np.linalg.norm(vectors[[1, 3, 4]], axis=1), 1.0, atol=1e-5)
    assert Path(text.default_text_model()) == minilm  # the default is the packaged model


def test_close_texts_are_closer_than_unrelated_ones(minilm):
    star_wars, star_trek, cooking = text.encode_texts(
        [
            "Star Wars (1977) sci-fi space adventure",
            "Star Trek: First Contact (1996) science fiction",
            "Mastering the Art of French Cooking (cookbook)",
        ],
        show_progress=False,
    )
    # measured: 0.43 between the two sci-fi titles, 0.06 and 0.10 to the cookbook
    assert star_wars @ star_trek > star_wars @ cooking + 0.2
    assert star_wars @ star_trek > star_trek @ cooking + 0.2


def test_loading_and_encoding_open_no_network_connection(minilm, monkeypatch):
    attempts = []

    def refuse(*args, **_kwargs):
        attempts.append(args)
        raise OSError("network blocked by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    before = {name: os.environ.get(name) for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    vectors = text.encode_texts(["Heat (1995)"], minilm, device="cpu", show_progress=False)
    assert vectors.shape == (1, 384) and attempts == []
    after = {name: os.environ.get(name) for name in before}
    assert after == before  # offline mode was switched on for the load only


def test_cache_is_written_then_reused_without_encoding(minilm, tmp_path, monkeypatch):
    texts = ["", "Twelve Monkeys (1995)", "", "Babe (1995)"]
    calls = []
    real_encode = text.encode_texts

    def counting(*args, **kwargs):
        calls.append(args[0])
        return real_encode(*args, **kwargs)

    monkeypatch.setattr(text, "encode_texts", counting)
    lines: list[str] = []
    first = text.item_vectors(
        texts, minilm, cache_name="toy.npz", show_progress=False, log=lines.append,
    )
    assert len(calls) == 1 and cached("toy.npz").is_file()
    assert cached("toy.npz").parent == tmp_path / "cache" / "text-vectors"
    assert "encoded 2 item texts (2 empty -> zero vectors)" in lines[0]
    assert re.search(r" on (cpu|cuda\S*) in [0-9.]+ s; cached at ", lines[0])

    def refuse(*_args, **_kwargs):
        raise AssertionError("encoded again although the cache is valid")

    monkeypatch.setattr(text, "encode_texts", refuse)
    second = text.item_vectors(texts, minilm, cache_name="toy.npz", log=lines.append)
    np.testing.assert_array_equal(first, second)
    assert f"reused cache {cached('toy.npz')}" in lines[1]


# --------------------------------------------------------------------------- cache validity


def test_changing_one_text_rebuilds_the_cache(minilm, tmp_path, encoder_calls):
    texts = ["", "Toy Story (1995)", "GoldenEye (1995)"]
    first = text.item_vectors(texts, minilm, cache_name="c.npz")
    changed = ["", "Toy Story (1995)", "GoldenEye (1995) - a James Bond film"]
    second = text.item_vectors(changed, minilm, cache_name="c.npz")
    assert len(encoder_calls) == 2
    np.testing.assert_array_equal(first[1], second[1])
    assert not np.allclose(first[2], second[2])
    third = text.item_vectors(changed, minilm, cache_name="c.npz")
    assert len(encoder_calls) == 2 and np.array_equal(second, third)


def test_model_content_not_its_path_decides_reuse(minilm, model_copy, tmp_path, encoder_calls):
    texts = ["", "Toy Story (1995)"]
    cache = {"cache_name": "c.npz"}
    text.item_vectors(texts, minilm, **cache)
    text.item_vectors(texts, model_copy, **cache)  # same files elsewhere: same model
    assert len(encoder_calls) == 1
    config = model_copy / "sentence_bert_config.json"
    settings = json.loads(config.read_text())
    config.write_text(json.dumps({**settings, "max_seq_length": 128}))
    text.item_vectors(texts, model_copy, **cache)
    assert len(encoder_calls) == 2
    text.item_vectors(texts, minilm, **cache)  # and back: the original model is another key
    assert len(encoder_calls) == 3


def test_fingerprint_follows_file_content_and_names_not_times(tmp_path):
    folder = fake_model(tmp_path / "model")
    weights = folder / "model.safetensors"
    original = text.model_fingerprint(folder)
    os.utime(weights, ns=(1, 1))
    assert text.model_fingerprint(folder) == original  # touched only
    weights.write_bytes(b"weights-1")  # same size, other bytes
    edited = text.model_fingerprint(folder)
    assert edited != original
    (folder / "config.json").rename(folder / "config2.json")
    assert text.model_fingerprint(folder) not in (original, edited)


@pytest.mark.parametrize("damage", [b"", b"not a zip at all", "truncate", "wrong-rows"])
def test_damaged_or_mismatched_cache_is_rebuilt_never_used(tmp_path, encoder_calls, damage):
    model = fake_model(tmp_path / "model")
    texts = ["", "a", "b"]
    path = cached("c.npz")
    good = text.item_vectors(texts, model, cache_name="c.npz")
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:200])
    elif damage == "wrong-rows":  # the right key on vectors of the wrong shape
        with np.load(path) as stored:
            key = stored["key"]
        np.savez(path, vectors=np.zeros((2, 8), np.float32), key=key)
    else:
        path.write_bytes(damage)
    rebuilt = text.item_vectors(texts, model, cache_name="c.npz")
    assert len(encoder_calls) == 2 and np.array_equal(good, rebuilt)
    text.item_vectors(texts, model, cache_name="c.npz")
    assert len(encoder_calls) == 2  # the rewritten cache is valid again


def test_an_unwritable_cache_encodes_each_time_and_warns(tmp_path, encoder_calls, monkeypatch):
    model = fake_model(tmp_path / "model")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("CORE_CACHE_DIR", str(blocker / "cache"))  # no folder can be made there
    lines: list[str] = []
    for _ in range(2):
        with pytest.warns(UserWarning, match="set CORE_CACHE_DIR"):
            text.item_vectors(["", "a"], model, cache_name="c.npz", log=lines.append)
    assert len(encoder_calls) == 2 and "NOT cached (no writable folder)" in lines[-1]
    assert not list(tmp_path.rglob("*.npz")) and not list(tmp_path.rglob(".*tmp"))


def test_two_processes_building_the_same_cache_at_once(tmp_path):
    model = fake_model(tmp_path / "model")
    meeting = tmp_path.parent / f"{tmp_path.name}-meeting"
    meeting.mkdir()
    script = textwrap.dedent(
        f"""
        import os, sys, time
        from pathlib import Path
        sys.path.insert(0, {str(REPO)!r})
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from data import text
        from test_data_text import fake_vectors

        meeting = Path({str(meeting)!r})

        def together(texts, *args, **kwargs):
            # A barrier: each process is inside the encoder (it missed the cache) until both
            # are, so both certainly encode and write the cache.
            (meeting / str(os.getpid())).touch()
            deadline = time.monotonic() + 60
            while len(list(meeting.iterdir())) < 2:
                assert time.monotonic() < deadline, "the other process never arrived"
                time.sleep(0.05)  # polling interval
            print("encoded", flush=True)
            return fake_vectors(texts)

        text.encode_texts = together
        texts = [""] + [f"item {{i}}" for i in range(1, 2000)]
        vectors = text.item_vectors(texts, {str(model)!r}, cache_name="c.npz")
        print(vectors.sum(), flush=True)
        """
    )
    store = tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": str(REPO), "CORE_CACHE_DIR": str(store)}
    runs = [
        subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=120)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0]
    assert all("encoded" in output for output in outputs)  # both missed the cache
    assert outputs[0].split()[-1] == outputs[1].split()[-1]
    folder = store / text.TEXT_VECTORS
    assert sorted(p.name for p in folder.iterdir()) == ["c.npz"]  # no temp files
    with np.load(folder / "c.npz") as stored:
        assert stored["vectors"].shape == (2000, 8)


# --------------------------------------------------------------------------- errors


def test_missing_or_invalid_model_folder_is_refused_naming_it(tmp_path, encoder_calls):
    missing = tmp_path / "no-such-model"
    with pytest.raises(TextModelError, match=f"text model {missing} does not exist"):
        text.check_text_model(missing)
    with pytest.raises(TextModelError, match="does not exist"):
        text.item_vectors(["", "a"], missing, cache_name="c.npz")
    assert encoder_calls == []  # refused before any encoding
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TextModelError, match=rf"{empty} is not a sentence-transformers .*modules"):
        text.check_text_model(empty)
    assert issubclass(TextModelError, DataError)


def test_real_encoder_refuses_a_missing_model_before_loading(tmp_path):
    with pytest.raises(TextModelError, match=str(tmp_path / "gone")):
        text.encode_texts(["a"], tmp_path / "gone")


# --------------------------------------------------------------------------- datasets


@pytest.fixture
def toy_dir(tmp_path) -> Path:
    root = tmp_path / "datasets"
    write_atomic(root / "toy", name="toy", preset="tiny", seed=0)
    return root


def with_texts(dataset, texts):
    return replace(dataset, items=None if texts is None else Items(texts))


def test_dataset_without_item_text_is_refused_clearly(toy_dir, encoder_calls):
    dataset = load_dataset("toy", toy_dir)
    with pytest.raises(DataError, match=r"dataset 'toy' has no item text \(toy.item not found"):
        text.attach_item_vectors(with_texts(dataset, None), toy_dir)
    blank = with_texts(dataset, [""] * dataset.n_items)
    with pytest.raises(DataError, match="has no item text .*semantic variants"):
        text.attach_item_vectors(blank, toy_dir)
    short = with_texts(dataset, ["", "a"])
    with pytest.raises(DataError, match="2 texts for a catalog"):
        text.attach_item_vectors(short, toy_dir)
    assert encoder_calls == []


def test_attach_caches_per_dataset_folder_and_a_tail_cut_reuses_it(
    minilm, toy_dir, encoder_calls
):
    dataset = load_dataset("toy", toy_dir)
    texts = [""] + [f"item {i}" if i % 3 else "" for i in range(1, dataset.n_items)]
    lines: list[str] = []
    full = text.attach_item_vectors(with_texts(dataset, texts), toy_dir, log=lines.append)
    assert full.item_vectors.shape == (dataset.n_items, 8) and full.text_model == str(minilm)
    assert not full.item_vectors[0].any() and not full.item_vectors[3].any()
    cache = cached(f"toy.all-MiniLM-L6-v2.{folder_tag(toy_dir / 'toy')}.npz")
    assert cache.is_file() and len(encoder_calls) == 1
    assert not list(toy_dir.rglob("*.npz"))  # nothing beside the data

    cut = with_texts(dataset, texts).with_train_tail(5)
    assert cut.name == "toy-last5"
    attached = text.attach_item_vectors(cut, toy_dir, log=lines.append)
    assert len(encoder_calls) == 1 and f"reused cache {cache}" in lines[-1]
    np.testing.assert_array_equal(attached.item_vectors, full.item_vectors)
    assert len(attached.train) == 5


def test_attach_on_generated_synthetic_data_caches_for_its_folder(tmp_path, encoder_calls):
    dataset = load_dataset("synthetic-tiny", tmp_path)
    texts = ["stray padding text"] + [f"synthetic item {i}" for i in range(1, dataset.n_items)]
    attached = text.attach_item_vectors(with_texts(dataset, texts), tmp_path)
    assert attached.item_vectors.shape[0] == dataset.n_items
    assert not attached.item_vectors[0].any() and attached.item_vectors[1:].all(axis=1).any()
    assert encoder_calls[0][0] == ""  # the padding row is never encoded
    tag = folder_tag(tmp_path / "synthetic-tiny")
    assert cached(f"synthetic-tiny.all-MiniLM-L6-v2.{tag}.npz").is_file()


# --------------------------------------------------------------------------- extraction


def _packaged_listing() -> dict[str, int]:
    with zipfile.ZipFile(text._packaged_zip()) as archive:
        return {i.filename: i.file_size for i in archive.infolist() if not i.is_dir()}


def test_first_use_extracts_once_safely_with_a_read_only_home_and_two_processes(tmp_path):
    home = tmp_path / "home-is-a-file"
    home.write_text("")  # nothing can be created under it, not even by root
    cache_root = tmp_path / "core-cache"
    env = {**os.environ, "HOME": str(home), "CORE_CACHE_DIR": str(cache_root),
           "PYTHONPATH": str(REPO)}
    script = "from data import text; print('PATH', text.default_text_model())"
    runs = [
        subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=300)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0]
    paths = {line.split(" ", 1)[1] for out in outputs for line in out.splitlines()
             if line.startswith("PATH ")}
    assert len(paths) == 1
    folder = Path(paths.pop())
    assert folder.is_relative_to(cache_root) and folder.name == "all-MiniLM-L6-v2"
    for name, size in _packaged_listing().items():
        assert (folder / name).stat().st_size == size
    assert [p.name for p in folder.parent.iterdir()] == ["all-MiniLM-L6-v2"]  # no staging left
    assert not any("model package loaded" in out for out in outputs)  # its print is silenced
    assert text.model_fingerprint(folder) == text.model_fingerprint(text.default_text_model())


def test_a_partial_package_folder_is_never_handed_out_nor_replaced(tmp_path, monkeypatch):
    home = tmp_path / "home"
    partial = home / ".cache" / "all-MiniLM-L6-v2" / "all-MiniLM-L6-v2"
    partial.mkdir(parents=True)
    (partial / "config.json").write_text("{}")  # an interrupted (or running) extraction
    monkeypatch.setenv("HOME", str(home))
    folder = Path(text.default_text_model())
    assert folder != partial and folder.is_relative_to(tmp_path / "cache")
    assert text.check_text_model(folder) == folder.resolve()
    listing = _packaged_listing()
    assert (folder / "model.safetensors").stat().st_size == listing["model.safetensors"]
    # The loser of a concurrent first use finds a complete folder in place and keeps it ...
    text._extract(text._packaged_zip(), folder, listing)
    assert [p.name for p in folder.parent.iterdir()] == ["all-MiniLM-L6-v2"]
    # ... but never renames anything over a partial folder (someone may be writing it).
    with pytest.raises(OSError):
        text._extract(text._packaged_zip(), partial, listing)
    assert [p.name for p in partial.parent.iterdir()] == ["all-MiniLM-L6-v2"]
    assert [p.name for p in partial.iterdir()] == ["config.json"]


def test_without_home_or_cache_dir_the_model_goes_to_a_private_temp_folder(tmp_path, monkeypatch):
    home = tmp_path / "home-is-a-file"
    home.write_text("")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("CORE_CACHE_DIR")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    folder = Path(text.default_text_model())
    private = tmp_path / "tmp" / f"core-hpo-{os.getuid()}"
    assert folder.is_relative_to(private) and private.stat().st_mode & 0o777 == 0o700
    assert text.check_text_model(folder) == folder.resolve()
