"""RetailRocket's two session rules on hand-made event logs, and the reproduction of CORE's
released split byte for byte from the real raw log (``$CORE_RAW_DIR``)."""

from __future__ import annotations

import gzip
import hashlib
import os
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pytest

from data.atomic import split_paths
from data.dataset import SPLITS
from data.pipeline import build_dataset
from data.prepare import main as prepare
from data.prepare import split_counts
from data.raw import read_retailrocket

HEADER = "timestamp,visitorid,event,itemid,transactionid"
HOUR = 3_600_000  # ms
START = int(datetime(2015, 6, 1, 1, tzinfo=timezone.utc).timestamp() * 1000)  # 01:00 UTC
# 10 sessions' items: items 11..15, each seen 6 times, so every session survives the filters.
BASE = [[11 + (i + j) % 5 for j in range(3)] for i in range(10)]

RAW_DIR_VARIABLE = "CORE_RAW_DIR"  # folder holding the public log retailrocket-events.csv.gz
RAW_LOG = "retailrocket-events.csv.gz"
RELEASED_BLOBS = {  # git blob ids (`git hash-object`) of CORE's released retailrocket files
    "train": "73082f5a33f548f01f660cda7be24084496e25d8",
    "valid": "8054f728590bf316abbfa149a63a86918ad58978",
    "test": "c55b3eb0ee40bbd7c896761530a8ddb42462e44b",
}


def write_log(folder: Path, events: list[tuple], name: str = "events.csv") -> Path:
    """Write (timestamp, visitor, event, item) tuples as a raw log, gzip-compressed for ``.gz``.

    Args:
        folder: where to write.
        events: rows in file order.
        name: file name; a ``.gz`` name is gzip-compressed.

    Returns:
        The log's path.
    """
    lines = [
        HEADER,
        *(f"{stamp},{visitor},{event},{item}," for stamp, visitor, event, item in events),
    ]
    text = ("\n".join(lines) + "\n").encode()
    path = folder / name
    path.write_bytes(gzip.compress(text) if name.endswith(".gz") else text)
    return path


def sessions_of(frame: pd.DataFrame) -> list[list[int]]:
    """Items of each session of a reader's event frame, sessions in key order, clicks in time
    order (ties in frame order)."""
    ordered = frame.assign(order=range(len(frame))).sort_values(["session", "time", "order"])
    return [group["item"].tolist() for _, group in ordered.groupby("session", sort=True)]


def views(visitor: int, items: list[int], start: int, step: int = 1000) -> list[tuple]:
    """One visitor's views of ``items``, ``step`` ms apart from ``start``."""
    return [(start + k * step, visitor, "view", item) for k, item in enumerate(items)]


def expected_rows(sessions_in_date_order: list[list[int]]) -> dict[str, list[tuple]]:
    """Oracle for 10-session logs: 8/1/1 sessions, train-only first-seen numbering from 1,
    longest prefix first."""
    numbering: dict[int, int] = {}
    for session in sessions_in_date_order[:8]:
        for item in session:
            numbering.setdefault(item, len(numbering) + 1)
    rows = []
    for session in sessions_in_date_order:
        ids = [numbering[item] for item in session]
        rows.append([(ids[:end], ids[end]) for end in range(len(ids) - 1, 0, -1)])
    flat = [
        [row for session in part for row in session] for part in (rows[:8], rows[8:9], rows[9:])
    ]
    return dict(zip(SPLITS, flat, strict=True))


def rows_of(split) -> list[tuple]:
    return [
        (split.prefixes[r, : split.lengths[r]].tolist(), int(split.targets[r]))
        for r in range(len(split))
    ]


def check_rows(dataset, sessions_in_date_order: list[list[int]]) -> None:
    expected = expected_rows(sessions_in_date_order)
    for name in SPLITS:
        assert rows_of(dataset.split(name)) == expected[name], name


def test_a_gap_of_exactly_8_hours_stays_one_session_and_1_ms_more_splits(tmp_path):
    log = write_log(
        tmp_path,
        [
            (START, 1, "view", 11),
            (START + 8 * HOUR, 1, "view", 12),  # exactly 8 h later: same session
            (START + 16 * HOUR + 1, 1, "view", 13),  # 8 h + 1 ms later: new session
            (START + 16 * HOUR + 2, 1, "view", 14),
        ],
    )
    assert sessions_of(read_retailrocket(log)) == [[11, 12], [13, 14]]
    assert sessions_of(read_retailrocket(log, gap_hours=16)) == [[11, 12, 13, 14]]
    assert sessions_of(read_retailrocket(log, gap_hours=1)) == [[11], [12], [13, 14]]


def test_a_day_change_splits_under_the_day_rule_only(tmp_path):
    midnight = int(datetime(2015, 6, 2, tzinfo=timezone.utc).timestamp() * 1000)
    log = write_log(
        tmp_path,
        [
            (midnight - 1000, 1, "view", 11),  # 23:59:59 UTC
            (midnight + 1000, 1, "view", 12),  # 00:00:01 UTC the next day
            (midnight + 2000, 1, "view", 13),
        ],
    )
    assert sessions_of(read_retailrocket(log)) == [[11, 12, 13]]
    assert sessions_of(read_retailrocket(log, rule="day")) == [[11], [12, 13]]
    # and the day rule ignores gaps: 20 h inside one UTC day stay one session
    log = write_log(tmp_path, [(START, 2, "view", 11), (START + 20 * HOUR, 2, "view", 12)])
    assert sessions_of(read_retailrocket(log, rule="day")) == [[11, 12]]
    assert sessions_of(read_retailrocket(log)) == [[11], [12]]


@pytest.mark.parametrize("rule", ["gap", "day"])
def test_ties_in_time_keep_the_file_order(tmp_path, rule):
    log = write_log(
        tmp_path,
        [
            (START + 5000, 1, "view", 15),  # the file is not in time order
            (START, 1, "view", 13),
            (START, 2, "view", 20),
            (START, 1, "view", 11),  # same ms as 13, later in the file
            (START, 1, "view", 12),
        ],
    )
    assert sessions_of(read_retailrocket(log, rule=rule)) == [[13, 11, 12, 15], [20]]


def test_only_views_count(tmp_path):
    log = write_log(
        tmp_path,
        [
            (START, 1, "view", 11),
            (START + 4 * HOUR, 1, "addtocart", 12),  # would bridge the 9 h gap if it counted
            (START + 4 * HOUR, 1, "transaction", 12),
            (START + 9 * HOUR, 1, "view", 13),
            (START + 9 * HOUR + 1, 1, "view", 14),
            (START + 9 * HOUR + 2, 2, "addtocart", 15),  # a visitor without views: no session
        ],
    )
    assert sessions_of(read_retailrocket(log)) == [[11], [13, 14]]
    assert sessions_of(read_retailrocket(log, rule="day")) == [[11, 13, 14]]


def test_sessions_are_dated_by_their_last_view_before_filtering(tmp_path):
    """Session 3's last view (item 99, seen once) is removed by the item filter, but it still
    dates the session: after session 4, whose views all end earlier."""
    events = []
    for i, items in enumerate(BASE):
        events += views(100 + i, items, START + i * HOUR)
    events.append((START + 4 * HOUR + 30 * 60_000, 103, "view", 99))  # session 3, 3.5 h later
    log = write_log(tmp_path, events)
    order = [0, 1, 2, 4, 3, 5, 6, 7, 8, 9]
    check_rows(build_dataset(read_retailrocket(log), "rr"), [BASE[i] for i in order])


def test_sessions_ending_together_follow_their_visitors_first_views_in_the_file(tmp_path):
    """Sessions 4 and 5 end at the same millisecond. Session 5 starts later, its visitor id is
    larger and its rows come later in the file, but its visitor's first view (of an older
    session) is the file's first row: it comes first, as in CORE's released files."""
    end = START + 5 * HOUR
    events = views(900, BASE[0], START - 48 * HOUR)  # visitor 900's older session
    for i in (1, 2, 3):
        events += views(100 + i, BASE[i], START + i * HOUR)
    events += views(104, BASE[4], end - 2000)  # 3 views, the last at `end`
    events += views(900, BASE[5], end - 200, step=100)  # starts later, also ends at `end`
    for i in (6, 7, 8, 9):
        events += views(100 + i, BASE[i], START + i * HOUR)
    log = write_log(tmp_path, events)
    order = [0, 1, 2, 3, 5, 4, 6, 7, 8, 9]
    check_rows(build_dataset(read_retailrocket(log), "rr"), [BASE[i] for i in order])
    # the day rule keeps its own order: ties by session key (visitor id, then day)
    check_rows(build_dataset(read_retailrocket(log, rule="day"), "rr"), BASE)


def test_a_gzip_compressed_log_gives_the_same_files(tmp_path):
    events = [event for i, items in enumerate(BASE) for event in views(i, items, START + i * HOUR)]
    outputs = []
    for name in ("events.csv", "events.csv.gz"):
        out = tmp_path / f"out-{name}"
        raw = write_log(tmp_path, events, name)
        assert prepare(["--dataset", "retailrocket", "--raw", str(raw), "--out", str(out)]) == 0
        outputs.append([path.read_bytes() for path in split_paths(out, "retailrocket").values()])
    assert outputs[0] == outputs[1]
    assert outputs[0][0].startswith(b"session_id:token\titem_id_list:token_seq\titem_id:token\n")


@pytest.mark.parametrize(
    "options, log, message",
    [
        (["--session-rule", "day", "--session-gap-hours", "4"], "events.csv", "gap only"),
        (["--session-gap-hours", "0"], "events.csv", "a positive number of hours, not 0.0"),
        (["--session-gap-hours", "nan"], "events.csv", "a positive number of hours, not nan"),
        ([], "broken.csv.gz", "broken.csv.gz: cannot read"),
        ([], "truncated.csv.gz", "truncated.csv.gz: cannot read"),
        ([], "carts.csv", "retailrocket: no session survives the filters"),  # no views at all
    ],
)
def test_bad_options_and_broken_gzip_are_clear_errors(tmp_path, capsys, options, log, message):
    good = write_log(tmp_path, views(1, BASE[0], START))
    (tmp_path / "broken.csv.gz").write_bytes(b"this is not gzip\n")
    (tmp_path / "truncated.csv.gz").write_bytes(gzip.compress(good.read_bytes() * 50)[:60])
    write_log(tmp_path, [(START + k, 1, "addtocart", 11) for k in range(3)], "carts.csv")
    out = tmp_path / "out"
    args = ["--dataset", "retailrocket", "--raw", str(tmp_path / log), "--out", str(out)]
    assert prepare(args + options) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_session_options_are_refused_for_other_datasets(tmp_path, capsys):
    args = ["--dataset", "tmall", "--raw", "x", "--out", str(tmp_path), "--session-rule", "day"]
    assert prepare(args) == 2
    assert "--session-rule applies to retailrocket only" in capsys.readouterr().err


def git_blob_id(path: Path) -> str:
    """The id ``git hash-object`` gives a file."""
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@pytest.fixture(scope="module")
def raw_log() -> Path:
    """The public RetailRocket log from ``$CORE_RAW_DIR``; skips when the variable is unset."""
    folder = os.environ.get(RAW_DIR_VARIABLE)
    if not folder:
        pytest.skip(f"set {RAW_DIR_VARIABLE} to a folder holding {RAW_LOG} (the public log)")
    path = Path(folder) / RAW_LOG
    assert path.is_file(), f"{RAW_DIR_VARIABLE}={folder} holds no {RAW_LOG}"
    return path


def test_the_default_rule_reproduces_cores_released_files_byte_for_byte(raw_log, tmp_path):
    out = tmp_path / "retailrocket"
    assert prepare(["--dataset", "retailrocket", "--raw", str(raw_log), "--out", str(out)]) == 0
    blobs = {name: git_blob_id(path) for name, path in split_paths(out, "retailrocket").items()}
    assert blobs == RELEASED_BLOBS


def test_the_day_rule_gives_the_papers_statistics(raw_log):
    dataset = build_dataset(read_retailrocket(raw_log, rule="day"), "retailrocket")
    counts = [split_counts(dataset.split(name)) for name in SPLITS]
    assert sum(count["rows"] for count in counts) == 871_637
    assert sum(count["sessions"] for count in counts) == 321_032
    assert dataset.n_items - 1 == 51_427
