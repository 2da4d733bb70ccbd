"""Command line: build CORE atomic files from a raw log (or synthetic data), then read them back.

python -m data.prepare --dataset diginetica --raw train-item-views.csv --out datasets/diginetica
python -m data.prepare --dataset retailrocket --raw events.csv.gz --out datasets/retailrocket
python -m data.prepare --dataset ml-100k --raw path/to/ml-100k --out datasets/ml-100k
python -m data.prepare --dataset synthetic --out datasets/synthetic [--preset small --seed 0]

RetailRocket's sessions follow ``--session-rule``: ``gap`` (default: a new session after more
than ``--session-gap-hours``, 8, without a view; reproduces CORE's released split byte for byte)
or ``day`` (one session per visitor and UTC day: CORE's script, the paper's statistics table).
Raw logs may be gzip-compressed. The read-back ends with a table of sessions, rows, items and
users per split and the number of items with text.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from data import movielens, synthetic
from data.atomic import load_atomic, write_dataset
from data.cli import OneLineParser
from data.dataset import SPLITS, SessionDataset, Split
from data.errors import DataError
from data.pipeline import build_dataset
from data.raw import (
    DEFAULT_SESSION_GAP_HOURS,
    DEFAULT_SESSION_RULE,
    RAW_FOLDERS,
    RAW_READERS,
    SESSION_RULES,
    read_events,
)

SESSION_DATASET = "retailrocket"  # the one raw log whose sessions are cut by a rule


def main(argv: list[str] | None = None) -> int:
    """``python -m data.prepare``: build a benchmark's atomic files from its raw log.

    Args:
        argv: the command line's arguments (None: ``sys.argv[1:]``).

    Returns:
        The exit code.
    """
    args = _parser().parse_args(argv)
    name = args.name or args.dataset
    start = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - start:7.2f}s] {message}", flush=True)

    try:
        options = _reader_options(args)
        if args.dataset == synthetic.SYNTHETIC:
            log(f"generating synthetic data (preset {args.preset}, seed {args.seed})")
            paths = synthetic.write_atomic(args.out, name, args.preset, args.seed, log=log)
        else:
            if args.raw is None:
                expected = (
                    f"its raw log is {RAW_READERS[args.dataset][0]}"
                    if args.dataset in RAW_READERS
                    else f"its raw folder holds {RAW_FOLDERS[args.dataset]}"
                )
                raise DataError(f"--raw is required for {args.dataset} ({expected})")
            log(f"reading {args.raw}")
            if args.dataset == movielens.NAME:
                paths = movielens.prepare(args.raw, args.out, name, log=log)
            else:
                events = read_events(args.dataset, args.raw, **options)
                log(f"read {len(events):,} events")
                paths = write_dataset(build_dataset(events, name, log=log), args.out)
        log(f"wrote {', '.join(map(str, paths))}")
        check = load_atomic(args.out, name)
        log(f"read back: {check.summary()}")
        for line in describe(check):
            print(line)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def _reader_options(args: argparse.Namespace) -> dict:
    """Keyword options for the raw reader: the session rule for retailrocket, nothing otherwise.

    Args:
        args: the parsed command line.

    Returns:
        ``{"rule": ..., "gap_hours": ...}`` for retailrocket, ``{}`` for the other datasets.
    """
    given = [
        flag
        for flag, value in (
            ("--session-rule", args.session_rule),
            ("--session-gap-hours", args.session_gap_hours),
        )
        if value is not None
    ]
    if args.dataset != SESSION_DATASET:
        if given:
            verb = "applies" if len(given) == 1 else "apply"
            raise DataError(f"{' and '.join(given)} {verb} to {SESSION_DATASET} only")
        return {}
    rule = args.session_rule or DEFAULT_SESSION_RULE
    if rule == "day" and args.session_gap_hours is not None:
        raise DataError("--session-gap-hours applies to --session-rule gap only")
    return {"rule": rule, "gap_hours": args.session_gap_hours}


def split_counts(split: Split) -> dict[str, int]:
    """Sessions, rows, distinct items and distinct known users of one split.

    Args:
        split: an expanded split; each session has exactly one row with a 1-item prefix.

    Returns:
        ``sessions``, ``rows``, ``items`` and ``users``.
    """
    items = np.union1d(split.prefixes[split.prefixes > 0], split.targets)
    users = 0 if split.users is None else len(np.unique(split.users[split.users > 0]))
    return {
        "sessions": int(np.sum(split.lengths == 1)),
        "rows": len(split),
        "items": len(items),
        "users": users,
    }


def describe(dataset: SessionDataset) -> list[str]:
    """A small table: sessions / rows / items / users per split, then the catalog and text.

    Args:
        dataset: a dataset with all three splits.

    Returns:
        The table's lines.
    """
    lines = [f"{'split':<6} {'sessions':>9} {'rows':>10} {'items':>8} {'users':>7}"]
    for name in SPLITS:
        counts = split_counts(dataset.split(name))
        lines.append(
            f"{name:<6} {counts['sessions']:>9,} {counts['rows']:>10,} {counts['items']:>8,} "
            f"{counts['users'] if dataset.train.users is not None else '-':>7}"
        )
    if dataset.train.users is None:
        users = "no users"
    else:
        every = np.concatenate([dataset.split(name).users for name in SPLITS])
        users = f"{len(np.unique(every[every > 0])):,} users"
        if np.any(every == 0):
            users += f" ({int(np.sum(every == 0)):,} rows of unknown users)"
    if dataset.items is None:
        text = "no item file"
    else:
        text = (
            f"{dataset.items.items_with_text():,} of {dataset.n_items - 1:,} items have text "
            f"(fields {', '.join(f'{k}:{v}' for k, v in dataset.items.types.items())})"
        )
    lines.append(f"catalog: {dataset.n_items - 1:,} items; {users}; {text}")
    return lines


def _parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="python -m data.prepare", description=__doc__.split("\n", maxsplit=1)[0]
    )
    parser.add_argument(
        "--dataset",
        required=True,
        choices=[*sorted([*RAW_READERS, *RAW_FOLDERS]), synthetic.SYNTHETIC],
    )
    parser.add_argument(
        "--raw", help="raw log file, or the raw folder for ml-100k (not used for synthetic)"
    )
    parser.add_argument(
        "--out", required=True, help="folder for <name>.{train,valid,test}.inter (and .item)"
    )
    parser.add_argument("--name", help="file name prefix (default: the dataset)")
    parser.add_argument(
        "--session-rule",
        choices=SESSION_RULES,
        help=f"{SESSION_DATASET} only: 'gap' (default) starts a visitor's new session after more "
        "than --session-gap-hours without a view and reproduces CORE's released split byte for "
        "byte; 'day' starts one at each UTC day change (CORE's published script, the paper's "
        "statistics table)",
    )
    parser.add_argument(
        "--session-gap-hours",
        type=float,
        metavar="HOURS",
        help=f"{SESSION_DATASET}, --session-rule gap only: the gap in hours "
        f"(default {DEFAULT_SESSION_GAP_HOURS:g}; exactly this long stays one session)",
    )
    parser.add_argument("--preset", default="small", choices=sorted(synthetic.PRESETS))
    parser.add_argument("--seed", type=int, default=0, help="synthetic generator seed")
    return parser


if __name__ == "__main__":
    sys.exit(main())
