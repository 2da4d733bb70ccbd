"""Command line: build CORE atomic files from a raw log (or synthetic data), then read them back.

python -m data.prepare --dataset diginetica --raw train-item-views.csv --out datasets/diginetica
python -m data.prepare --dataset synthetic --out datasets/synthetic [--preset small --seed 0]
"""

from __future__ import annotations

import argparse
import sys
import time

from data import synthetic
from data.atomic import load_atomic, write_dataset
from data.errors import DataError
from data.pipeline import build_dataset
from data.raw import RAW_READERS, read_events


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    name = args.name or args.dataset
    start = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - start:7.2f}s] {message}", flush=True)

    try:
        if args.dataset == synthetic.SYNTHETIC:
            log(f"generating synthetic data (preset {args.preset}, seed {args.seed})")
            paths = synthetic.write_atomic(args.out, name, args.preset, args.seed, log=log)
        else:
            if args.raw is None:
                raise DataError(
                    f"--raw is required for {args.dataset} "
                    f"(its raw log is {RAW_READERS[args.dataset][0]})"
                )
            log(f"reading {args.raw}")
            events = read_events(args.dataset, args.raw)
            log(f"read {len(events):,} events")
            paths = write_dataset(build_dataset(events, name, log=log), args.out)
        log(f"wrote {', '.join(map(str, paths))}")
        check = load_atomic(args.out, name)
        log(f"read back: {check.summary()}")
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m data.prepare", description=__doc__.split("\n", maxsplit=1)[0]
    )
    parser.add_argument(
        "--dataset", required=True, choices=[*sorted(RAW_READERS), synthetic.SYNTHETIC]
    )
    parser.add_argument("--raw", help="raw log file (not used for synthetic)")
    parser.add_argument("--out", required=True, help="folder for <name>.{train,valid,test}.inter")
    parser.add_argument("--name", help="file name prefix (default: the dataset)")
    parser.add_argument("--preset", default="small", choices=sorted(synthetic.PRESETS))
    parser.add_argument("--seed", type=int, default=0, help="synthetic generator seed")
    return parser


if __name__ == "__main__":
    sys.exit(main())
