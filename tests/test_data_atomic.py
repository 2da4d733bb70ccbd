"""Atomic-file loader: parsing, validation messages, cache behaviour and name resolution."""

from __future__ import annotations

import os
import pickle
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import data
from data import atomic, cache, synthetic
from data.atomic import HEADER, format_split, load_atomic, write_dataset
from data.dataset import Split
from data.fileio import write_atomically

TRAIN = [("1 2", 3), ("1", 2), ("4 5 6", 7), ("4 5", 6), ("4", 5), ("2 3", 8)]
VALID = [("3 1", 2), ("3", 1)]
TEST = [("7 8", 6), ("7", 8)]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Caches go to the test's folder, never to ~/.cache."""
    monkeypatch.setenv("CORE_CACHE_DIR", str(tmp_path / "cache"))


def cached(folder: Path, name: str = "toy") -> Path:
    """The cache entry of the dataset ``name`` parsed from ``folder``."""
    return cache.CacheStore("datasets").path(f"{name}.{cache.folder_tag(folder)}.npz")


def write_split(path: Path, rows, header: str = HEADER) -> Path:
    lines = [header] + [f"{i + 1}\t{prefix}\t{target}" for i, (prefix, target) in enumerate(rows)]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_small(folder: Path, name: str = "toy", **replace_rows) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split, rows in {"train": TRAIN, "valid": VALID, "test": TEST, **replace_rows}.items():
        write_split(folder / f"{name}.{split}.inter", rows)
    return folder


def test_loads_padded_matrix_lengths_targets_and_catalog_size(tmp_path):
    dataset = load_atomic(write_small(tmp_path), "toy")
    assert dataset.name == "toy" and dataset.n_items == 9  # max id 8 + padding row
    train = dataset.train
    assert train.prefixes.dtype == np.int32 and train.lengths.dtype == np.int32
    assert train.targets.dtype == np.int64 and train.prefixes.shape == (6, 50)
    assert train.prefixes[2, :4].tolist() == [4, 5, 6, 0] and train.lengths[2] == 3
    assert train.targets.tolist() == [3, 2, 7, 6, 5, 8]
    assert dataset.test.prefixes[0, :2].tolist() == [7, 8]


def test_long_prefix_keeps_its_last_50_items(tmp_path):
    long_prefix = " ".join(str(i) for i in range(1, 61))
    write_small(tmp_path, train=[*TRAIN, (long_prefix, 3)])
    row = load_atomic(tmp_path, "toy").train.subset(slice(6, 7))
    assert row.lengths[0] == 50 and row.prefixes[0].tolist() == list(range(11, 61))


def test_written_files_round_trip_and_match_core_layout(tmp_path):
    dataset = synthetic.make_dataset("tiny", seed=1, name="syn")
    paths = write_dataset(dataset, tmp_path)
    loaded = load_atomic(tmp_path, "syn", use_cache=False)
    assert loaded.n_items == dataset.n_items
    for split in ("train", "valid", "test"):
        for field in ("prefixes", "lengths", "targets"):
            np.testing.assert_array_equal(
                getattr(loaded.split(split), field), getattr(dataset.split(split), field)
            )
    # session ids number the rows across splits, as in CORE's files
    first_valid = paths[1].read_text().splitlines()[1].split("\t")[0]
    assert int(first_valid) == len(dataset.train) + 1


def test_format_split_text_is_exact():
    split = Split.from_rows([[4, 5, 6], [4]], [7, 5])
    assert format_split(split, first_id=10) == f"{HEADER}\n10\t4 5 6\t7\n11\t4\t5\n"


BAD_TRAIN = [
    pytest.param([*TRAIN[:2], ("1 x", 3)], 4, "'x' is not an integer", id="non-integer-prefix"),
    pytest.param([*TRAIN[:3], ("1 2", "3.5")], 5, "'3.5' is not an integer", id="non-int-target"),
    pytest.param([*TRAIN[:1], ("", 3)], 3, "empty prefix", id="empty-prefix"),
    pytest.param([*TRAIN[:2], ("1 0 2", 3)], 4, "reserved for padding", id="zero-in-prefix"),
    pytest.param([*TRAIN, ("1 2", 0)], 8, "reserved for padding", id="zero-target"),
    pytest.param([*TRAIN[:4], ("1 -2", 3)], 6, "negative item id '-2'", id="negative"),
    pytest.param([("1 2", "3\t4"), *TRAIN], 2, "found 4", id="four-columns"),
    pytest.param([*TRAIN, ("1 2", "3 4")], 8, "one id, found 2", id="two-targets"),
    pytest.param([*TRAIN, ("1", "99999999999")], 8, "too large", id="id-too-large"),
]


@pytest.mark.parametrize("rows, line, message", BAD_TRAIN)
def test_malformed_rows_report_file_and_line(tmp_path, rows, line, message):
    write_small(tmp_path, train=rows)
    with pytest.raises(data.AtomicFormatError, match=message) as caught:
        load_atomic(tmp_path, "toy")
    assert f"toy.train.inter:{line}:" in str(caught.value)
    assert caught.value.line == line
    assert not list(tmp_path.rglob("*.npz")) and not list(tmp_path.rglob(".*tmp"))


def test_two_column_row_reports_its_line(tmp_path):
    write_small(tmp_path)
    path = tmp_path / "toy.valid.inter"
    path.write_text(path.read_text() + "9\t1 2\n")
    with pytest.raises(data.AtomicFormatError, match=r"toy.valid.inter:4: expected 3 .*found 2"):
        load_atomic(tmp_path, "toy")


def test_earliest_error_in_the_file_wins(tmp_path):
    write_small(tmp_path, train=[*TRAIN[:2], ("1 a", 3), ("1 2", "3\t9")])
    with pytest.raises(data.AtomicFormatError, match=r"train.inter:4: item id 'a'"):
        load_atomic(tmp_path, "toy")
    write_small(tmp_path, train=[*TRAIN[:2], ("1 2", "3\t9"), ("1 a", 3)])
    with pytest.raises(data.AtomicFormatError, match=r"train.inter:4: expected 3"):
        load_atomic(tmp_path, "toy")


def test_wrong_header_is_line_1(tmp_path):
    write_small(tmp_path)
    write_split(tmp_path / "toy.test.inter", TEST, header="session_id\titem_id_list\titem_id")
    with pytest.raises(data.AtomicFormatError, match=r"toy.test.inter:1: wrong header"):
        load_atomic(tmp_path, "toy")


def test_item_outside_training_catalog_is_reported(tmp_path):
    write_small(tmp_path, test=[*TEST, ("7 9", 6), ("10", 7)])  # 9 and 10 never occur in train
    with pytest.raises(data.AtomicFormatError, match=r"toy.test.inter:4: item id 9 does not occur"):
        load_atomic(tmp_path, "toy")


def test_missing_split_file(tmp_path):
    write_small(tmp_path)
    (tmp_path / "toy.valid.inter").unlink()
    with pytest.raises(data.AtomicFormatError, match="toy.valid.inter: split file is missing"):
        data.load_dataset("toy", tmp_path)


def test_format_error_survives_pickling_for_ray_workers():
    error = data.AtomicFormatError("/x/toy.train.inter", 7, "empty prefix")
    clone = pickle.loads(pickle.dumps(error))
    assert str(clone) == str(error) and clone.line == 7 and isinstance(clone, data.DataError)


def test_cache_is_reused_and_invalidated_when_a_source_changes(tmp_path, monkeypatch):
    write_small(tmp_path)
    first = load_atomic(tmp_path, "toy")
    assert cached(tmp_path).is_file()

    def no_parse(paths):
        raise AssertionError("cache should have been used")

    monkeypatch.setattr(atomic, "parse_splits", no_parse)
    np.testing.assert_array_equal(load_atomic(tmp_path, "toy").train.prefixes, first.train.prefixes)

    monkeypatch.undo()
    monkeypatch.setenv("CORE_CACHE_DIR", str(tmp_path / "cache"))
    write_split(tmp_path / "toy.train.inter", [*TRAIN, ("8 8", 8)])
    assert len(load_atomic(tmp_path, "toy").train) == len(TRAIN) + 1


def test_touching_a_source_with_same_size_invalidates_the_cache(tmp_path):
    write_small(tmp_path)
    load_atomic(tmp_path, "toy")
    path = tmp_path / "toy.train.inter"
    path.write_text(path.read_text().replace("4\t4 5\t6", "4\t4 5\t8"))  # same size
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert load_atomic(tmp_path, "toy").train.targets[3] == 8


def test_damaged_cache_is_rebuilt(tmp_path):
    write_small(tmp_path)
    load_atomic(tmp_path, "toy")
    cached(tmp_path).write_bytes(b"not a zip file")
    assert len(load_atomic(tmp_path, "toy").train) == len(TRAIN)


def test_the_cache_is_in_the_cache_root_never_beside_the_data(tmp_path):
    folder = write_small(tmp_path / "ro")
    folder.chmod(0o555)
    try:
        dataset = load_atomic(folder, "toy")
    finally:
        folder.chmod(0o755)
    assert len(dataset.valid) == len(VALID)
    assert not list(folder.glob("*.npz")) and not list(folder.glob(".*"))
    assert cached(folder).parent == tmp_path / "cache" / "datasets"
    assert cached(folder).is_file()
    # the same name in another folder is another entry
    other = write_small(tmp_path / "other", train=[*TRAIN, ("8 8", 8)])
    assert len(load_atomic(other, "toy").train) == len(TRAIN) + 1
    assert cached(other) != cached(folder) and cached(other).is_file()
    assert len(load_atomic(folder, "toy").train) == len(TRAIN)


def test_an_unwritable_cache_root_warns_and_still_loads(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("CORE_CACHE_DIR", str(blocker / "cache"))  # no folder can be made there
    write_small(tmp_path / "data")
    with pytest.warns(UserWarning, match="set CORE_CACHE_DIR"):
        dataset = load_atomic(tmp_path / "data", "toy")
    assert len(dataset.train) == len(TRAIN)
    assert not list(tmp_path.rglob("*.npz")) and not list(tmp_path.rglob(".*tmp"))


def test_failed_write_leaves_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")

    def crash(file):
        file.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomically(target, crash)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_load_dataset_accepts_both_layouts_and_the_env_default(tmp_path, monkeypatch):
    write_small(tmp_path / "nested" / "toy")
    write_small(tmp_path / "flat")
    assert data.load_dataset("toy", tmp_path / "nested").n_items == 9
    assert data.load_dataset("toy", tmp_path / "flat").n_items == 9
    monkeypatch.setenv("CORE_DATA_DIR", str(tmp_path / "nested"))
    assert data.resolve_data_dir() == tmp_path / "nested"
    assert len(data.load_dataset("toy").test) == len(TEST)
    monkeypatch.delenv("CORE_DATA_DIR")
    assert data.resolve_data_dir() == Path("datasets")


def test_missing_dataset_says_where_it_looked_and_how_to_get_it(tmp_path):
    with pytest.raises(data.DatasetNotFoundError) as caught:
        data.load_dataset("diginetica", tmp_path)
    message = str(caught.value)
    assert str(tmp_path / "diginetica" / "diginetica.train.inter") in message
    assert str(tmp_path / "diginetica.train.inter") in message
    assert "python -m data.prepare --dataset diginetica" in message
    assert "train-item-views.csv" in message
    assert isinstance(caught.value, data.DataError)


def test_invalid_name_is_rejected(tmp_path):
    with pytest.raises(data.DataError, match="invalid dataset name"):
        data.load_dataset("../etc", tmp_path)


def test_synthetic_is_generated_once_then_reused(tmp_path, monkeypatch):
    dataset = data.load_dataset("synthetic", tmp_path, synthetic_preset="tiny")
    assert dataset.name == "synthetic-tiny"
    assert (tmp_path / "synthetic-tiny" / "synthetic-tiny.train.inter").is_file()
    expected = synthetic.make_dataset("tiny")
    np.testing.assert_array_equal(dataset.valid.prefixes, expected.valid.prefixes)

    monkeypatch.setattr(synthetic, "write_atomic", pytest.fail)  # must not regenerate
    again = data.load_dataset("synthetic-tiny", tmp_path)
    np.testing.assert_array_equal(again.train.targets, dataset.train.targets)


def test_synthetic_seed_gets_its_own_folder_and_stale_files_are_rebuilt(tmp_path):
    seeded = data.load_dataset("synthetic-tiny", tmp_path, seed=2)
    assert seeded.name == "synthetic-tiny-seed2"
    assert data.load_dataset(seeded.name, tmp_path).n_items == seeded.n_items  # name round-trips
    marker = tmp_path / "synthetic-tiny-seed2" / "synthetic.json"
    marker.write_text('{"generator_version": -1}')
    rebuilt = data.load_dataset("synthetic-tiny", tmp_path, seed=2)
    assert '"generator_version": -1' not in marker.read_text()
    np.testing.assert_array_equal(rebuilt.train.targets, seeded.train.targets)


def test_synthetic_in_read_only_dir_is_built_in_memory(tmp_path):
    tmp_path.chmod(0o555)
    try:
        with pytest.warns(UserWarning, match="in memory"):
            dataset = data.load_dataset("synthetic-tiny", tmp_path)
    finally:
        tmp_path.chmod(0o755)
    assert len(dataset.train) > 0 and not (tmp_path / "synthetic-tiny").exists()


# The optional fourth column: the user of each row's session.
USER_TRAIN = [(prefix, f"{target}\t{user}") for (prefix, target), user in
              zip(TRAIN, [5, 5, 2, 2, 2, 0], strict=True)]


def write_with_users(folder: Path, **replace_rows) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = {"train": USER_TRAIN, "valid": [(p, f"{t}\t7") for p, t in VALID],
            "test": [(p, f"{t}\t2") for p, t in TEST], **replace_rows}
    for split, split_rows in rows.items():
        write_split(folder / f"toy.{split}.inter", split_rows, header=atomic.USER_HEADER)
    return folder


def test_user_column_is_read_into_split_users_and_cached(tmp_path):
    write_with_users(tmp_path)
    for _ in range(2):  # parsed, then from the cache
        dataset = load_atomic(tmp_path, "toy")
        assert dataset.train.users.dtype == np.int64
        assert dataset.train.users.tolist() == [5, 5, 2, 2, 2, 0]
        assert dataset.valid.users.tolist() == [7, 7] and dataset.test.users.tolist() == [2, 2]
        assert dataset.train.targets.tolist() == [3, 2, 7, 6, 5, 8]
    assert cached(tmp_path).is_file()
    assert load_atomic(write_small(tmp_path / "plain"), "toy").train.users is None


def test_users_round_trip_through_write_dataset(tmp_path):
    dataset = load_atomic(write_with_users(tmp_path / "a"), "toy")
    paths = write_dataset(dataset, tmp_path / "b")
    assert paths[0].read_text().splitlines()[:2] == [atomic.USER_HEADER, "1\t1 2\t3\t5"]
    again = load_atomic(tmp_path / "b", "toy")
    for split in ("train", "valid", "test"):
        assert again.split(split).users.tolist() == dataset.split(split).users.tolist()


def test_users_must_be_on_all_splits_or_none(tmp_path):
    write_with_users(tmp_path)
    write_split(tmp_path / "toy.valid.inter", VALID)  # three columns
    with pytest.raises(data.AtomicFormatError, match=r"toy.valid.inter:1: header lacks the "
                       r"user_id:token column but .*toy.train.inter has it"):
        load_atomic(tmp_path, "toy")
    dataset = load_atomic(write_small(tmp_path / "plain"), "toy")
    mixed = replace(dataset, train=replace(dataset.train, users=np.ones(len(dataset.train))))
    with pytest.raises(ValueError, match="only the \\['train'\\] split"):
        write_dataset(mixed, tmp_path / "out")
    assert not (tmp_path / "out").exists()


BAD_USERS = [
    pytest.param([*USER_TRAIN[:2], ("1 2", "3\tu9")], 4, "user id 'u9' is not an integer",
                 id="not-integer"),
    pytest.param([*USER_TRAIN[:1], ("1 2", "3\t-4")], 3, "negative user id '-4'", id="negative"),
    pytest.param([*USER_TRAIN[:3], ("1 2", "3\t4 5")], 5, "user_id must be one id, found 2",
                 id="two-users"),
    pytest.param([*USER_TRAIN[:3], ("1 2", "3\t")], 5, "user_id must be one id, found 0",
                 id="empty-user"),
    pytest.param([*USER_TRAIN[:2], ("1 2", "3")], 4, "expected 4 tab-separated columns, found 3",
                 id="three-columns"),
    pytest.param([*USER_TRAIN, ("1 2", "3\t" + "9" * 19)], 8, "user id '9999", id="too-large"),
    pytest.param([*USER_TRAIN[:2], ("1 x", "3\t1")], 4, "item id 'x' is not an integer",
                 id="item-error-still-named"),
]


@pytest.mark.parametrize("rows, line, message", BAD_USERS)
def test_bad_user_column_reports_file_and_line(tmp_path, rows, line, message):
    write_with_users(tmp_path, train=rows)
    with pytest.raises(data.AtomicFormatError, match=message) as caught:
        load_atomic(tmp_path, "toy")
    assert f"toy.train.inter:{line}:" in str(caught.value) and caught.value.line == line
