"""DatasetSource: what the semantic variants need of a dataset is checked before anything runs,
and loading attaches the item vectors (real packaged MiniLM) when asked."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from data import DataError, DatasetSource
from data.atomic import write_dataset
from data.synthetic import make_dataset
from data.text import TextModelError


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CORE_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def tiny():
    return make_dataset("tiny", seed=0, name="shop")


def write(root, dataset, with_items: bool = True):
    write_dataset(dataset if with_items else replace(dataset, items=None), root / dataset.name)
    return DatasetSource(dataset.name, root)


def test_a_dataset_without_item_text_is_refused_for_semantic_variants_only(tmp_path, tiny):
    source = write(tmp_path, tiny, with_items=False)
    source.check()  # fine for the other variants
    with pytest.raises(DataError, match=r"no item text: .*shop\.item not found"):
        source.check(item_vectors=True)


def test_an_item_file_without_any_text_is_refused(tmp_path, tiny):
    fields = {name: np.full(tiny.n_items, "", dtype=object) for name in tiny.items.fields}
    source = write(tmp_path, replace(tiny, items=replace(tiny.items, fields=fields)))
    with pytest.raises(DataError, match="no item has any text"):
        source.check(item_vectors=True)


def test_a_missing_text_model_is_refused_before_anything_loads(tmp_path, tiny):
    source = replace(write(tmp_path, tiny), text_model=str(tmp_path / "no-such-model"))
    with pytest.raises(TextModelError, match="no-such-model"):
        source.check(item_vectors=True)


def test_load_attaches_item_vectors_from_the_packaged_model(tmp_path, tiny):
    source = write(tmp_path, tiny)
    source.check(item_vectors=True)
    plain = source.load()
    assert plain.item_vectors is None
    dataset = replace(source, train_rows=100).load(item_vectors=True)
    assert len(dataset.train) == 100
    assert dataset.item_vectors.shape == (tiny.n_items, 384)
    assert not dataset.item_vectors[0].any()  # padding
    with_text = np.array([bool(t) for t in tiny.items.texts()])
    norms = np.linalg.norm(dataset.item_vectors[with_text], axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-4)
    assert "MiniLM" in dataset.text_model
