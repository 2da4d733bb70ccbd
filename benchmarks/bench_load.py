"""Time loading a benchmark: cold (parse + validate the text) and warm (``.npz`` cache hit),
and parsing a large item-text file against pandas reading the same file.

python benchmarks/bench_load.py [--data-dir path/to/datasets] [--name tmall] [--item-lines N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402

from data import load_dataset  # noqa: E402
from data.items import read_item_file  # noqa: E402

# items incl. padding, train / valid / test rows of CORE's files
EXPECTED = {"tmall": (37_367, 275_356, 50_579, 101_862)}


def _timed(name: str, data_dir: str, use_cache: bool):
    start = time.perf_counter()
    dataset = load_dataset(name, data_dir, use_cache=use_cache)
    return dataset, time.perf_counter() - start


def item_file_figures(lines: int, repeats: int) -> tuple[float, float]:
    """Best-of-``repeats`` seconds to parse an item file of ``lines`` rows (title, year,
    genres) with ``read_item_file`` (checks included), and with a bare ``pandas.read_csv`` of
    the same file as the reference.

    Args:
        lines: item rows in the file.
        repeats: timings per reader.

    Returns:
        (read_item_file seconds, pandas seconds).
    """
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "bench.item"
        rows = (f"{i}\tItem number {i} with a title\t{1900 + i % 120}\tDrama Comedy"
                for i in range(1, lines + 1))
        path.write_text("\n".join(["item_id:token\ttitle:token_seq\tyear:token\t"
                                   "genres:token_seq", *rows]) + "\n", encoding="utf-8")

        def best(read) -> float:
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                read()
                times.append(time.perf_counter() - start)
            return min(times)

        ours = best(lambda: read_item_file(path, n_items=lines + 1).texts())
        reference = best(lambda: pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False))
    return ours, reference


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--data-dir", default=None, help="default: $CORE_DATA_DIR, else ./datasets")
    parser.add_argument("--name", default="tmall")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--item-lines", type=int, default=40_000,
                        help="rows of the generated item file timed (0: skip)")
    args = parser.parse_args()

    if args.item_lines:
        ours, reference = item_file_figures(args.item_lines, args.repeats)
        print(f"item file    {args.item_lines:,} rows: read_item_file + texts {ours:.3f} s, "
              f"pandas.read_csv {reference:.3f} s ({ours / reference:.1f}x, best of "
              f"{args.repeats})")

    cold = [_timed(args.name, args.data_dir, use_cache=False) for _ in range(args.repeats)]
    dataset, fill = _timed(args.name, args.data_dir, use_cache=True)  # builds the cache if absent
    warm = [_timed(args.name, args.data_dir, use_cache=True)[1] for _ in range(args.repeats)]

    rows = [len(dataset.split(split)) for split in ("train", "valid", "test")]
    print(f"dataset      {dataset.summary()}")
    best_cold = min(seconds for _, seconds in cold)
    print(f"cold load    {best_cold:.3f} s (parse + validate, best of {args.repeats})")
    print(f"first cached {fill:.3f} s (cache hit, or parse + cache write if it was absent)")
    print(f"warm load    {min(warm):.3f} s (cache hit, best of {args.repeats})")
    expected = EXPECTED.get(args.name)
    if expected is not None:
        ok = (dataset.n_items, *rows) == expected
        print(f"counts       {'match' if ok else 'DIFFER FROM'} CORE's {expected}")
        return 0 if ok else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
