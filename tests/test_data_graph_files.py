"""Graph side files (.link / .kg / .user): parsing in dataset ids, errors naming file and line,
datasets without them, and attaching them to a loaded dataset."""

from __future__ import annotations

import numpy as np
import pytest

from data.atomic import write_dataset
from data.errors import AtomicFormatError
from data.graph_files import attach_graph_files, read_graph_files
from data.resolve import load_dataset
from data.synthetic import make_dataset

LINK = "item_id:token\tentity_id:token\n1\tm.a\n3\tm.c\n"
KG = (
    "head_id:token\trelation_id:token\ttail_id:token\n"
    "m.a\tfilm.actor\tm.x\n"
    "m.x\tactor.film\tm.c\n"
    "m.a\tfilm.sequel\tm.c\n"
)
USER = "user_id:token\tage:token\tgender:token\n2\t24\tF\n1\t53\tM\n"


def write(folder, name="toy", **files):
    folder.mkdir(parents=True, exist_ok=True)
    for ext, text in files.items():
        (folder / f"{name}.{ext}").write_text(text)


def test_files_are_read_in_dataset_ids(tmp_path):
    write(tmp_path, link=LINK, kg=KG, user=USER)
    files = read_graph_files(tmp_path, "toy", n_items=5)
    assert files.n_links == 2
    assert [files.entities[e] if e >= 0 else None for e in files.item_entity] == [
        None, "m.a", None, "m.c", None
    ]
    triples = [(files.entities[h], files.relations[r], files.entities[t]) for h, r, t in files.kg]
    assert triples == [
        ("m.a", "film.actor", "m.x"), ("m.x", "actor.film", "m.c"), ("m.a", "film.sequel", "m.c")
    ]
    assert files.user_fields["gender"].tolist() == ["", "M", "F"]
    assert files.user_fields["age"].tolist() == ["", "53", "24"]


def test_missing_files_are_tolerated(tmp_path):
    assert read_graph_files(tmp_path, "toy", n_items=5) is None
    write(tmp_path, kg=KG)
    files = read_graph_files(tmp_path, "toy", n_items=5)
    assert files.n_links == 0 and len(files.kg) == 3 and files.user_fields == {}


@pytest.mark.parametrize(
    ("ext", "text", "line", "message"),
    [
        ("link", "item_id:token\tentity:token\n1\tm.a\n", 1, "entity_id:token"),
        ("link", LINK + "x\tm.d\n", 4, "not an integer"),
        ("link", LINK + "9\tm.d\n", 4, "not in the dataset's catalog"),
        ("link", LINK + "1\tm.d\n", 4, "item 1 is linked twice"),
        ("link", LINK + "2\tm.a\n", 4, "entity 'm.a' is linked twice"),
        ("kg", KG + "m.a\tfilm.actor\n", 5, "expected 3 tab-separated columns"),
        ("kg", KG + "m.a\t\tm.b\n", 5, "empty relation_id"),
        ("user", USER + "0\t30\tF\n", 4, "not a positive integer"),
        ("user", USER + "2\t30\tF\n", 4, "user 2 is repeated"),
    ],
)
def test_malformed_rows_name_file_and_line(tmp_path, ext, text, line, message):
    write(tmp_path, **{ext: text})
    with pytest.raises(AtomicFormatError, match=message) as info:
        read_graph_files(tmp_path, "toy", n_items=5)
    assert info.value.line == line
    assert info.value.path == str(tmp_path / f"toy.{ext}")


def test_attach_finds_the_files_beside_the_dataset(tmp_path):
    dataset = make_dataset("tiny", seed=0, name="toy")
    write_dataset(dataset, tmp_path / "toy")
    loaded = load_dataset("toy", tmp_path)
    assert attach_graph_files(loaded, tmp_path).graph_files is None  # synthetic: no side files
    write(tmp_path / "toy", link=LINK, kg=KG)
    attached = attach_graph_files(loaded, tmp_path)
    assert attached.graph_files.n_links == 2
    assert len(attached.graph_files.item_entity) == attached.n_items
    # A training tail keeps the files; so does a re-attachment under the tail's name.
    tail = loaded.with_train_tail(100)
    assert attach_graph_files(tail, tmp_path).graph_files.n_links == 2
    assert np.array_equal(
        attached.with_train_tail(100).graph_files.item_entity, attached.graph_files.item_entity
    )
