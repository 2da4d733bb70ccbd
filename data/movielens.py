"""MovieLens 100K (RecBole atomic files) -> a CORE session benchmark with item text, users, the
Freebase links and the knowledge graph.

Input: a folder with ``ml-100k.inter`` (user_id, item_id, rating, timestamp in unix seconds),
``ml-100k.item`` (movie_title, release_year, class = space-separated genres), ``ml-100k.user``,
``ml-100k.link`` (item_id -> Freebase entity) and ``ml-100k.kg`` (head, relation, tail).

Sessions. Every rating is an interaction (implicit feedback; ``rating`` is not used and not
written, as CORE's protocol has no notion of it). Each user's ratings are ordered by time, ties
by item id (half of all consecutive ratings of a user share a timestamp: bulk entry), and a new
session starts when the gap to the user's previous rating exceeds ``SESSION_GAP_SECONDS`` =
1 hour. Gaps are bimodal: half are 0 s and 95% are under 3 minutes (rating one movie after
another), most of the rest are days apart (a later visit); only 0.35% of all gaps lie between 30
minutes and 12 hours, so any threshold there gives nearly the same sessions. One hour sits in
that valley (and is a usual inactivity timeout for sessions).

Candidate gaps on the 100,000 ratings: sessions with >= 2 ratings, their ratings, rows (ratings
- sessions), session length; then the sessions / rows / items left after the whole CORE protocol
below (all three splits together):

    gap     sessions  ratings    rows  median  mean |  protocol: sessions    rows  items
    0 s       25,211   75,772  50,561     3     3.0 |              24,960  49,714  1,271
    1 min     10,297   95,451  85,154     4     9.3 |              10,248  84,311  1,318
    5 min      3,312   99,072  95,760    11    29.9 |               3,296  94,978  1,336
    15 min     2,449   99,424  96,975    20    40.6 |               2,438  96,196  1,338
    30 min     2,283   99,490  97,207    21    43.6 |               2,270  96,429  1,339
    1 h        2,201   99,509  97,308    22    45.2 |               2,190  96,528  1,339
    1 day      1,926   99,646  97,720  24.5    51.7 |               1,920  96,942  1,341

Gaps under ~5 minutes cut one sitting at arbitrary points (inside a bulk entry the order is only
the item-id tie-break), so their short sessions measure that artefact rather than a visit. With
1 hour a session is one sitting: median 22 ratings, so most prefixes fill the 50-item window, and
the benchmark is small in sessions (train 1,756 / valid 219 / test 215) but not in rows (79,031 /
9,091 / 8,406). Caveat: within a timestamp tie the next item is the one with the next larger raw
id, an ordering artefact of the data that models may partly learn; it is the same for every
model compared. ``python -m data.prepare --dataset ml-100k`` prints the pre-filter survey again.

Then CORE's protocol (``data.pipeline``) exactly as for the click logs: sessions of length 1
dropped, items seen < 5 times dropped, sessions < 2 dropped again, temporal 80/10/10 split by
session end time, items unseen in train removed from valid/test, prefix -> next rows keeping
the last 50 items. The user of every session is kept (``user_id:token`` column).

Output (``<name>`` = ``ml-100k`` by default): ``<name>.{train,valid,test}.inter`` and
``<name>.item`` (title, year, genres) in the dataset's item ids; ``<name>.user`` in the dataset's
user ids (users without a session dropped); ``<name>.link`` with item ids mapped (items not in
the dataset dropped); ``<name>.kg`` copied as is; ``README.md`` with the source and its terms.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from data.atomic import write_dataset
from data.errors import DataError
from data.fileio import write_atomically
from data.items import read_item_frame
from data.pipeline import Built, Log, build

NAME = "ml-100k"
SESSION_GAP_SECONDS = 3600
SURVEY_GAPS = (0, 60, 300, 900, 1800, 3600, 86_400)
EXTENSIONS = ("inter", "item", "user", "link", "kg")
SOURCE = (
    "MovieLens 100K (GroupLens Research) in RecBole's atomic format, with its item -> Freebase "
    "entity links and the Freebase triples about the linked films."
)
TERMS = (
    "Terms (GroupLens): research use; cite F. M. Harper and J. A. Konstan, \"The MovieLens "
    "Datasets: History and Context\", ACM TiiS 5(4), 2015; no commercial use without permission; "
    "redistributions, including transformations such as these files, keep these same terms."
)


@dataclass(frozen=True)
class MovieLens:
    """The raw files, read and checked (ids still MovieLens's)."""

    folder: Path
    ratings: pd.DataFrame  # user, item (int64), time (float, unix seconds)
    items: pd.DataFrame  # indexed by raw item id: movie_title, release_year, class
    item_types: dict[str, str]


def read_folder(folder: str | Path, name: str = NAME) -> MovieLens:
    """Read and check ``<folder>/<name>.inter`` and ``.item``; the other files must exist.

    Args:
        folder: the raw ml-100k folder.
        name: the files' prefix.

    Returns:
        The ratings and the items (``MovieLens``).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder (for {NAME}, --raw is the folder holding "
                        f"{', '.join(f'{name}.{ext}' for ext in EXTENSIONS)})")
    missing = [f"{name}.{ext}" for ext in EXTENSIONS if not (folder / f"{name}.{ext}").is_file()]
    if missing:
        raise DataError(f"{folder}: missing {', '.join(missing)}")
    path = folder / f"{name}.inter"
    raw = read_table(path, ["user_id", "item_id", "timestamp"])
    ratings = pd.DataFrame(
        {
            "user": _integers(raw["user_id"], path, "user_id"),
            "item": _integers(raw["item_id"], path, "item_id"),
            "time": _numbers(raw["timestamp"], path, "timestamp"),
        }
    )
    items, item_types = read_item_frame(folder / f"{name}.item")
    return MovieLens(folder, ratings, items, item_types)


def sessionize(ratings: pd.DataFrame, gap: float = SESSION_GAP_SECONDS) -> pd.DataFrame:
    """Event frame for ``data.pipeline``: each user's ratings by time (ties by item id), a new
    session after a gap > ``gap`` seconds.

    Args:
        ratings: columns user, item, time.
        gap: the session gap in seconds.

    Returns:
        Columns session (int, increasing in user/time order), item, time, user; sorted so that
        input order breaks time ties by item id.
    """
    ordered = ratings.sort_values(["user", "time", "item"], kind="stable", ignore_index=True)
    user = ordered["user"].to_numpy()
    time = ordered["time"].to_numpy()
    new_user = np.concatenate(([True], user[1:] != user[:-1]))
    new_session = new_user | (np.diff(time, prepend=time[:1]) > gap)
    return pd.DataFrame(
        {
            "session": np.cumsum(new_session) - 1,
            "item": ordered["item"].to_numpy(),
            "time": time,
            "user": user,
        }
    )


def survey(ratings: pd.DataFrame, gaps: Sequence[float] = SURVEY_GAPS) -> pd.DataFrame:
    """What each candidate gap gives before filtering: sessions with >= 2 ratings, their
    ratings, rows (ratings - sessions), median and mean length.

    Args:
        ratings: columns user, item, time.
        gaps: candidate session gaps in seconds.

    Returns:
        One row per gap.
    """
    records = []
    for gap in gaps:
        lengths = sessionize(ratings, gap)["session"].value_counts().to_numpy()
        kept = lengths[lengths >= 2]
        records.append(
            {
                "gap_s": gap,
                "sessions": len(kept),
                "ratings": int(kept.sum()),
                "rows": int(kept.sum() - len(kept)),
                "median_len": float(np.median(kept)) if len(kept) else 0.0,
                "mean_len": float(kept.mean()) if len(kept) else 0.0,
            }
        )
    return pd.DataFrame(records)


def prepare(
    raw: str | Path,
    out: str | Path,
    name: str = NAME,
    *,
    gap: float = SESSION_GAP_SECONDS,
    log: Log | None = None,
) -> list[Path]:
    """Build and write the ml-100k benchmark (see the module docstring).

    Args:
        raw: the folder with the RecBole atomic files ``ml-100k.{inter,item,user,link,kg}``.
        out: output folder.
        name: output file prefix.
        gap: session gap in seconds.
        log: receives progress lines (the gap survey, the pipeline's stages).

    Returns:
        The paths written.
    """
    say = log or (lambda message: None)
    source = read_folder(raw)
    say(f"read {len(source.ratings):,} ratings of {source.ratings['user'].nunique():,} users, "
        f"{len(source.items):,} item rows")
    for row in survey(source.ratings).itertuples(index=False):
        say(f"session gap {row.gap_s:>6,.0f} s: {row.sessions:6,} sessions, {row.rows:6,} rows, "
            f"median length {row.median_len:g}, mean {row.mean_len:.1f}")
    say(f"using a session gap of {gap:,.0f} s")
    # Read the side files before the (slower) build, so a broken one fails first.
    users = _read_keyed(source.folder / f"{NAME}.user", "user_id")
    links = _read_keyed(source.folder / f"{NAME}.link", "item_id")
    built = build(
        sessionize(source.ratings, gap), name, log=log, items=source.items,
        item_types=source.item_types,
    )
    out = Path(out)
    written = write_dataset(built.dataset, out)
    written.append(_write_users(out / f"{name}.user", users, built))
    written.append(_write_links(out / f"{name}.link", links, built))
    kg = (source.folder / f"{NAME}.kg").read_bytes()
    written.append(_write(out / f"{name}.kg", kg))
    written.append(_write(out / "README.md", _readme(name, gap, built).encode()))
    return written


def read_table(path: Path, required: Sequence[str]) -> pd.DataFrame:
    """A tab-separated atomic file as strings, columns named without their ``:type``.

    Args:
        path: the file.
        required: field names that must be in the header.

    Returns:
        The frame; its ``attrs["header"]`` keeps the original ``name:type`` columns.
    """
    try:
        frame = pd.read_csv(
            path, sep="\t", dtype=str, keep_default_na=False, quoting=csv.QUOTE_NONE,
            engine="c", encoding="utf-8",
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot read as a tab-separated atomic file: {error}") from error
    header = list(frame.columns)
    frame.columns = [str(column).partition(":")[0] for column in header]
    missing = [field for field in required if field not in frame.columns]
    if missing:
        raise DataError(f"{path}:1: header {header} lacks field(s) {missing}")
    frame.attrs["header"] = header
    return frame


def _read_keyed(path: Path, key: str) -> pd.DataFrame:
    """A side file whose ``key`` column holds integer ids."""
    frame = read_table(path, [key])
    header = frame.attrs["header"]
    frame[key] = _integers(frame[key], path, key)
    frame.attrs["header"] = header
    return frame


def _integers(values: pd.Series, path: Path, column: str) -> np.ndarray:
    bad = ~values.str.fullmatch(r"[0-9]{1,18}")
    _fail_on(bad, values, path, column, "a non-negative integer")
    return values.astype(np.int64).to_numpy()


def _numbers(values: pd.Series, path: Path, column: str) -> np.ndarray:
    parsed = pd.to_numeric(values, errors="coerce")
    _fail_on(parsed.isna(), values, path, column, "a number")
    return parsed.to_numpy(np.float64)


def _fail_on(bad: pd.Series, values: pd.Series, path: Path, column: str, kind: str) -> None:
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(
            f"{path}:{row + 2}: {column} {values.iloc[row]!r} is not {kind} "
            f"({int(bad.sum()):,} such rows)"
        )


def _write_users(path: Path, users: pd.DataFrame, built: Built) -> Path:
    """The user file in dataset user ids; users without a session in the dataset dropped."""
    mapped = users.assign(user_id=built.user_id_of(users["user_id"].to_numpy()))
    mapped = mapped[mapped["user_id"] > 0].sort_values("user_id", kind="stable")
    return _write_table(path, mapped, users.attrs["header"])


def _write_links(path: Path, links: pd.DataFrame, built: Built) -> Path:
    """The link file in dataset item ids; items not in the dataset dropped."""
    mapped = links.assign(item_id=built.item_id_of(links["item_id"].to_numpy()))
    mapped = mapped[mapped["item_id"] > 0].sort_values("item_id", kind="stable")
    return _write_table(path, mapped, links.attrs["header"])


def _write_table(path: Path, frame: pd.DataFrame, header: list[str]) -> Path:
    lines = ["\t".join(header)]
    lines += ["\t".join(map(str, row)) for row in frame.itertuples(index=False)]
    return _write(path, ("\n".join(lines) + "\n").encode())


def _write(path: Path, content: bytes) -> Path:
    write_atomically(path, lambda file: file.write(content))
    return path


def _readme(name: str, gap: float, built: Built) -> str:
    dataset = built.dataset
    n_users = 0 if built.user_ids is None else len(built.user_ids)
    counts = ", ".join(f"{split} {len(dataset.split(split)):,} rows" for split in
                       ("train", "valid", "test"))
    return f"""# {name}: MovieLens 100K as CORE session data

Source: {SOURCE}

{TERMS}

Built by `python -m data.prepare --dataset ml-100k` (module `data/movielens.py`, which documents
the rules): each user's ratings in time order (ties by item id); a new session after a gap of
more than {gap:,.0f} s; every rating is an interaction (ratings are not used); then CORE's
protocol (sessions of length 1 dropped, items seen < 5 times dropped, temporal 80/10/10 split by
session end, valid/test items unseen in train removed, prefix -> next rows, last 50 items).
Result: {dataset.n_items - 1:,} items, {n_users:,} users; {counts}.

Files: `{name}.{{train,valid,test}}.inter` (with `user_id:token`), `{name}.item`
(movie_title, release_year, class) in the dataset's item ids; `{name}.user` in the dataset's user
ids; `{name}.link` (item -> Freebase entity) with item ids mapped, items outside the dataset
dropped; `{name}.kg` (Freebase triples) unchanged.
"""
