"""Item metadata (``<name>.item``): parsing, texts, errors with file and line, and loading."""

from __future__ import annotations

import pickle
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import data
from data.atomic import HEADER as INTER_HEADER
from data.atomic import load_atomic, write_dataset
from data.items import ItemTable, read_item_file, write_item_file

HEADER = "item_id:token\ttitle:token_seq\tyear:token\tgenres:token_seq"
ROWS = [
    "3\tToy Story\t1995\tAnimation Comedy",
    "1\tHeat\t1995\tAction Crime",
    "8\tBabe\t\tChildren's",  # no year
]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CORE_CACHE_DIR", str(tmp_path / "fallback-cache"))


def write_small(folder: Path) -> Path:
    """toy.{train,valid,test}.inter over items 1..8 (catalog size 9)."""
    folder.mkdir(parents=True, exist_ok=True)
    splits = {"train": ["1 2\t3", "4 5 6\t7", "2 3\t8"], "valid": ["3\t1"], "test": ["7\t8"]}
    for split, rows in splits.items():
        lines = [INTER_HEADER, *(f"{i}\t{row}" for i, row in enumerate(rows, 1))]
        (folder / f"toy.{split}.inter").write_text("\n".join(lines) + "\n")
    return folder


def write_items(path: Path, lines: list[str], header: str = HEADER) -> Path:
    path.write_text("\n".join([header, *lines]) + "\n", encoding="utf-8")
    return path


def test_reads_fields_by_dataset_id_and_leaves_missing_items_empty(tmp_path):
    table = read_item_file(write_items(tmp_path / "toy.item", ROWS), n_items=9)
    assert table.types == {"title": "token_seq", "year": "token", "genres": "token_seq"}
    assert list(table.fields) == ["title", "year", "genres"]  # file order
    assert table.n_items == 9 and all(len(values) == 9 for values in table.fields.values())
    assert table.fields["title"][3] == "Toy Story" and table.fields["title"][1] == "Heat"
    assert table.fields["year"][8] == "" and table.fields["genres"][8] == "Children's"
    texts = table.texts()
    assert len(texts) == 9 and texts[0] == ""
    assert texts[3] == "Toy Story | 1995 | Animation Comedy"
    assert texts[8] == "Babe | Children's"  # the empty year is skipped, not left as "| |"
    assert texts[2] == texts[5] == ""  # no row
    assert table.texts(["genres", "title"])[1] == "Action Crime | Heat"
    assert table.has_text and table.items_with_text() == 3


def test_float_fields_are_kept_but_are_not_text(tmp_path):
    path = write_items(tmp_path / "toy.item", ["2\t4.5\tHeat", "1\t\tBabe"],
                       header="item_id:token\tscore:float\ttitle:token_seq")
    table = read_item_file(path, n_items=3)
    assert table.types == {"score": "float", "title": "token_seq"}
    assert table.texts() == ["", "Babe", "Heat"]
    assert table.fields["score"][2] == "4.5"


def test_id_column_may_be_anywhere_and_crlf_and_bom_are_accepted(tmp_path):
    path = tmp_path / "toy.item"
    path.write_bytes("\ufefftitle:token_seq\titem_id:token\r\nHeat\t2\r\n".encode())
    assert read_item_file(path, n_items=3).texts() == ["", "", "Heat"]


def test_a_table_without_text_values_has_no_text():
    table = ItemTable.from_columns(4, [2], {"title": [""]}, {"title": "token_seq"})
    assert not table.has_text and table.texts() == ["", "", "", ""]
    with pytest.raises(data.DataError, match="unknown item field"):
        table.texts(["plot"])


BAD_FILES = [
    pytest.param("title:token_seq\tyear:token", ["Heat\t1995"], 1,
                 "no 'item_id:token' column", id="no-id-column"),
    pytest.param("item_id:float\ttitle:token_seq", ["1\tHeat"], 1,
                 "no 'item_id:token' column", id="id-column-wrong-type"),
    pytest.param("item_id:token\tscore:float", ["1\t2.5"], 1, "no text column", id="no-text"),
    pytest.param("item_id:token", ["1"], 1, "no text column", id="only-ids"),
    pytest.param("item_id:token\ttitle", ["1\tHeat"], 1, "is not 'name:type'", id="no-type"),
    pytest.param("item_id:token\tv:float_seq\tt:token", ["1\t1 2\tx"], 1,
                 "type 'float_seq' is not one of", id="unsupported-type"),
    pytest.param("item_id:token\tt:token\tt:token_seq", ["1\ta\tb"], 1,
                 "repeats the field 't'", id="repeated-field"),
    pytest.param(HEADER, [*ROWS[:2], "x7\tAlien\t1979\tHorror"], 4,
                 "item id 'x7' is not an integer", id="id-not-integer"),
    pytest.param(HEADER, [*ROWS[:1], "-2\tAlien\t1979\tHorror"], 3,
                 "item id '-2' is not an integer", id="negative-id"),
    pytest.param(HEADER, [*ROWS, "0\tAlien\t1979\tHorror"], 5, "reserved for padding",
                 id="id-zero"),
    pytest.param(HEADER, [*ROWS[:2], "9\tAlien\t1979\tHorror", *ROWS[2:]], 4,
                 "item id 9 is not in the dataset's catalog (ids 1..8)", id="id-not-in-catalog"),
    pytest.param(HEADER, [*ROWS, "3\tToy Story 2\t1999\tComedy"], 5,
                 "duplicate item id 3 (first on line 2)", id="duplicate-id"),
    pytest.param(HEADER, [*ROWS[:1], "2\tAlien\t1979"], 3,
                 "expected 4 tab-separated columns, found 3", id="too-few-columns"),
    pytest.param(HEADER, [*ROWS, "2\tAlien\t1979\tHorror\textra"], 5,
                 "expected 4 tab-separated columns, found 5", id="too-many-columns"),
    pytest.param(HEADER, [*ROWS[:1], "", *ROWS[1:]], 3, "found 1", id="blank-line"),
    pytest.param("item_id:token\tscore:float\tt:token", ["1\t2.5\ta", "2\thigh\tb"], 3,
                 "field 'score' value 'high' is not a number", id="float-not-a-number"),
]


@pytest.mark.parametrize("header, lines, line, message", BAD_FILES)
def test_bad_item_file_names_file_and_line(tmp_path, header, lines, line, message):
    path = write_items(tmp_path / "toy.item", lines, header=header)
    with pytest.raises(data.AtomicFormatError) as caught:
        read_item_file(path, n_items=9)
    assert caught.value.line == line and caught.value.path == str(path)
    assert str(caught.value).startswith(f"{path}:{line}: ")
    assert message in caught.value.problem


def test_bytes_that_are_not_utf8_name_their_line(tmp_path):
    path = tmp_path / "toy.item"
    body = "\n".join([HEADER, *ROWS[:2]]).encode() + "\n4\tAm\xe9lie\t2001\tComedy\n".encode(
        "latin-1"
    )
    path.write_bytes(body)
    with pytest.raises(data.AtomicFormatError, match=r"toy.item:4: bytes b'\\xe9lie' are not"):
        read_item_file(path, n_items=9)


def test_the_earliest_bad_line_is_reported(tmp_path):
    lines = [*ROWS[:1], "3\tdup\t1\tx", "99\tAlien\t1979\tHorror"]
    with pytest.raises(data.AtomicFormatError, match=r"toy.item:3: duplicate item id 3"):
        read_item_file(write_items(tmp_path / "toy.item", lines), n_items=9)


def test_write_then_read_round_trips(tmp_path):
    table = read_item_file(write_items(tmp_path / "a.item", ROWS), n_items=9)
    path = write_item_file(tmp_path / "b.item", table)
    lines = path.read_text().splitlines()
    assert lines[0] == HEADER
    assert lines[1:] == ["1\tHeat\t1995\tAction Crime", "3\tToy Story\t1995\tAnimation Comedy",
                         "8\tBabe\t\tChildren's"]  # id order
    again = read_item_file(path, n_items=9)
    assert again.types == table.types and again.texts() == table.texts()
    assert not list(tmp_path.glob(".*tmp"))


def test_writing_a_value_with_a_tab_is_refused(tmp_path):
    table = ItemTable.from_columns(3, [1], {"title": ["a\tb"]}, {"title": "token"})
    with pytest.raises(data.DataError, match="contains a tab or line break"):
        write_item_file(tmp_path / "x.item", table)
    assert not (tmp_path / "x.item").exists()


def test_load_attaches_items_only_when_the_file_exists(tmp_path):
    write_small(tmp_path)  # catalog: ids 1..8
    assert load_atomic(tmp_path, "toy").items is None
    write_items(tmp_path / "toy.item", ROWS)
    dataset = data.load_dataset("toy", tmp_path)
    assert dataset.items.n_items == dataset.n_items == 9
    assert dataset.items.texts()[3] == "Toy Story | 1995 | Animation Comedy"
    assert pickle.loads(pickle.dumps(dataset)).items.texts() == dataset.items.texts()


def test_an_edited_item_file_is_seen_on_the_next_load(tmp_path):
    write_small(tmp_path)
    write_items(tmp_path / "toy.item", ROWS)
    assert load_atomic(tmp_path, "toy").items.texts()[1].startswith("Heat")
    write_items(tmp_path / "toy.item", ["1\tRonin\t1998\tAction"])
    assert load_atomic(tmp_path, "toy").items.texts()[1] == "Ronin | 1998 | Action"


def test_a_bad_item_file_stops_loading_with_file_and_line(tmp_path):
    write_small(tmp_path)
    write_items(tmp_path / "toy.item", [*ROWS, "12\tAlien\t1979\tHorror"])
    with pytest.raises(data.AtomicFormatError, match=r"toy.item:5: item id 12 is not in"):
        data.load_dataset("toy", tmp_path)


def test_write_dataset_writes_the_items_and_drops_a_stale_file(tmp_path):
    write_small(tmp_path / "src")
    write_items(tmp_path / "src" / "toy.item", ROWS)
    dataset = load_atomic(tmp_path / "src", "toy")
    paths = write_dataset(dataset, tmp_path / "out")
    assert paths[-1] == tmp_path / "out" / "toy.item"
    assert load_atomic(tmp_path / "out", "toy").items.texts() == dataset.items.texts()
    write_dataset(replace(dataset, items=None), tmp_path / "out")
    assert not (tmp_path / "out" / "toy.item").exists()
    assert load_atomic(tmp_path / "out", "toy").items is None


def test_a_40k_item_file_parses_every_row(tmp_path):
    # Its speed against pandas reading the same file: benchmarks/bench_load.py.
    n = 40_000
    lines = [f"{i}\tItem number {i} with a title\t{1900 + i % 120}\tDrama Comedy" for i in
             range(1, n)]
    path = write_items(tmp_path / "big.item", lines)
    table = read_item_file(path, n_items=n)
    texts = table.texts()
    year = 1900 + (n - 1) % 120
    assert texts[n - 1] == f"Item number {n - 1} with a title | {year} | Drama Comedy"
    assert texts[1] == "Item number 1 with a title | 1901 | Drama Comedy"
    assert np.all(table.fields["title"][1:] != "")
