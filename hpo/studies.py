"""Study files: a whole comparison run piece by piece, across machines and days.

``python launch.py --study studies/table1.yaml`` runs a study file::

    description: Table 1 ...
    spaces: [ave.yaml, trm.yaml, da.yaml, sknn.yaml]   # the arms, compared on every dataset
    datasets:                  # in order; each with the budget every arm gets there
      tmall: {budget: {num_samples: 10, max_epochs: 10, grace_period: 1, reduction_factor: 3}}
      diginetica: {train_rows: 100000, budget: {...}}   # a declared training-row cut
    seeds: 5                   # retrainings of each selection (seed+1 .. seed+N)
    seed: 0                    # the searches' TPE seed and the resampling tests' seed
    retrain_max_epochs: 30     # epoch budget of a retraining (patience stops it earlier)
    baseline: strongest        # or a space name
    baseline_candidates: [ave, trm, sknn]   # for strongest: chosen per dataset on validation
    correction: holm
    alpha: 0.01
    ablate:                    # ablation arms: the changes, and optionally the spaces they
      - {set: {da_gating: false}, spaces: [da]}     # apply to (default: every space that has
      - {set: {hn_lambda: 0}}                       # the keys)

The study is checked whole before anything runs: every space file, the fairness of the arms
(``hpo.fairness``, with the study's budget), the arms, the baseline and the correction.

**Pieces.** One piece is the search of one space on one dataset, or one seed run (a space's
selected configuration, or an ablation arm of it, retrained with one seed and scored once on
test). A seed run needs its space's search. A piece that finished has exported its results
under ``studies/<name>/`` (``hpo.study_results``) and is never run again; one that was
interrupted resumes: a search with its study and trials (``--resume``), a seed run from its
last epoch. Working state (trial checkpoints, the MLflow store, the Optuna studies) lives under
``<output-dir>/studies/<name>/``; only the exports need committing (``--commit`` commits each
piece as it finishes). When the last piece of a dataset finishes, its report is written to
``studies/<name>/<dataset>/report/`` from the exports alone, and the study's Table 1 to
``studies/<name>/table1.md`` (``--report`` rebuilds them).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import yaml

from data import DatasetSource
from hpo.ablation import AblationError, Arm, arm_jobs, parse_arm, value_text
from hpo.cluster import Resources
from hpo.fairness import check_fair_arms
from hpo.options import BASELINE_VARIANTS, CORRECTIONS, DEFAULT_ALPHA, STRONGEST
from hpo.space import Budget, SearchSpace, SpaceError, load_space, parse_budget
from hpo.stats import FULL_ARM
from hpo.study_results import StudyResults

log = logging.getLogger(__name__)

STUDY_KEYS = {"name", "description", "spaces", "datasets", "seeds", "seed",
              "retrain_max_epochs", "baseline", "baseline_candidates", "correction", "alpha",
              "ablate", "allow_unequal_spaces"}
DATASET_KEYS = {"train_rows", "budget"}
DONE, PARTIAL, TODO, WAITING, SKIPPED = "done", "partial", "to do", "waiting", "skipped"


class StudyError(ValueError):
    """An invalid study file, or a study that cannot go on; the message says which and why."""


@dataclass(frozen=True)
class StudyDataset:
    """One dataset of a study: its name, an optional training-row cut and every arm's budget."""

    name: str
    budget: Budget
    train_rows: int | None = None

    def source(self, data_dir: Path | None, text_model: str | None = None) -> DatasetSource:
        return DatasetSource(self.name, data_dir, self.train_rows, text_model)

    @property
    def label(self) -> str:
        return DatasetSource(self.name, None, self.train_rows).label


@dataclass(frozen=True)
class StudyArm:
    """An ablation arm of a study, limited to some spaces (None: every space with its keys)."""

    arm: Arm
    spaces: tuple[str, ...] | None = None

    def applies_to(self, space: SearchSpace) -> bool:
        return self.arm.applies_to(space.model) and (
            self.spaces is None or space.name in self.spaces)


@dataclass(frozen=True)
class Study:
    """A parsed, checked study file."""

    name: str
    path: Path
    description: str
    spaces: tuple[SearchSpace, ...]
    datasets: tuple[StudyDataset, ...]
    seeds: tuple[int, ...]
    seed: int = 0
    retrain_max_epochs: int = 30
    baseline: str = STRONGEST
    baseline_candidates: tuple[str, ...] = ()
    correction: str = "holm"
    alpha: float = DEFAULT_ALPHA
    arms: tuple[StudyArm, ...] = ()
    allow_unequal_spaces: bool = False
    unequal: tuple[str, ...] = field(default=())  # differences allowed, for the report

    @property
    def results_dir(self) -> Path:
        """``studies/<name>/``: beside the study file."""
        return self.path.parent / self.name

    def space(self, name: str) -> SearchSpace:
        return next(s for s in self.spaces if s.name == name)


def load_study(path: str | Path) -> Study:
    """Read and check a study file (see the module docstring).

    Args:
        path: the study file.

    Raises:
        StudyError: naming the file and the problem (space files, fairness, arms, baseline).
    """
    path = Path(path).resolve()

    def fail(problem: str) -> StudyError:
        return StudyError(f"{path}: {problem}")

    if not path.is_file():
        raise StudyError(f"study file {path} not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise fail(f"not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise fail("expected a mapping at the top level")
    unknown = sorted(set(raw) - STUDY_KEYS)
    if unknown:
        raise fail(f"unknown key(s) {unknown}; expected some of {sorted(STUDY_KEYS)}")
    name = str(raw.get("name") or path.stem)
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise fail(f"name {name!r} must be letters, digits, '_', '.' or '-'")
    files = raw.get("spaces")
    if not isinstance(files, list) or len(files) < 2:
        raise fail("'spaces' must list at least two search-space files")
    try:
        spaces = tuple(load_space(file) for file in files)
    except SpaceError as exc:
        raise fail(str(exc)) from None
    names = [s.name for s in spaces]
    if len(set(names)) != len(names):
        raise fail(f"'spaces' names a space twice: {names}")
    datasets = _parse_datasets(raw.get("datasets"), fail)
    seeds = _integer(raw.get("seeds", 5), "seeds", fail, minimum=2)
    seed = _integer(raw.get("seed", 0), "seed", fail, minimum=0)
    retrain = _integer(raw.get("retrain_max_epochs", 30), "retrain_max_epochs", fail)
    correction = raw.get("correction", "holm")
    if correction not in CORRECTIONS:
        raise fail(f"'correction' must be one of {CORRECTIONS}; got {correction!r}")
    alpha = raw.get("alpha", DEFAULT_ALPHA)
    if not isinstance(alpha, float) or not 0.0 < alpha < 1.0:
        raise fail(f"'alpha' must be a number in (0, 1); got {alpha!r}")
    baseline = str(raw.get("baseline", STRONGEST))
    candidates = raw.get("baseline_candidates")
    if candidates is None:
        candidates = [s.name for s in spaces if s.model in BASELINE_VARIANTS]
    if not isinstance(candidates, list) or not set(candidates) <= set(names):
        raise fail(f"'baseline_candidates' must list spaces of the study ({names}); "
                   f"got {candidates!r}")
    if baseline == STRONGEST and not candidates:
        raise fail(f"baseline {STRONGEST} needs 'baseline_candidates' (or an ave / trm / kNN "
                   "space among the spaces)")
    if baseline != STRONGEST and baseline not in names:
        raise fail(f"'baseline' {baseline!r} is not one of the spaces {names}")
    arms = _parse_arms(raw.get("ablate") or [], spaces, fail)
    allow = bool(raw.get("allow_unequal_spaces", False))
    unequal = []
    for dataset in datasets:
        try:
            found = check_fair_arms(spaces, [dataset.budget] * len(spaces), allow=allow,
                                    option="allow_unequal_spaces: true in the study file")
        except ValueError as exc:
            raise fail(str(exc)) from None
        unequal += [str(d) for d in found]
    return Study(
        name=name, path=path, description=str(raw.get("description") or "").strip(),
        spaces=spaces, datasets=datasets, seeds=tuple(range(seed + 1, seed + 1 + seeds)),
        seed=seed, retrain_max_epochs=retrain, baseline=baseline,
        baseline_candidates=tuple(candidates), correction=correction, alpha=alpha, arms=arms,
        allow_unequal_spaces=allow, unequal=tuple(dict.fromkeys(unequal)),
    )


def _integer(value: Any, key: str, fail, minimum: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise fail(f"'{key}' must be an integer >= {minimum}; got {value!r}")
    return value


def _parse_datasets(raw: Any, fail) -> tuple[StudyDataset, ...]:
    if not isinstance(raw, dict) or not raw:
        raise fail("'datasets' must map dataset names to their budget (and train_rows)")
    out = []
    for name, entry in raw.items():
        entry = entry or {}
        if not isinstance(entry, dict):
            raise fail(f"datasets.{name} must be a mapping")
        unknown = sorted(set(entry) - DATASET_KEYS)
        if unknown:
            raise fail(f"datasets.{name}: unknown key(s) {unknown}; "
                       f"expected {sorted(DATASET_KEYS)}")
        rows = entry.get("train_rows")
        if rows is not None:
            rows = _integer(rows, f"datasets.{name}.train_rows", fail)
        budget = parse_budget(entry.get("budget") or {}, Budget(), fail, f"datasets.{name}.budget")
        out.append(StudyDataset(str(name), budget, rows))
    return tuple(out)


def _parse_arms(raw: Any, spaces: tuple[SearchSpace, ...], fail) -> tuple[StudyArm, ...]:
    if not isinstance(raw, list):
        raise fail("'ablate' must be a list of arms ({set: {KEY: VALUE}, spaces: [...]})")
    names = [s.name for s in spaces]
    out = []
    for entry in raw:
        if not isinstance(entry, dict) or "set" not in entry or set(entry) - {"set", "spaces"}:
            raise fail(f"ablation arm {entry!r}: expected {{set: {{KEY: VALUE}}, spaces: [...]}}")
        changes = entry["set"]
        if not isinstance(changes, dict) or not changes:
            raise fail(f"ablation arm {entry!r}: 'set' must map config keys to values")
        try:
            arm = parse_arm([f"{key}={value_text(value)}" for key, value in changes.items()])
        except AblationError as exc:
            raise fail(str(exc)) from None
        limit = entry.get("spaces")
        if limit is not None and (not isinstance(limit, list) or not set(limit) <= set(names)):
            raise fail(f"ablation arm {arm.name}: 'spaces' must list spaces of the study "
                       f"({names}); got {limit!r}")
        study_arm = StudyArm(arm, tuple(limit) if limit is not None else None)
        takers = [s for s in spaces if study_arm.applies_to(s)]
        if not takers:
            raise fail(f"ablation arm {arm.name}: no space of the study has its keys")
        for space in takers:
            try:
                from models.registry import resolve_config

                resolve_config(arm.apply({"model": space.model, **space.fixed}))
            except (TypeError, ValueError) as exc:
                raise fail(f"ablation arm {arm.name}: invalid for {space.name}: {exc}") from None
        out.append(study_arm)
    if len({a.arm.name for a in out}) != len(out):
        raise fail("'ablate' names an arm twice")
    return tuple(out)


# ------------------------------------------------------------------------------- pieces


@dataclass(frozen=True)
class Piece:
    """One unit of a study's work: a search, or one seed run of a (space, arm)."""

    kind: str  # "search" or "seed"
    dataset: StudyDataset
    space: SearchSpace
    arm: str = FULL_ARM
    seed: int | None = None

    @property
    def id(self) -> str:
        if self.kind == "search":
            return f"{self.dataset.label}/search/{self.space.name}"
        return f"{self.dataset.label}/seed/{self.space.name}/{self.arm}/{self.seed}"


@dataclass(frozen=True)
class PieceState:
    piece: Piece
    state: str  # DONE, PARTIAL, TODO, WAITING, SKIPPED
    note: str = ""
    config: dict | None = None  # a seed run's configuration, once its search is done


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=,-]+", "_", text)


def work_dir(study: Study, output_dir: Path) -> Path:
    """Where a study's working state lives (not committed): ``<output-dir>/studies/<name>``."""
    return Path(output_dir).resolve() / "studies" / study.name


def search_dir(study: Study, output_dir: Path, piece: Piece) -> Path:
    return work_dir(study, output_dir) / piece.dataset.label / piece.space.name / "search"


def seed_dir(study: Study, output_dir: Path, piece: Piece) -> Path:
    return (work_dir(study, output_dir) / piece.dataset.label / piece.space.name / "seeds"
            / _safe(piece.arm) / f"seed-{piece.seed}")


def selection_of(results: StudyResults, dataset: StudyDataset, space: SearchSpace):
    """The exported selection of a space on a dataset as an ``hpo.selection.Selection``, or
    None while its search is not done."""
    from hpo.selection import Selection

    record = results.search(dataset.label, space.name)
    if record is None:
        return None
    s = record["selection"]
    return Selection(dataset=dataset.label, space=s["space"], variant=s["variant"],
                     search_run_id=record.get("parent_run_id", ""), trial_run_id=s["trial_id"],
                     trial_id=s["trial_id"], metric=s["metric"], value=s["value"],
                     max_epochs=s["max_epochs"], config=s["config"])


def pieces(study: Study, output_dir: Path | None = None) -> list[PieceState]:
    """Every piece of the study in run order with its state: per dataset, the searches, then
    the seed runs of each space's selection and of its ablation arms.

    Args:
        study: the study.
        output_dir: the launch's output directory (where interrupted pieces left their state;
            None: not looked at, an interrupted piece counts as to do).
    """
    results = StudyResults(study.results_dir)
    out = []
    for dataset in study.datasets:
        for space in study.spaces:
            piece = Piece("search", dataset, space)
            if results.search(dataset.label, space.name) is not None:
                out.append(PieceState(piece, DONE))
            elif output_dir is not None and (
                    search_dir(study, output_dir, piece) / "search.json").is_file():
                out.append(PieceState(piece, PARTIAL, "resumes its search"))
            else:
                out.append(PieceState(piece, TODO))
        for space in study.spaces:
            selection = selection_of(results, dataset, space)
            arms = [(FULL_ARM, None)] + [(a.arm.name, a) for a in study.arms
                                         if a.applies_to(space)]
            for arm_name, study_arm in arms:
                config, note = None, ""
                if selection is not None:
                    config = selection.config
                    if study_arm is not None:
                        jobs, skipped = arm_jobs([study_arm.arm], [selection])
                        if skipped:
                            note = next(iter(skipped.values()))
                        else:
                            config = jobs[0][2]
                for seed in study.seeds:
                    piece = Piece("seed", dataset, space, arm_name, seed)
                    if selection is None:
                        state = PieceState(piece, WAITING, f"needs {dataset.label}/search/"
                                                           f"{space.name}")
                    elif note:
                        state = PieceState(piece, SKIPPED, note)
                    elif results.has_seed(dataset.label, space.name, arm_name, seed):
                        state = PieceState(piece, DONE, config=config)
                    elif output_dir is not None and seed_dir(study, output_dir, piece).is_dir():
                        state = PieceState(piece, PARTIAL, "resumes from its last epoch",
                                           config=config)
                    else:
                        state = PieceState(piece, TODO, config=config)
                    out.append(state)
    return out


def dataset_complete(states: list[PieceState], dataset: StudyDataset) -> bool:
    """Whether every piece of ``dataset`` is done (or skipped)."""
    return all(s.state in (DONE, SKIPPED) for s in states
               if s.piece.dataset.label == dataset.label)


def select(states: list[PieceState], only: list[str] | None) -> Iterator[PieceState]:
    """The pieces still to run, in order, limited to ids matching one of ``only`` (globs)."""
    for state in states:
        if state.state not in (TODO, PARTIAL):
            continue
        if only and not any(fnmatch(state.piece.id, pattern) for pattern in only):
            continue
        yield state


# ---------------------------------------------------------------------------- running


@dataclass
class StudyRun:
    """How the pieces run: where data and working state are, resources, tracking."""

    study: Study
    output_dir: Path
    data_dir: Path | None = None
    text_model: str | None = None
    resources: Resources = field(default_factory=Resources)
    mlflow_uri: str | None = None
    optuna_storage: str | None = None
    verbose: bool = False
    commit: bool = False
    command_line: str = ""
    precision: str | None = None  # --precision of every piece (None: the configs', auto)

    @property
    def work(self) -> Path:
        return work_dir(self.study, self.output_dir)

    @property
    def results(self) -> StudyResults:
        return StudyResults(self.study.results_dir)

    def tracking_uri(self) -> str:
        from hpo.tracking import resolve_tracking_uri

        return resolve_tracking_uri(self.mlflow_uri, self.work)

    def run_piece(self, state: PieceState) -> dict:
        """Run (or resume) one piece and export its results; returns its export record."""
        started = time.perf_counter()
        piece = state.piece
        if piece.kind == "search":
            record = self._run_search(piece, resume=state.state == PARTIAL)
        else:
            record = self._run_seed(piece, state.config, restore=state.state == PARTIAL,
                                    started=started)
        if self.commit:
            commit_results(self.study, f"study {self.study.name}: {piece.id}")
        return record

    def _run_search(self, piece: Piece, resume: bool) -> dict:
        from hpo.cost import device_name
        from hpo.search import SearchPlan, run_search
        from hpo.selection import select_best
        from hpo.study_results import code_version, file_sha256
        from hpo.tracking import check_tracking

        folder = search_dir(self.study, self.output_dir, piece)
        if not resume and folder.exists():
            shutil.rmtree(folder)  # a start that died before it recorded anything
        folder.parent.mkdir(parents=True, exist_ok=True)
        plan = SearchPlan(
            space=piece.space, dataset=piece.dataset.source(self.data_dir, self.text_model),
            budget=piece.dataset.budget, seed=self.study.seed, resources=self.resources,
            output_dir=self.work, tracking_uri=self.tracking_uri(),
            command_line=self.command_line, search_dir=folder,
            optuna_storage=self.optuna_storage, precision=self.precision)
        print(plan.headline(), flush=True)
        attempts = _attempt(folder.parent / "search-piece.json")
        started = time.perf_counter()
        outcome = run_search(plan, resume=resume, verbose=self.verbose)
        wall = time.perf_counter() - started
        client = check_tracking(plan.tracking_uri)
        selection = select_best(client, plan.dataset.label, piece.space.name,
                                plan.budget.metric, plan.budget.mode,
                                search_run_id=outcome.parent_run_id)
        table = outcome.table
        meta = {
            "study": self.study.name, "dataset": plan.dataset.label,
            "budget": {k: getattr(plan.budget, k) for k in Budget.__dataclass_fields__},
            "trials": int(len(table)),
            "outcomes": {str(k): int(v) for k, v in table["outcome"].value_counts().items()},
            "trial_epochs": int(table["epochs"].sum()),
            "importance": {r.parameter: float(r.importance)
                           for r in outcome.importance.itertuples()},
            "importance_method": outcome.importance_note,
            "space_file": piece.space.path.name,
            "space_sha256": file_sha256(piece.space.path),
            "code_version": code_version(), "device": device_name(),
            "cpus_per_trial": self.resources.cpus_per_trial,
            "wall_s": round(wall, 1), **attempts,
            "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
            "parent_run_id": outcome.parent_run_id,
        }
        sel = {"space": selection.space, "variant": selection.variant,
               "trial_id": selection.trial_id, "metric": selection.metric,
               "value": selection.value, "max_epochs": selection.max_epochs,
               "config": selection.config}
        self.results.write_search(plan.dataset.label, piece.space.name, selection=sel,
                                  trials=table, meta=meta)
        print(f"piece {piece.id} done in {_minutes(wall)}: selected trial {selection.trial_id} "
              f"({selection.metric} {selection.value:.4f})", flush=True)
        return meta

    def _run_seed(self, piece: Piece, config: dict, restore: bool, started: float) -> dict:
        import numpy as np

        from hpo.beyond import exposure_counts
        from hpo.cluster import init_ray, tune_experiment_name
        from hpo.cost import device_name
        from hpo.study_results import code_version
        from hpo.test_stage import TEST_ROWS_FILE, run_seed_jobs, seed_job, train_popularity
        from models.registry import dataset_needs

        source = piece.dataset.source(self.data_dir, self.text_model)
        dataset = source.load(**dataset_needs(piece.space.model))
        label = source.label
        if not self.results.has_dataset(label):
            self.results.write_dataset(label, targets=dataset.test.targets,
                                       popularity=train_popularity(dataset),
                                       n_items=dataset.n_items, summary=dataset.summary())
        folder = seed_dir(self.study, self.output_dir, piece)
        folder.mkdir(parents=True, exist_ok=True)
        init_ray(self.resources.address, log_to_driver=self.verbose)
        resources = _whole_node(self.resources)
        parent = self._test_parent(label)
        search = self.results.search(label, piece.space.name)
        job = seed_job(space=piece.space.name, arm=piece.arm, seed=piece.seed,
                       selected_from=search["selection"]["trial_id"], config=config,
                       max_epochs=self.study.retrain_max_epochs, precision=self.precision)
        state_file = folder / "piece.json"
        attempts = _attempt(state_file)
        known = json.loads(state_file.read_text())
        name = known.get("experiment") or (tune_experiment_name("seed", parent)
                                            + f"-{_safe(piece.id)[-60:]}")
        state_file.write_text(json.dumps({**known, "experiment": name, "piece": piece.id}))
        grid = run_seed_jobs([job], dataset, resources=resources,
                             tracking_uri=self.tracking_uri(), parent_run_id=parent,
                             storage=str(folder), name=name,
                             tags={"dataset": label, "study": self.study.name},
                             verbose=self.verbose, restore=restore)
        result = grid[0]
        if result.error is not None:
            raise StudyError(f"piece {piece.id} failed: {result.error}")
        with result.checkpoint.as_directory() as directory:
            with np.load(Path(directory) / TEST_ROWS_FILE) as arrays:
                ranks, topk = arrays["ranks"], arrays["topk"]
        metrics = result.metrics
        wall = time.perf_counter() - started
        record = {
            "study": self.study.name, "dataset": label, "space": piece.space.name,
            "variant": piece.space.model, "arm": piece.arm, "seed": piece.seed,
            "selected_from": job["selected_from"], "config": job["config"],
            "best_epoch": int(metrics["best_epoch"]), "epochs": int(metrics["epoch"]),
            **{k: float(v) for k, v in metrics.items() if k.startswith("test_")},
            "code_version": code_version(), "device": device_name(),
            "threads": resources.torch_threads,
            **{key: metrics[key] for key in ("precision_used", "loss_impl_used") if key in metrics},
            "wall_s": round(wall, 1), **attempts,
            "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        self.results.write_seed(label, piece.space.name, piece.arm, piece.seed, record=record,
                                ranks=ranks, exposure=exposure_counts(topk, dataset.n_items))
        print(f"piece {piece.id} done in {_minutes(wall)}: best epoch {record['best_epoch']} "
              f"of {record['epochs']}; test R@20 {100 * record['test_recall_20']:.2f} "
              f"MRR@20 {100 * record['test_mrr_20']:.2f}", flush=True)
        return record

    def _test_parent(self, label: str) -> str:
        """The MLflow parent run of the study's seed runs on ``label`` (created once per store)."""
        from hpo.tracking import (
            check_tracking,
            default_artifact_location,
            get_or_create_experiment,
            log_params,
        )

        uri = self.tracking_uri()
        record = self.work / label / "test_parent.json"
        known = json.loads(record.read_text()) if record.is_file() else {}
        client = check_tracking(uri)
        if uri in known:
            return known[uri]
        experiment = f"{label}/test"
        experiment_id = get_or_create_experiment(
            client, experiment, default_artifact_location(uri, self.work, experiment))
        run = client.create_run(experiment_id, run_name=f"study-{self.study.name}",
                                tags={"stage": "test", "dataset": label,
                                      "study": self.study.name})
        log_params(client, run.info.run_id, {
            "study_file": str(self.study.path.name), "seeds": ",".join(map(str, self.study.seeds)),
            "retrain_max_epochs": self.study.retrain_max_epochs,
            "command_line": self.command_line})
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps({**known, uri: run.info.run_id}))
        return run.info.run_id


def _whole_node(resources: Resources) -> Resources:
    """A seed piece's resources: one trial given every CPU a search would spread over its
    concurrent trials (one seed run at a time; its torch threads follow)."""
    from dataclasses import replace

    cpus = resources.cpus_per_trial * resources.concurrent_trials()
    return replace(resources, cpus_per_trial=float(max(1, int(cpus))), max_concurrent=1)


def _attempt(record: Path) -> dict:
    """Count one more attempt at a piece in its working-state ``record`` (JSON), keeping when the
    first began: an interrupted piece's export says it took several attempts, and its
    ``wall_s`` is the last attempt's alone.

    Returns:
        ``{"attempts": n, "first_started": "YYYY-mm-dd HH:MM:SS"}``.
    """
    known = json.loads(record.read_text()) if record.is_file() else {}
    known["attempts"] = int(known.get("attempts", 0)) + 1
    known.setdefault("first_started", time.strftime("%Y-%m-%d %H:%M:%S"))
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(known))
    return {"attempts": known["attempts"], "first_started": known["first_started"]}


def _minutes(seconds: float) -> str:
    from hpo.cost import format_duration

    return format_duration(seconds)


def commit_results(study: Study, message: str) -> None:
    """``git add`` the study's results folder and commit it (``--commit``).

    Raises:
        StudyError: git refused (the message says why).
    """
    folder = study.results_dir
    try:
        subprocess.run(["git", "add", "--", str(folder)], cwd=folder.parent, check=True,
                       capture_output=True, text=True, timeout=60)
        staged = subprocess.run(["git", "diff", "--cached", "--quiet", "--", str(folder)],
                                cwd=folder.parent, capture_output=True, timeout=60)
        if staged.returncode == 0:
            return
        subprocess.run(["git", "commit", "-q", "-m", message, "--", str(folder)],
                       cwd=folder.parent, check=True, capture_output=True, text=True,
                       timeout=60)
    except subprocess.CalledProcessError as exc:
        raise StudyError(f"--commit: git failed: {exc.stderr.strip() or exc}") from None
    except (OSError, subprocess.SubprocessError) as exc:
        raise StudyError(f"--commit: {exc}") from None


# ------------------------------------------------------------------------- the plan and cost


def describe_study(run: StudyRun, only: list[str] | None = None) -> str:
    """The study's plan for ``--dry-run``: each dataset's pieces grouped by state, and what the
    pieces still to run will cost here (timed on this machine: ``hpo.cost``).

    Args:
        run: the study and how it runs.
        only: globs limiting the pieces to run (as ``--only``).
    """
    from hpo.cost import asha_trial_epochs, format_duration, local_slots, time_variant
    from models.registry import dataset_needs, fits_once

    study = run.study
    states = pieces(study, run.output_dir)
    slots = run.resources.max_concurrent or local_slots(run.resources.cpus_per_trial)
    lines = [f"study {study.name} ({study.path}): {len(study.spaces)} arms x "
             f"{len(study.datasets)} datasets, {len(study.seeds)} seeds, ablation arms "
             + (", ".join(a.arm.name + (f" on {', '.join(a.spaces)}" if a.spaces else "")
                          for a in study.arms) or "none"),
             f"results     {study.results_dir}  (commit them; working state in {run.work})",
             f"baseline    {study.baseline}"
             + (f" of {', '.join(study.baseline_candidates)} on validation, per dataset"
                if study.baseline == STRONGEST else "")
             + f"; {study.correction} correction, alpha {study.alpha:g}"]
    if study.unequal:
        lines.append("unequal     " + "; ".join(study.unequal))
    total_s, n_runs = 0.0, 0
    for dataset in study.datasets:
        mine = [s for s in states if s.piece.dataset.label == dataset.label]
        counts: dict[str, int] = {}
        for s in mine:
            counts[s.state] = counts.get(s.state, 0) + 1
        b = dataset.budget
        lines.append("")
        lines.append(f"{dataset.label}: " + ", ".join(f"{n} {k}" for k, n in counts.items())
                     + f"; budget {b.num_samples} trials x <= {b.max_epochs} epochs, ASHA "
                     f"grace {b.grace_period}, rf {b.reduction_factor}"
                     + (f"; last {dataset.train_rows:,} training rows" if dataset.train_rows
                        else "; full training split"))
        loaded = None
        groups: dict[tuple, list[PieceState]] = {}
        for state in mine:  # a search alone; seed runs grouped by (space, arm, state)
            piece = state.piece
            key = ((piece.id, state.state) if piece.kind == "search"
                   else (piece.space.name, piece.arm, state.state))
            groups.setdefault(key, []).append(state)
        for group in groups.values():
            first = group[0]
            piece = first.piece
            name = piece.id[len(dataset.label) + 1:]
            if piece.kind == "seed":
                seeds = [g.piece.seed for g in group]
                name = f"seed/{piece.space.name}/{piece.arm}/{_seed_range(seeds)}"
            if first.state in (DONE, SKIPPED) or (only and not any(
                    fnmatch(g.piece.id, pattern) for g in group for pattern in only)):
                note = f" ({first.note})" if first.note and first.state == SKIPPED else ""
                lines.append(f"  {name:<34} {first.state}{note}")
                continue
            if loaded is None:
                source = dataset.source(run.data_dir, run.text_model)
                needs = dataset_needs([s.model for s in study.spaces])
                loaded = source.load(**needs).without_test()
            timing = time_variant({"model": piece.space.model, **piece.space.fixed}, loaded,
                                  threads=run.resources.torch_threads)
            once = fits_once(piece.space.model)
            if piece.kind == "search":
                most, expected = asha_trial_epochs(b, once, slots)
                what = (f"{most} fits" if once else
                        f"<= {most} trial-epochs, ~{expected:.0f} under ASHA")
            else:
                most = 1 if once else study.retrain_max_epochs
                expected = most if once else _expected_epochs(run, piece, first)
                expected *= len(group)
                what = (f"{len(group)} run(s): "
                        + ("1 fit each" if once else
                           f"<= {most} epochs each, ~{expected / len(group):.0f} expected"))
            seconds = expected * timing.epoch_s / slots
            total_s += seconds
            n_runs += len(group)
            lines.append(f"  {name:<34} {first.state:<8} {what}; ~{format_duration(seconds)}")
    lines.append("")
    lines.append(f"left: {n_runs} piece(s), about {format_duration(total_s)} here "
                 f"({slots} trial(s) at once; a seed run uses the {slots} slots' CPUs; epoch "
                 "times timed from a few batches of each arm's published configuration, kept in "
                 "the cache folder's timings.json)")
    return "\n".join(lines)


def _seed_range(seeds: list[int]) -> str:
    """``1..5`` for consecutive seeds, else ``1,3``."""
    if len(seeds) > 1 and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}..{seeds[-1]}"
    return ",".join(map(str, seeds))


def _expected_epochs(run: StudyRun, piece: Piece, state: PieceState) -> float:
    """A seed run's expected epochs: the selected trial's best epoch plus the patience (capped
    by the retraining budget); before the search, the search's epoch budget."""
    study = run.study
    record = run.results.search(piece.dataset.label, piece.space.name)
    if record is None:
        return float(min(study.retrain_max_epochs, piece.dataset.budget.max_epochs))
    trials = run.results.trials(piece.dataset.label, piece.space.name)
    chosen = trials[trials["trial_id"].astype(str) == str(record["selection"]["trial_id"])]
    best = int(chosen["best_epoch"].iloc[0]) if len(chosen) else piece.dataset.budget.max_epochs
    patience = (state.config or {}).get("patience", 5)
    return float(min(study.retrain_max_epochs, best + patience))


# ---------------------------------------------------------------------------- the loop


def run_study(run: StudyRun, only: list[str] | None = None,
              max_hours: float | None = None) -> list[str]:
    """Run the study's remaining pieces in order, each exported as it finishes; write a
    dataset's report (and the study's Table 1) when its last piece finishes.

    Args:
        run: the study and how it runs.
        only: globs limiting the pieces (``--only``), matched against piece ids such as
            ``tmall/search/trm`` or ``tmall/seed/trm/full/3``.
        max_hours: start no piece after this many hours (a running piece finishes).

    Returns:
        The ids of the pieces that ran.
    """
    deadline = time.monotonic() + max_hours * 3600 if max_hours else None
    ran: list[str] = []
    while True:
        states = pieces(run.study, run.output_dir)
        todo = next(select(states, only), None)
        if todo is None:
            break
        if deadline is not None and time.monotonic() > deadline:
            print(f"--max-hours reached: {todo.piece.id} and later pieces not started",
                  flush=True)
            break
        print(f"piece {todo.piece.id} ({todo.state}) starts", flush=True)
        run.run_piece(todo)
        ran.append(todo.piece.id)
        after = pieces(run.study, run.output_dir)
        if dataset_complete(after, todo.piece.dataset) and todo.piece.kind == "seed":
            paths = write_reports(run.study, [todo.piece.dataset])
            print(f"{todo.piece.dataset.label}: every piece done; report in "
                  f"{paths[todo.piece.dataset.label]}", flush=True)
            if run.commit:
                commit_results(run.study, f"study {run.study.name}: "
                                          f"{todo.piece.dataset.label} report")
    return ran


# ---------------------------------------------------------------------------- reports


def report_runs(study: Study, dataset: StudyDataset) -> tuple[list[tuple[str, str, int]], dict]:
    """The seed runs a dataset's report is made of, in report order, and the ablation arms not
    retrained (the selection already was the arm)."""
    runs, skipped = [], {}
    for state in pieces(study):
        piece = state.piece
        if piece.kind != "seed" or piece.dataset.label != dataset.label:
            continue
        if state.state == SKIPPED:
            skipped[(dataset.label, piece.space.name, piece.arm)] = state.note
        elif state.state == DONE:
            runs.append((piece.space.name, piece.arm, piece.seed))
    return runs, skipped


def study_baseline(study: Study, dataset: StudyDataset) -> tuple[str, str]:
    """The dataset's baseline and how it was chosen: the named space, or, for ``strongest``, the
    candidate whose selected trial scored best on validation (a tie goes to the earlier
    candidate in the study file)."""
    if study.baseline != STRONGEST:
        return study.baseline, "named in the study file"
    results = StudyResults(study.results_dir)
    scored = []
    for name in study.baseline_candidates:
        record = results.search(dataset.label, name)
        if record is not None:
            scored.append((name, record["selection"]["value"], record["selection"]["metric"]))
    if not scored:
        raise StudyError(f"{dataset.label}: no baseline candidate has finished its search")
    sign = 1 if dataset.budget.mode == "max" else -1
    best = max(scored, key=lambda item: (sign * item[1], -scored.index(item)))
    listed = ", ".join(f"{name} {value:.4f}" for name, value, _ in scored)
    return best[0], (f"strongest baseline on validation: {listed} ({dataset.budget.mode} "
                     f"{scored[0][2]} of the selected trial)")


def _protocol_notes(study: Study, dataset: StudyDataset) -> list[str]:
    b = dataset.budget
    notes = [
        f"Study {study.name} ({study.path.name}); training split: "
        + (f"the last {dataset.train_rows:,} rows" if dataset.train_rows else "all rows")
        + f"; search budget of every arm: {b.num_samples} trials x <= {b.max_epochs} epochs, "
        f"ASHA grace {b.grace_period}, reduction factor {b.reduction_factor}, {b.mode} "
        f"{b.metric}; retraining: <= {study.retrain_max_epochs} epochs, early stopping as "
        "configured (patience 5 by default).",
        "Rebuilt from the study's exported files alone (hpo.study_results): ranks clipped at "
        "21, top-20 lists as per-item slot counts.",
    ]
    if study.unequal:
        notes.append("Unequal arms, allowed by the study file: " + "; ".join(study.unequal))
    return notes


def write_reports(study: Study, datasets: list[StudyDataset] | None = None) -> dict[str, Path]:
    """Rebuild each complete dataset's test-stage report from the study's files alone, and the
    study's Table 1 (``table1.md``).

    Args:
        study: the study.
        datasets: the datasets to report (default: every complete one).

    Returns:
        dataset label -> its report folder.
    """
    from hpo.report import write_report

    results = StudyResults(study.results_dir)
    states = pieces(study)
    chosen = datasets or [d for d in study.datasets if dataset_complete(states, d)]
    out = {}
    for dataset in chosen:
        runs, skipped = report_runs(study, dataset)
        seed_results, per_row = results.seed_results(dataset.label, runs)
        targets, popularity, n_items = results.read_dataset(dataset.label)
        baseline, note = study_baseline(study, dataset)
        folder = results.report_dir(dataset.label)
        write_report(folder, seed_results, baseline=baseline, per_row=per_row,
                     targets_by_dataset={dataset.label: targets},
                     popularity_by_dataset={dataset.label: popularity},
                     n_items_by_dataset={dataset.label: n_items}, alpha=study.alpha,
                     correction=study.correction, baseline_note=note,
                     resample_seed=study.seed, skipped_arms=skipped or None,
                     protocol_notes=_protocol_notes(study, dataset))
        out[dataset.label] = folder
    study.results_dir.mkdir(parents=True, exist_ok=True)
    (study.results_dir / "table1.md").write_text(study_table(study) + "\n")
    return out


def study_table(study: Study) -> str:
    """The study's Table 1 across its datasets (``hpo.tables.study_table_markdown``): test
    R@20 / MRR@20 mean ± std per arm, the best per dataset in bold, significance against each
    dataset's baseline marked; datasets still running are listed below it with their progress.

    Args:
        study: the study.
    """
    from hpo.stats import paired_tests
    from hpo.tables import progress_table_markdown, study_table_markdown

    results = StudyResults(study.results_dir)
    states = pieces(study)
    parts, pending, progress = [], [], []
    for dataset in study.datasets:
        mine = [s for s in states if s.piece.dataset.label == dataset.label]
        if not dataset_complete(states, dataset):
            done = sum(s.state in (DONE, SKIPPED) for s in mine)
            pending.append(f"{dataset.label}: {done} of {len(mine)} pieces done")
            finished = [space.name for space in study.spaces
                        if all(s.state == DONE for s in mine if s.piece.kind == "seed"
                               and s.piece.space.name == space.name and s.piece.arm == FULL_ARM)
                        and any(s.piece.kind == "seed" and s.piece.space.name == space.name
                                for s in mine)]
            if finished:
                runs = [(space, FULL_ARM, seed) for space in finished for seed in study.seeds]
                frame, _ = results.seed_results(dataset.label, runs)
                progress.append((dataset.label, frame.drop(columns="arm")))
            continue
        runs, _ = report_runs(study, dataset)
        seed_results, _ = results.seed_results(dataset.label, runs)
        full = seed_results[seed_results["arm"] == FULL_ARM].drop(columns="arm")
        baseline, _ = study_baseline(study, dataset)
        tests = paired_tests(full, baseline, alpha=study.alpha, correction=study.correction)
        parts.append((dataset.label, full, tests, baseline))
    text = study_table_markdown(parts, alpha=study.alpha, correction=study.correction)
    if pending:
        text += "\n\nIn progress: " + "; ".join(pending) + "."
    if progress:
        text += ("\n\nArms of the datasets in progress that have finished every seed run (test "
                 "R@20 / M@20 in percent, mean ± std over seeds; no baseline, tests or marks "
                 "until every arm of the dataset is done):\n\n" + progress_table_markdown(progress))
    return text


def readme_markers(study: Study) -> tuple[str, str]:
    """The lines around a study's Table 1 in README.md (``update_readme``)."""
    return (f"<!-- study {study.name}: table (made by launch.py --study ... --report) -->",
            f"<!-- end of study {study.name}: table -->")


def update_readme(study: Study, readme: Path | None = None) -> bool:
    """Replace the study's Table 1 block in README.md (between ``readme_markers``) with
    ``table1.md``, so README's numbers are the study files' numbers.

    Args:
        study: the study.
        readme: the README (default: the one above the study file's folder).

    Returns:
        Whether the README held the block (and was rewritten where it changed).
    """
    readme = readme or study.path.parent.parent / "README.md"
    if not readme.is_file():
        return False
    start, end = readme_markers(study)
    text = readme.read_text()
    if start not in text or end not in text:
        return False
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    table = (study.results_dir / "table1.md").read_text().strip()
    new = f"{head}{start}\n{table}\n{end}{tail}"
    if new != text:
        readme.write_text(new)
    return True
