"""A study's results as small files in the repository, from which its report is rebuilt alone.

Every finished piece of a study (``hpo.studies``) exports what the verdict needs under
``studies/<name>/<dataset label>/``, so the next session, on a fresh machine without the MLflow
store that produced them, continues the study and rebuilds its report:

- ``data.npz`` (+ ``data.json``): the test targets, the training-target counts per item (the
  report's head / tail / cold groups and popularity view) and the catalog size;
- ``search/<space>.json``: the selected configuration (validation only) with its trial and
  score, the budget, the trial-epochs trained and how each trial ended, the space file's
  SHA-256, the code version, CPU and wall time; ``search/<space>.trials.csv``: every trial's
  parameters, outcome, epochs and validation score;
- ``seeds/<space>/<arm>/seed-<N>.json``: the seed run's test metrics, best epoch, epochs
  trained, code version, CPU and wall time; ``seed-<N>.npz``: each test row's target rank
  clipped at ``TOP_K + 1`` (every metric and session-level test needs ranks up to the largest
  cut-off only; uint8) and the top-k slots each item holds (``verdict.results.exposure_counts``,
  stored sparse), which is all the list metrics need.

``StudyResults.test_results`` reads a dataset's seed runs back as the report's input
(``verdict.results.TestResults``); ``verdict.study_report`` rebuilds each dataset's report and
the study's Table 1 from them.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from models.metrics import METRIC_NAMES as METRICS
from models.metrics import TOP_K
from verdict.options import FULL_ARM
from verdict.results import TestResults

CLIPPED_RANK = TOP_K + 1  # every rank above the largest cut-off is stored as this
SELECTION_FIELDS = ("space", "variant", "trial_id", "metric", "value", "max_epochs", "config")


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes (the space files a result was made with).

    Args:
        path: the file.
    """
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def code_version(repo: str | Path | None = None) -> str:
    """``git describe --always --dirty`` of the checkout this code runs from ("unknown" outside
    git): which code made a result.

    Args:
        repo: a folder inside the checkout (default: this package's).
    """
    where = Path(repo) if repo else Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=12"],
                             cwd=where, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def compact_ranks(ranks) -> np.ndarray:
    """Ranks clipped at ``CLIPPED_RANK`` as uint8 (exact for every metric at k <= TOP_K).

    Args:
        ranks: 1-based integer ranks.
    """
    return np.minimum(np.asarray(ranks), CLIPPED_RANK).astype(np.uint8)


@dataclass(frozen=True)
class SeedRun:
    """One exported seed run: its record and its per-row arrays."""

    record: dict[str, Any]
    ranks: np.ndarray  # uint8 [n_rows], clipped at CLIPPED_RANK
    exposure: np.ndarray  # int64 [n_items], top-k slots per item id


class StudyResults:
    """The files of one study under ``root`` (``studies/<name>/``).

    Args:
        root: the study's results folder.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)

    # -- paths ------------------------------------------------------------------------------

    def dataset_dir(self, label: str) -> Path:
        """A dataset's folder: ``<root>/<label>``.

        Args:
            label: the dataset's label (its training-row cut included).
        """
        return self.root / label

    def search_file(self, label: str, space: str) -> Path:
        """A search's record: ``<label>/search/<space>.json``.

        Args:
            label: the dataset's label.
            space: the space's name.
        """
        return self.root / label / "search" / f"{space}.json"

    def trials_file(self, label: str, space: str) -> Path:
        """A search's trials: ``<label>/search/<space>.trials.csv``.

        Args:
            label: the dataset's label.
            space: the space's name.
        """
        return self.root / label / "search" / f"{space}.trials.csv"

    def seed_files(self, label: str, space: str, arm: str, seed: int) -> tuple[Path, Path]:
        """A seed run's record and arrays: ``<label>/seeds/<space>/<arm>/seed-<N>.json|.npz``.

        Args:
            label: the dataset's label.
            space: the space's name.
            arm: ``FULL_ARM`` or the ablation arm's name.
            seed: the training seed.
        """
        base = self.root / label / "seeds" / space / arm / f"seed-{seed}"
        return base.with_suffix(".json"), base.with_suffix(".npz")

    def report_dir(self, label: str) -> Path:
        """Where a dataset's report is rebuilt: ``<label>/report``.

        Args:
            label: the dataset's label.
        """
        return self.root / label / "report"

    # -- dataset ----------------------------------------------------------------------------

    def write_dataset(self, label: str, *, targets, popularity, n_items: int,
                      summary: str) -> None:
        """Keep what the report needs of a dataset (written once, by its first seed piece).

        Args:
            label: the dataset's label (its training-row cut included).
            targets: the test targets [n_rows].
            popularity: training-target count per item id [n_items].
            n_items: catalog size including padding.
            summary: the dataset's one-line summary.
        """
        folder = self.dataset_dir(label)
        folder.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(folder / "data.npz", targets=np.asarray(targets, dtype=np.int32),
                            popularity=np.asarray(popularity, dtype=np.int64))
        _write_json(folder / "data.json", {"n_items": int(n_items), "summary": summary,
                                           "test_rows": int(len(targets))})

    def has_dataset(self, label: str) -> bool:
        """Whether a dataset's arrays were exported (``write_dataset``).

        Args:
            label: the dataset's label.
        """
        folder = self.dataset_dir(label)
        return (folder / "data.npz").is_file() and (folder / "data.json").is_file()

    def read_dataset(self, label: str) -> tuple[np.ndarray, np.ndarray, int]:
        """A dataset's exported arrays.

        Args:
            label: the dataset's label.

        Returns:
            (test targets, training-target counts per item id, n_items).
        """
        folder = self.dataset_dir(label)
        with np.load(folder / "data.npz") as arrays:
            targets, popularity = arrays["targets"].astype(np.int64), arrays["popularity"]
        return targets, popularity, int(_read_json(folder / "data.json")["n_items"])

    # -- searches ---------------------------------------------------------------------------

    def write_search(self, label: str, space: str, *, selection: dict, trials: pd.DataFrame,
                     meta: dict) -> Path:
        """Export a finished search piece.

        Args:
            label: the dataset's label.
            space: the space's name.
            selection: ``SELECTION_FIELDS`` of the selected trial.
            trials: the search's trials table (``hpo.results.results_table``).
            meta: budget, trial-epochs, outcomes, importances, space file hash, code version,
                CPU, wall time, ...
        """
        path = self.search_file(label, space)
        path.parent.mkdir(parents=True, exist_ok=True)
        keep = [c for c in trials.columns if c not in ("config", "error", "order")]
        trials[keep].to_csv(self.trials_file(label, space), index=False)
        _write_json(path, {"selection": {k: selection[k] for k in SELECTION_FIELDS}, **meta})
        return path

    def search(self, label: str, space: str) -> dict | None:
        """A finished search's record (``selection`` and meta), or None.

        Args:
            label: the dataset's label.
            space: the space's name.
        """
        path = self.search_file(label, space)
        return _read_json(path) if path.is_file() else None

    def trials(self, label: str, space: str) -> pd.DataFrame:
        """A finished search's trials table.

        Args:
            label: the dataset's label.
            space: the space's name.
        """
        return pd.read_csv(self.trials_file(label, space))

    # -- seed runs --------------------------------------------------------------------------

    def write_seed(self, label: str, space: str, arm: str, seed: int, *, record: dict,
                   ranks, exposure) -> Path:
        """Export a finished seed run.

        Args:
            label, space, arm, seed: which run.
            record: test metrics (``test_<name>``), best epoch, epochs, meta.
            ranks: the test rows' target ranks.
            exposure: top-k slots per item id (``verdict.results.exposure_counts``).
        """
        json_path, npz_path = self.seed_files(label, space, arm, seed)
        json_path.parent.mkdir(parents=True, exist_ok=True)
        exposure = np.asarray(exposure, dtype=np.int64)
        held = np.flatnonzero(exposure)
        np.savez_compressed(npz_path, ranks=compact_ranks(ranks),
                            exposure_items=held.astype(np.int32),
                            exposure_counts=exposure[held].astype(np.int32),
                            n_items=np.int64(len(exposure)))
        _write_json(json_path, record)  # last: a record present means the run is whole
        return json_path

    def has_seed(self, label: str, space: str, arm: str, seed: int) -> bool:
        """Whether a seed run was exported whole (``write_seed``).

        Args:
            label, space, arm, seed: which run (``seed_files``).
        """
        json_path, npz_path = self.seed_files(label, space, arm, seed)
        return json_path.is_file() and npz_path.is_file()

    def seed(self, label: str, space: str, arm: str, seed: int) -> SeedRun:
        """An exported seed run, read back.

        Args:
            label, space, arm, seed: which run (``seed_files``).

        Returns:
            Its record, its ranks (clipped at ``CLIPPED_RANK``) and its exposure counts.
        """
        json_path, npz_path = self.seed_files(label, space, arm, seed)
        with np.load(npz_path) as arrays:
            exposure = np.zeros(int(arrays["n_items"]), dtype=np.int64)
            exposure[arrays["exposure_items"]] = arrays["exposure_counts"]
            ranks = arrays["ranks"].astype(np.int64)
        return SeedRun(_read_json(json_path), ranks, exposure)

    def piece_costs(self) -> pd.DataFrame:
        """What every exported piece cost: one row per search and seed run found under the
        root, in file order.

        Returns:
            dataset, piece (its id), kind, wall_s, attempts, side_by_side (seed runs trained
            at once with it, 1 alone; its ``wall_s`` is the group's), epochs (a search's
            trial-epochs, a seed run's epochs), device and finished.
        """
        rows = []
        for path in sorted(self.root.glob("*/search/*.json")):
            record = _read_json(path)
            label = path.parent.parent.name
            rows.append({"dataset": label, "piece": f"{label}/search/{path.stem}",
                         "kind": "search", "wall_s": record.get("wall_s"),
                         "attempts": record.get("attempts", 1), "side_by_side": 1,
                         "epochs": record.get("trial_epochs"), "device": record.get("device"),
                         "finished": record.get("finished")})
        for path in sorted(self.root.glob("*/seeds/*/*/seed-*.json")):
            record = _read_json(path)
            label, space, arm = path.parts[-5], path.parts[-3], path.parts[-2]
            seed = path.stem.removeprefix("seed-")
            rows.append({"dataset": label, "piece": f"{label}/seed/{space}/{arm}/{seed}",
                         "kind": "seed", "wall_s": record.get("wall_s"),
                         "attempts": record.get("attempts", 1),
                         "side_by_side": record.get("side_by_side", 1),
                         "epochs": record.get("epochs"), "device": record.get("device"),
                         "finished": record.get("finished")})
        return pd.DataFrame(rows, columns=["dataset", "piece", "kind", "wall_s", "attempts",
                                           "side_by_side", "epochs", "device", "finished"])

    def seed_results(
        self, label: str, runs: Sequence[tuple[str, str, int]]
    ) -> tuple[pd.DataFrame, dict, dict]:
        """The test stage's per-seed frame and per-row results of the given runs.

        Args:
            label: the dataset's label.
            runs: (space, arm, seed) of every run, in report order.

        Returns:
            (seed_results with dataset, variant, arm, seed, best_epoch, selected_from and every
            metric; {(label, space): [(ranks, exposure) per seed]} of the full arms;
            {(label, space, arm): [(ranks, exposure) per seed]} of the ablation arms).
        """
        rows, per_row, arm_per_row = [], {}, {}
        for space, arm, seed in runs:
            run = self.seed(label, space, arm, seed)
            rows.append({"dataset": label, "variant": space, "arm": arm, "seed": seed,
                         "best_epoch": run.record["best_epoch"],
                         "selected_from": run.record["selected_from"],
                         **{name: run.record[f"test_{name}"] for name in METRICS}})
            if arm == FULL_ARM:
                per_row.setdefault((label, space), []).append((run.ranks, run.exposure))
            else:
                arm_per_row.setdefault((label, space, arm), []).append((run.ranks,
                                                                        run.exposure))
        return pd.DataFrame(rows), per_row, arm_per_row

    def test_results(
        self, label: str, runs: Sequence[tuple[str, str, int]], *,
        skipped_arms: Mapping[tuple[str, str, str], str] | None = None,
    ) -> TestResults:
        """A dataset's exported seed runs as the report's input (``verdict.report``).

        Args:
            label: the dataset's label.
            runs: (space, arm, seed) of every run, in report order.
            skipped_arms: (label, space, arm) -> why that ablation arm was not retrained.

        Returns:
            ``seed_results``' frame and per-row results (the ablation arms' too) with the
            dataset's test targets, training-target counts and catalog size.
        """
        seed_results, per_row, arm_per_row = self.seed_results(label, runs)
        targets, popularity, n_items = self.read_dataset(label)
        return TestResults(seed_results, per_row, targets={label: targets},
                           popularity={label: popularity}, n_items={label: n_items},
                           skipped_arms=skipped_arms or None, arm_per_row=arm_per_row or None)


def _write_json(path: Path, data: dict) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data, indent=1, sort_keys=False, default=_plain) + "\n")
    partial.replace(path)


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {value!r}")
