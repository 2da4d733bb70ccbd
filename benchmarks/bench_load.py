"""Time loading a benchmark: cold (parse + validate the text) and warm (``.npz`` cache hit).

python benchmarks/bench_load.py [--data-dir path/to/datasets] [--name tmall]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data import load_dataset  # noqa: E402

# items incl. padding, train / valid / test rows of CORE's files
EXPECTED = {"tmall": (37_367, 275_356, 50_579, 101_862)}


def _timed(name: str, data_dir: str, use_cache: bool):
    start = time.perf_counter()
    dataset = load_dataset(name, data_dir, use_cache=use_cache)
    return dataset, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--data-dir", default=None, help="default: $CORE_DATA_DIR, else ./datasets")
    parser.add_argument("--name", default="tmall")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

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
