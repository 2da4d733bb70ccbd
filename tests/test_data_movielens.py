"""ml-100k: sessions cut from users' rating histories, then CORE's protocol, with item text, users,
links and the KG written in the dataset's ids. The raw folder is made here, in RecBole's format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data import movielens
from data.atomic import USER_HEADER, load_atomic
from data.prepare import main as prepare

GAP = movielens.SESSION_GAP_SECONDS
START = 880_000_000
# (raw user, [(raw item, seconds after the session's start)]), in date order. Items 1..5 are each
# seen 6 times; the ratings of a session share a timestamp unless an offset says otherwise.
SESSIONS = [
    (10, [(3, 0), (1, 0), (2, 0)]),  # tie: ordered by item id -> 1 2 3
    (20, [(2, 0), (3, 0), (4, 0)]),
    (10, [(5, 0), (3, 0), (4, 0)]),
    (30, [(4, 0), (5, GAP), (1, 2 * GAP)]),  # gaps of exactly the threshold: one session
    (20, [(5, 0), (1, 0), (2, 0)]),
    (20, [(1, 0), (2, 0), (3, 0)]),  # starts GAP + 1 s after the previous one: a new session
    (30, [(2, 0), (3, 0), (4, 0)]),
    (10, [(3, 0), (4, 0), (5, 0)]),
    (40, [(4, 0), (5, 0), (1, 0)]),  # valid; user 40 is first seen here
    (30, [(5, 0), (1, 0), (2, 0)]),  # test
]
STARTS = [START + 86_400 * k for k in range(len(SESSIONS))]
STARTS[5] = STARTS[4] + GAP + 1
TITLES = {1: "Heat", 2: "Babe", 3: "Ronin", 4: "Amélie", 6: "Never Rated"}  # 5 has no row


def ordered(session):
    """The session's items as the rule orders them: by time, ties by item id."""
    return [item for item, _ in sorted(session, key=lambda click: (click[1], click[0]))]


def write_raw(folder: Path, sessions=SESSIONS, starts=STARTS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    ratings = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    for (user, clicks), start in zip(sessions, starts, strict=True):
        for item, offset in sorted(clicks, reverse=True):  # file order must not matter
            ratings.append(f"{user}\t{item}\t{1 + item % 5}\t{start + offset}")
    (folder / "ml-100k.inter").write_text("\n".join(ratings) + "\n")
    items = ["item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq"]
    items += [f"{item}\t{title}\t{1990 + item}\tDrama Comedy" for item, title in TITLES.items()]
    (folder / "ml-100k.item").write_text("\n".join(items) + "\n", encoding="utf-8")
    users = ["user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token"]
    users += [f"{user}\t{user + 1}\tF\twriter\tz{user}" for user in (10, 20, 30, 40, 50)]
    (folder / "ml-100k.user").write_text("\n".join(users) + "\n")
    links = ["item_id:token\tentity_id:token", *(f"{item}\tm.0{item}" for item in range(1, 7))]
    (folder / "ml-100k.link").write_text("\n".join(links) + "\n")
    kg = "head_id:token\trelation_id:token\ttail_id:token\nm.01\tfilm.film.genre\tm.0x\n"
    (folder / "ml-100k.kg").write_text(kg)
    return folder


def numbering(sessions):
    """Train-only first-seen numbering of the CORE protocol (first 8 sessions are train)."""
    ids: dict[int, int] = {}
    for _, clicks in sessions[:8]:
        for item in ordered(clicks):
            ids.setdefault(item, len(ids) + 1)
    return ids


def rows_of(split):
    return [
        (split.prefixes[r, : split.lengths[r]].tolist(), int(split.targets[r]))
        for r in range(len(split))
    ]


def expected(sessions, part):
    ids = numbering(sessions)
    out = []
    for _, clicks in sessions[part]:
        items = [ids[item] for item in ordered(clicks)]
        out += [(items[:end], items[end]) for end in range(len(items) - 1, 0, -1)]
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ml")
    raw = write_raw(folder / "raw")
    out = folder / "out"
    assert prepare(["--dataset", "ml-100k", "--raw", str(raw), "--out", str(out)]) == 0
    return raw, out, load_atomic(out, "ml-100k")


def test_sessions_follow_the_gap_rule_and_the_protocol(built):
    _, _, dataset = built
    assert rows_of(dataset.train) == expected(SESSIONS, slice(0, 8))
    assert rows_of(dataset.valid) == expected(SESSIONS, slice(8, 9))
    assert rows_of(dataset.test) == expected(SESSIONS, slice(9, 10))
    assert dataset.n_items == 6


def test_every_row_keeps_its_user(built):
    raw, out, dataset = built
    user_ids = {10: 1, 20: 2, 30: 3, 40: 4}  # first seen in train by date, then valid
    per_row = [user_ids[user] for user, clicks in SESSIONS for _ in range(len(clicks) - 1)]
    assert dataset.train.users.tolist() == per_row[:16]
    assert dataset.valid.users.tolist() == [4, 4] and dataset.test.users.tolist() == [3, 3]
    assert (out / "ml-100k.train.inter").read_text().split("\n", 1)[0] == USER_HEADER
    users = pd.read_csv(out / "ml-100k.user", sep="\t", dtype=str)
    assert list(users.columns) == (raw / "ml-100k.user").read_text().split("\n", 1)[0].split("\t")
    # user 50 has no rating: dropped; the others carry their own fields under their new ids
    assert users.values.tolist() == [
        [str(new), str(old + 1), "F", "writer", f"z{old}"] for old, new in user_ids.items()
    ]


def test_item_text_links_and_kg_are_in_the_dataset_ids(built):
    raw, out, dataset = built
    ids = numbering(SESSIONS)
    texts = dataset.items.texts()
    assert texts[0] == "" and texts[ids[5]] == ""  # item 5 has no row in the raw .item
    for item in (1, 2, 3, 4):
        assert texts[ids[item]] == f"{TITLES[item]} | {1990 + item} | Drama Comedy"
    assert dataset.items.types == {
        "movie_title": "token_seq", "release_year": "token", "class": "token_seq"
    }
    links = (out / "ml-100k.link").read_text().splitlines()
    assert links[0] == "item_id:token\tentity_id:token"
    assert links[1:] == [f"{new}\tm.0{old}" for old, new in sorted(ids.items(), key=lambda x: x[1])]
    assert (out / "ml-100k.kg").read_bytes() == (raw / "ml-100k.kg").read_bytes()
    readme = (out / "README.md").read_text()
    assert "GroupLens" in readme and "no commercial use" in readme


def test_the_cli_prints_counts_per_split_and_the_gap_survey(tmp_path, capsys):
    raw = write_raw(tmp_path / "raw")
    assert prepare(["--dataset", "ml-100k", "--raw", str(raw), "--out", str(tmp_path / "o")]) == 0
    output = capsys.readouterr().out
    assert "session gap  3,600 s:     10 sessions,     20 rows" in output
    assert "session gap      0 s:      9 sessions" in output  # session 3 falls apart
    lines = output.splitlines()
    table = lines[lines.index(next(line for line in lines if line.startswith("split "))):]
    assert table[1].split() == ["train", "8", "16", "5", "3"]
    assert table[2].split() == ["valid", "1", "2", "3", "1"]
    assert table[3].split() == ["test", "1", "2", "3", "1"]
    assert table[4] == (
        "catalog: 5 items; 4 users; 4 of 5 items have text "
        "(fields movie_title:token_seq, release_year:token, class:token_seq)"
    )


def test_a_longer_gap_splits_a_session(tmp_path):
    starts = list(STARTS)
    sessions = list(SESSIONS)
    sessions[3] = (30, [(4, 0), (5, GAP), (1, 2 * GAP + 1)])  # last rating: GAP + 1 s later
    raw = write_raw(tmp_path / "raw", sessions, starts)
    events = movielens.sessionize(movielens.read_folder(raw).ratings)
    user_30 = events[events["user"] == 30]
    sizes = user_30.groupby("session").size().tolist()
    assert sizes == [2, 1, 3, 3]  # [4 5] | [1] | session 6 | session 9
    assert np.all(np.diff(events["session"].to_numpy()) >= 0)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda raw: (raw / "ml-100k.kg").unlink(), "missing ml-100k.kg"),
        (
            lambda raw: (raw / "ml-100k.item").write_text(
                (raw / "ml-100k.item").read_text() + "2\tBabe 2\t1998\tComedy\n"
            ),
            "ml-100k.item:7: duplicate item id 2 (first on line 3)",
        ),
        (
            lambda raw: (raw / "ml-100k.item").write_bytes(
                (raw / "ml-100k.item").read_bytes().replace("é".encode(), b"\xe9")
            ),
            "ml-100k.item:5: bytes",
        ),
        (
            lambda raw: (raw / "ml-100k.inter").write_text(
                (raw / "ml-100k.inter").read_text().replace("\n20\t", "\nu20\t", 1)
            ),
            "ml-100k.inter:5: user_id 'u20' is not a non-negative integer",
        ),
        (
            lambda raw: (raw / "ml-100k.link").write_text("item_id:token\tentity_id:token\nx\tm\n"),
            "ml-100k.link:2: item_id 'x' is not a non-negative integer",
        ),
    ],
)
def test_bad_raw_files_stop_before_anything_is_written(tmp_path, capsys, damage, message):
    raw = write_raw(tmp_path / "raw")
    damage(raw)
    out = tmp_path / "out"
    assert prepare(["--dataset", "ml-100k", "--raw", str(raw), "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_raw_must_be_the_folder(tmp_path, capsys):
    raw = write_raw(tmp_path / "raw")
    args = ["--dataset", "ml-100k", "--raw", str(raw / "ml-100k.inter"), "--out", str(tmp_path)]
    assert prepare(args) == 2
    assert "is not a folder (for ml-100k, --raw is the folder holding" in capsys.readouterr().err
    assert prepare(["--dataset", "ml-100k", "--out", str(tmp_path)]) == 2
    assert "--raw is required for ml-100k (its raw folder holds" in capsys.readouterr().err


def test_a_missing_ml100k_says_how_to_build_it(tmp_path):
    from data import DatasetNotFoundError, load_dataset

    with pytest.raises(DatasetNotFoundError) as caught:
        load_dataset("ml-100k", tmp_path)
    assert "python -m data.prepare --dataset ml-100k --raw path/to/ml-100k" in str(caught.value)
