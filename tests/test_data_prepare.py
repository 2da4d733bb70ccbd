"""CORE's preprocessing protocol and the raw-log readers, on small logs written in real formats."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest

from data import DataError
from data.atomic import load_atomic
from data.pipeline import build_dataset, expand_sessions
from data.prepare import main as prepare

# 10 sessions in date order, items 11..15, each item seen 6 times (all survive the filters).
BASE = [[11 + (i + j) % 5 for j in range(3)] for i in range(10)]


def rows(split, n=None):
    """(prefix list, target) pairs of a split."""
    n = len(split) if n is None else n
    return [
        (split.prefixes[r, : split.lengths[r]].tolist(), int(split.targets[r])) for r in range(n)
    ]


def expected_rows(sessions_in_date_order):
    """Oracle for the 10-session logs: train-only first-seen numbering, longest prefix first."""
    numbering = {}
    for session in sessions_in_date_order[:8]:
        for item in session:
            numbering.setdefault(item, len(numbering) + 1)
    out = []
    for session in sessions_in_date_order:
        ids = [numbering[item] for item in session]
        out.append([(ids[:end], ids[end]) for end in range(len(ids) - 1, 0, -1)])
    return out[:8], out[8:9], out[9:]


def flat(groups):
    return [row for group in groups for row in group]


def events(sessions, dates):
    """Event frame with clicks listed in REVERSE order (the pipeline must sort by time)."""
    records = [
        (key, item, position, date)
        for key, items, date in zip(sessions, sessions.values(), dates, strict=True)
        for position, item in enumerate(items)
    ]
    return pd.DataFrame(records[::-1], columns=["session", "item", "time", "session_time"])


def test_protocol_end_to_end():
    main = {
        "s0": ["C", "A", "B"],
        "s1": ["A", "B", "D"],
        "s2": ["D", "E"],
        "s3": ["A", "B"],
        "s4": ["C", "D", "E"],
        "s5": ["E", "A"],
        "s6": ["B", "C"],
        "s7": ["A", "B", "C", "D", "E"],
        "s8": ["A", "X", "X", "B"],  # valid: X never occurs in train
        "s9": ["X", "X", "X", "C", "D", "E"],  # test
        "s10": ["X", "C"],  # test: only C is left, so the session is dropped
    }
    extra = {
        "single": ["Y"],  # length 1: dropped first, so Y's support is 4, not 5
        "ys": ["Y", "Y", "Y", "Y"],  # vanishes once Y is dropped
        "rare": ["A", "Q"],  # Q seen once -> removed -> session of length 1 dropped
    }
    sessions = {**main, **extra}
    # keys sort differently from dates; the extra sessions are dated in between
    dates = [9, 8, 7, 6, 5, 4, 3, 2, 1, 0, -1, 4.5, 3.5, 1.5]
    dates = [100 - d for d in dates]
    log = []
    dataset = build_dataset(events(sessions, dates), "toy", log=log.append)

    # numbering C=1 A=2 B=3 D=4 E=5 (first seen over train sessions in date order)
    assert dataset.n_items == 6
    assert rows(dataset.train, 3) == [([1, 2], 3), ([1], 2), ([2, 3], 4)]
    assert len(dataset.train) == 2 + 2 + 1 + 1 + 2 + 1 + 1 + 4
    assert rows(dataset.valid) == [([2], 3)]  # X removed from [A X X B]
    assert rows(dataset.test) == [([1, 4], 5), ([1], 4)]  # [X X X C D E] -> [C D E]
    stage_text = "\n".join(log)
    assert "sessions of length 1 dropped: 40 events, 13 sessions" in stage_text
    assert "items seen < 5 times dropped: 35 events, 12 sessions, 6 items" in stage_text
    assert "sessions with < 2 items dropped: 34 events, 11 sessions" in stage_text
    assert "test: items unseen in train removed, short sessions dropped: 3 events, 1 " in stage_text


def test_temporal_split_is_80_10_10_by_session_date():
    n = 50
    sessions = {f"k{n - i:03d}": [1 + i % 5, 1 + (i + 1) % 5] for i in range(n)}
    sessions["k050"] = [2, 1]  # starts first but ends last: dated by its last click -> test
    clicks = [
        (key, item, time)
        for i, (key, items) in enumerate(sessions.items())
        for item, time in zip(items, (-1.0, 100.0) if i == 0 else (i, i + 0.5), strict=True)
    ]
    frame = pd.DataFrame(clicks, columns=["session", "item", "time"])
    dataset = build_dataset(frame, "toy")
    assert (len(dataset.train), len(dataset.valid), len(dataset.test)) == (40, 5, 5)
    # numbering starts with the first train session [2, 3]: 2->1, 3->2, 4->3, 5->4, 1->5
    assert rows(dataset.train, 1) == [([1], 2)]
    assert rows(dataset.test)[-1] == ([1], 5)


def test_expansion_truncates_to_the_last_50_items():
    items = np.arange(1, 61, dtype=np.int32)
    split = expand_sessions(np.concatenate([items, [7, 8]]), np.array([60, 2]))
    assert len(split) == 59 + 1
    assert split.lengths[0] == 50 and split.prefixes[0].tolist() == list(range(10, 60))
    assert split.targets[0] == 60
    assert rows(split)[58:] == [([1], 2), ([7], 8)]
    assert split.lengths.tolist()[:12] == [50] * 10 + [49, 48]


def test_empty_split_is_a_clear_error():
    with pytest.raises(DataError, match="split is empty; the log is too small"):
        build_dataset(events({"a": [1, 1, 1, 1, 1]}, [0]), "toy")


def _write_and_prepare(tmp_path, dataset, text, name="raw.txt"):
    raw = tmp_path / name
    raw.write_text(text)
    out = tmp_path / "out"
    assert prepare(["--dataset", dataset, "--raw", str(raw), "--out", str(out)]) == 0
    return load_atomic(out, dataset)


def _check_base(dataset, sessions_in_date_order):
    train, valid, test = expected_rows(sessions_in_date_order)
    assert rows(dataset.train) == flat(train)
    assert rows(dataset.valid) == flat(valid)
    assert rows(dataset.test) == flat(test)


def test_diginetica_orders_by_timeframe_and_dates_by_eventdate(tmp_path, capsys):
    lines = ["session_id;user_id;item_id;timeframe;eventdate"]
    for i, items in enumerate(BASE):  # session ids run against the dates
        day = f"2016-05-{i + 1:02d}"
        for position, item in reversed(list(enumerate(items))):
            lines.append(f"{100 - i};NA;{item};{1000 * position + 7};{day}")
    lines.append("500;NA;11;5;2016-05-03")  # length-1 session
    dataset = _write_and_prepare(tmp_path, "diginetica", "\n".join(lines) + "\n")
    _check_base(dataset, BASE)
    output = capsys.readouterr().out
    assert "sessions of length 1 dropped: 30 events, 10 sessions" in output
    assert "read back: diginetica: 6 items" in output


def test_retailrocket_uses_views_and_visitor_day_sessions(tmp_path):
    start = int(datetime(2015, 6, 1, tzinfo=timezone.utc).timestamp() * 1000)
    lines = ["timestamp,visitorid,event,itemid,transactionid"]
    for i, items in enumerate(BASE):  # 5 visitors, each active on two days
        for position, item in enumerate(items):
            lines.append(f"{start + i * 86_400_000 + position * 1000},{i % 5},view,{item},")
    lines += [f"{start + k},{k},addtocart,99,7" for k in range(6)]  # not views: ignored
    dataset = _write_and_prepare(tmp_path, "retailrocket", "\n".join(lines) + "\n")
    assert dataset.n_items == 6
    _check_base(dataset, BASE)


def test_yoochoose_keeps_the_most_recent_quarter(tmp_path):
    start = datetime(2014, 4, 1, tzinfo=timezone.utc)
    old = [[21 + (i + j) % 5 for j in range(3)] for i in range(30)]
    lines = []
    for i, items in enumerate(old + BASE):  # 40 sessions, the last 10 are BASE
        for position, item in enumerate(items):
            stamp = start + timedelta(hours=i, seconds=position)
            lines.append(f"{1000 - i},{stamp:%Y-%m-%dT%H:%M:%S}.000Z,{item},0")
    dataset = _write_and_prepare(tmp_path, "yoochoose", "\n".join(lines) + "\n", "clicks.dat")
    assert dataset.n_items == 6
    _check_base(dataset, BASE)


def _session_item_time(sessions, first_id):
    return [
        f"{first_id + i}\t{item}\t{1_400_000_000 + 3600 * i + position}"
        for i, items in enumerate(sessions)
        for position, item in enumerate(items)
    ]


def test_tmall_keeps_session_ids_up_to_120000(tmp_path):
    dropped = [[31 + (i + j) % 5 for j in range(3)] for i in range(10)]
    lines = ["SessionId\tItemId\tTime"]
    lines += _session_item_time(BASE, 119_991) + _session_item_time(dropped, 120_001)
    dataset = _write_and_prepare(tmp_path, "tmall", "\n".join(lines) + "\n")
    assert dataset.n_items == 6
    _check_base(dataset, BASE)


def test_nowplaying_orders_clicks_by_time(tmp_path):
    lines = ["SessionId\tItemId\tTime", *reversed(_session_item_time(BASE, 1))]
    _check_base(_write_and_prepare(tmp_path, "nowplaying", "\n".join(lines) + "\n"), BASE)


def test_synthetic_path_of_the_cli(tmp_path):
    out = tmp_path / "syn"
    args = ["--dataset", "synthetic", "--preset", "tiny", "--seed", "3", "--out", str(out)]
    assert prepare(args) == 0
    assert len(load_atomic(out, "synthetic").train) > 0


@pytest.mark.parametrize(
    "dataset, text, message",
    [
        ("diginetica", None, "not found (for diginetica, expected train-item-views.csv)"),
        ("diginetica", "session_id;item_id;eventdate\n1;2;2016-01-01\n", "['timeframe']"),
        ("tmall", "SessionId,ItemId,Time\n1,2,3\n", "missing column(s) ['SessionId'"),
        ("nowplaying", "SessionId\tItemId\tTime\n1\t2\tsoon\n", "'Time' value 'soon' is not a"),
    ],
)
def test_cli_errors_are_clear(tmp_path, capsys, dataset, text, message):
    raw = tmp_path / "raw.csv"
    if text is not None:
        raw.write_text(text)
    assert prepare(["--dataset", dataset, "--raw", str(raw), "--out", str(tmp_path / "o")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_cli_requires_raw_for_real_datasets(tmp_path, capsys):
    assert prepare(["--dataset", "tmall", "--out", str(tmp_path)]) == 2
    assert "--raw is required for tmall (its raw log is dataset15.csv)" in capsys.readouterr().err


def test_users_are_numbered_by_first_appearance_and_kept_per_row():
    frame = events({f"s{i}": items for i, items in enumerate(BASE)}, list(range(10)))
    raw_users = ["carol", "alice", "carol", "bob", "alice", "alice", "bob", "carol", None, "dave"]
    frame["user"] = [raw_users[int(key[1:])] for key in frame["session"]]
    dataset = build_dataset(frame, "toy")
    # train sessions in date order, then valid, then test; unknown -> 0
    ids = {"carol": 1, "alice": 2, "bob": 3, "dave": 4, None: 0}
    expected = [ids[user] for user in raw_users for _ in range(2)]  # 3 clicks -> 2 rows each
    assert dataset.train.users.tolist() == expected[:16]
    assert dataset.valid.users.tolist() == [0, 0] and dataset.test.users.tolist() == [4, 4]
    _check_base(dataset, BASE)  # the rows themselves are unchanged by the user column
    assert build_dataset(frame.drop(columns="user"), "toy").train.users is None


def test_a_session_with_two_users_is_refused():
    frame = events({"a": [1, 2, 3], "b": [1, 2]}, [0, 1]).assign(user=[1, 2, 1, 1, 1])
    with pytest.raises(DataError, match="session 'b' has clicks of 2 different users"):
        build_dataset(frame, "toy")


def _metadata(raw_ids):
    return pd.DataFrame(
        {"title": [f"Film {raw}" for raw in raw_ids], "genres": ["Drama Comedy"] * len(raw_ids)},
        index=raw_ids,
    )


def test_item_metadata_follows_the_item_numbering_exactly():
    sessions = [[11 + (i * 2 + j) % 5 for j in range(3)] for i in range(10)]
    frame = events({f"s{i}": items for i, items in enumerate(sessions)}, list(range(10)))
    metadata = _metadata([99, 15, 14, 11, 12])  # 13 has no row; 99 is not in the log
    dataset = build_dataset(frame, "toy", items=metadata, item_types={"genres": "token_seq"})
    _check_base(dataset, sessions)  # ids are the oracle's first-seen numbering
    numbering = {}
    for session in sessions[:8]:
        for raw in session:
            numbering.setdefault(raw, len(numbering) + 1)
    table = dataset.items
    assert table.types == {"title": "token_seq", "genres": "token_seq"}
    assert table.n_items == dataset.n_items == 6
    texts = table.texts(["title"])
    assert texts[0] == "" and texts[numbering[13]] == ""
    for raw in (11, 12, 14, 15):
        assert texts[numbering[raw]] == f"Film {raw}"
    assert table.texts()[numbering[11]] == "Film 11 | Drama Comedy"
    assert table.items_with_text() == 4


@pytest.mark.parametrize(
    "metadata, types, message",
    [
        (_metadata([11, 12, 11]), None, "repeats raw item id 11"),
        (_metadata(["11", "12", "13"]), None, "no item of the log has a row"),
        (_metadata([11, 12]), {"plot": "token_seq"}, "unknown column(s) ['plot']"),
        (_metadata([11, 12]), {"title": "text"}, "bad type(s) {'title': 'text'}"),
        (_metadata([11, 12]), {"title": "float", "genres": "float"}, "no token/token_seq"),
    ],
)
def test_unusable_item_metadata_is_a_clear_error(metadata, types, message):
    frame = events({f"s{i}": items for i, items in enumerate(BASE)}, list(range(10)))
    with pytest.raises(DataError) as caught:
        build_dataset(frame, "toy", items=metadata, item_types=types)
    assert message in str(caught.value)
