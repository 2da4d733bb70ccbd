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
    precision: fp32            # every piece's precision (default: none pinned, each run's auto);
                               # a dataset's own `precision` overrides it for its pieces
    ablate:                    # ablation arms: the changes, and optionally the spaces they
      - {set: {da_gating: false}, spaces: [da]}     # apply to (default: every space that has
      - {set: {hn_lambda: 0}}                       # the keys)
    sensitivity: [hn_k, hn_lambda]   # searched parameters drawn against validation from the
                                     # search trials of every space sampling them

The study is checked whole before anything runs: every space file, the fairness of the arms
(``hpo.fairness``, with the study's budget), the arms, the baseline and the correction.

**Pieces.** One piece is the search of one space on one dataset, or one seed run (a space's
selected configuration, or an ablation arm of it, retrained with one seed and scored once on
test). A seed run needs its space's search. A piece that finished has exported its results
under ``studies/<name>/`` (``verdict.study_results``) and is never run again; one that was
interrupted resumes: a search with its study and trials (``--resume``), a seed run from its
last epoch. Working state (trial checkpoints, the MLflow store, the Optuna studies) lives under
``<output-dir>/studies/<name>/``; only the exports need committing (``--commit`` commits each
piece as it finishes). When the last piece of a dataset finishes, its report is written to
``studies/<name>/<dataset>/report/`` from the exports alone, and the study's Table 1 to
``studies/<name>/table1.md`` (``--report`` rebuilds them).

This module holds the study file and its pieces, and tells the verdict where each dataset
stands (``study_status``, for ``verdict.study_report``); ``hpo.study_runs`` runs the pieces.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import yaml

from data import DatasetSource
from hpo.ablation import AblationError, Arm, arm_jobs, parse_arm, value_text
from hpo.fairness import check_fair_arms
from hpo.options import BASELINE_VARIANTS, STRONGEST
from hpo.space import Budget, SearchSpace, SpaceError, load_space, parse_budget
from models.precision import PRECISIONS
from verdict.options import CORRECTIONS, DEFAULT_ALPHA, FULL_ARM
from verdict.study_report import DatasetStatus, StudyStatus
from verdict.study_results import StudyResults

STUDY_KEYS = {"name", "description", "spaces", "datasets", "seeds", "seed",
              "retrain_max_epochs", "baseline", "baseline_candidates", "correction", "alpha",
              "ablate", "allow_unequal_spaces", "precision", "sensitivity"}
DATASET_KEYS = {"train_rows", "budget", "precision"}
DONE, PARTIAL, TODO, WAITING, SKIPPED = "done", "partial", "to do", "waiting", "skipped"


class StudyError(ValueError):
    """An invalid study file, or a study that cannot go on; the message says which and why."""


@dataclass(frozen=True)
class StudyDataset:
    """One dataset of a study: its name, an optional training-row cut, every arm's budget and,
    optionally, the precision all of its pieces run at (over the study's)."""

    name: str
    budget: Budget
    train_rows: int | None = None
    precision: str | None = None

    def source(self, data_dir: Path | None, text_model: str | None = None) -> DatasetSource:
        """The dataset to load, with the study's training-row cut.

        Args:
            data_dir: where the benchmark files are (None: the default).
            text_model: the item-text model of the semantic variants, if any.
        """
        return DatasetSource(self.name, data_dir, self.train_rows, text_model)

    @property
    def label(self) -> str:
        """The dataset's label: its name, with the training-row cut when there is one."""
        return DatasetSource(self.name, None, self.train_rows).label


@dataclass(frozen=True)
class StudyArm:
    """An ablation arm of a study, limited to some spaces (None: every space with its keys)."""

    arm: Arm
    spaces: tuple[str, ...] | None = None

    def applies_to(self, space: SearchSpace) -> bool:
        """Whether the arm is retrained for ``space``'s selection.

        Args:
            space: a space of the study.
        """
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
    precision: str | None = None  # pinned for every piece (None: each run's own, auto)
    sensitivity: tuple[str, ...] = ()  # searched parameters drawn against validation

    @property
    def results_dir(self) -> Path:
        """``studies/<name>/``: beside the study file."""
        return self.path.parent / self.name

    def precision_of(self, dataset: StudyDataset) -> str | None:
        """The precision every piece of ``dataset`` is pinned to: the dataset's own, else the
        study's (None: not pinned, each run's own, auto).

        Args:
            dataset: a dataset of the study.
        """
        return dataset.precision or self.precision

    def space(self, name: str) -> SearchSpace:
        """The study's space of that name.

        Args:
            name: the space's name.
        """
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
    precision = raw.get("precision")
    if precision is not None and precision not in PRECISIONS:
        raise fail(f"'precision' must be one of {PRECISIONS}; got {precision!r}")
    sensitivity = _parse_sensitivity(raw.get("sensitivity") or [], spaces, fail)
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
        precision=precision, sensitivity=sensitivity,
    )


def _parse_sensitivity(names: Any, spaces: tuple[SearchSpace, ...], fail) -> tuple[str, ...]:
    """The ``sensitivity`` key: parameters that some space of the study searches."""
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise fail(f"'sensitivity' must list searched parameters; got {names!r}")
    searched = {p.name for space in spaces for p in space.parameters}
    missing = [n for n in names if n not in searched]
    if missing:
        raise fail(f"'sensitivity' names {missing}, which no space of the study searches "
                   f"(searched: {sorted(searched)})")
    return tuple(dict.fromkeys(names))


def sensitivity_spaces(study: Study) -> tuple[str, ...]:
    """The spaces whose search trials the sensitivity figure draws: those that search any
    parameter of ``study.sensitivity``, in the study's order.

    Args:
        study: the study.
    """
    wanted = set(study.sensitivity)
    return tuple(s.name for s in study.spaces if wanted & {p.name for p in s.parameters})


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
        precision = entry.get("precision")
        if precision is not None and precision not in PRECISIONS:
            raise fail(f"datasets.{name}.precision must be one of {PRECISIONS}; "
                       f"got {precision!r}")
        out.append(StudyDataset(str(name), budget, rows, precision))
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
        """``<dataset>/search/<space>`` or ``<dataset>/seed/<space>/<arm>/<seed>`` (``--only``)."""
        if self.kind == "search":
            return f"{self.dataset.label}/search/{self.space.name}"
        return f"{self.dataset.label}/seed/{self.space.name}/{self.arm}/{self.seed}"


@dataclass(frozen=True)
class PieceState:
    piece: Piece
    state: str  # DONE, PARTIAL, TODO, WAITING, SKIPPED
    note: str = ""
    config: dict | None = None  # a seed run's configuration, once its search is done


def safe_name(text: str) -> str:
    """``text`` as a file name: runs of other characters than letters, digits and ``_.=,-``
    become ``_``.

    Args:
        text: a piece id, an arm name, ...
    """
    return re.sub(r"[^A-Za-z0-9_.=,-]+", "_", text)


def work_dir(study: Study, output_dir: Path) -> Path:
    """Where a study's working state lives (not committed): ``<output-dir>/studies/<name>``.

    Args:
        study: the study.
        output_dir: the launch's output directory.
    """
    return Path(output_dir).resolve() / "studies" / study.name


def search_dir(study: Study, output_dir: Path, piece: Piece) -> Path:
    """Where a search piece keeps its working state (its trials, its Optuna study).

    Args:
        study: the study.
        output_dir: the launch's output directory.
        piece: the search piece.
    """
    return work_dir(study, output_dir) / piece.dataset.label / piece.space.name / "search"


def seed_dir(study: Study, output_dir: Path, piece: Piece) -> Path:
    """Where a seed piece keeps its working state (its checkpoints, to resume from).

    Args:
        study: the study.
        output_dir: the launch's output directory.
        piece: the seed piece.
    """
    return (work_dir(study, output_dir) / piece.dataset.label / piece.space.name / "seeds"
            / safe_name(piece.arm) / f"seed-{piece.seed}")


def selection_of(results: StudyResults, dataset: StudyDataset, space: SearchSpace):
    """The exported selection of a space on a dataset as an ``hpo.selection.Selection``, or
    None while its search is not done.

    Args:
        results: the study's exported files.
        dataset: the dataset.
        space: the space.
    """
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
            record = results.search(dataset.label, space.name)
            if record is not None:
                _check_recorded_precision(study, piece, record.get("precision"),
                                          (results.search_file(dataset.label, space.name),
                                           results.trials_file(dataset.label, space.name)))
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
                        files = results.seed_files(dataset.label, space.name, arm_name, seed)
                        recorded = json.loads(files[0].read_text()).get("config", {})
                        _check_recorded_precision(study, piece, recorded.get("precision"), files)
                        state = PieceState(piece, DONE, config=config)
                    elif output_dir is not None and seed_dir(study, output_dir, piece).is_dir():
                        state = PieceState(piece, PARTIAL, "resumes from its last epoch",
                                           config=config)
                    else:
                        state = PieceState(piece, TODO, config=config)
                    out.append(state)
    return out


def _check_recorded_precision(study: Study, piece: Piece, recorded: str | None,
                              files) -> None:
    """Refuse a finished piece whose recorded precision is not the one the study now pins for
    its dataset: its numbers would sit beside other precisions' in one comparison."""
    pinned = study.precision_of(piece.dataset)
    if pinned is None or recorded is None or recorded == pinned:
        return
    names = ", ".join(str(f) for f in files)
    raise StudyError(f"{study.path}: {piece.id} finished in {recorded}, but the study pins "
                     f"{pinned} for {piece.dataset.label}: remove its exports ({names}) to run "
                     f"it again in {pinned}, or pin {recorded}")


def dataset_complete(states: list[PieceState], dataset: StudyDataset) -> bool:
    """Whether every piece of ``dataset`` is done (or skipped).

    Args:
        states: the study's pieces (``pieces``).
        dataset: the dataset.
    """
    return all(s.state in (DONE, SKIPPED) for s in states
               if s.piece.dataset.label == dataset.label)


def select(states: list[PieceState], only: list[str] | None) -> Iterator[PieceState]:
    """The pieces still to run, in order, limited to ids matching one of ``only`` (globs).

    Args:
        states: the study's pieces (``pieces``).
        only: globs of piece ids (``--only``); None or empty: every piece.
    """
    for state in states:
        if state.state not in (TODO, PARTIAL):
            continue
        if only and not any(fnmatch(state.piece.id, pattern) for pattern in only):
            continue
        yield state


# ---------------------------------------------------------------------------- for the verdict


def study_status(study: Study) -> StudyStatus:
    """Where the study stands, as its reports see it (``verdict.study_report``): per dataset,
    the finished seed runs, the arms not retrained, its progress, and, once every piece is done,
    its baseline; how the results were made.

    Args:
        study: the study.

    Returns:
        The status, read from the study's exported files.

    Raises:
        StudyError: a complete dataset whose baseline candidates have no finished search.
    """
    states = pieces(study)
    datasets = []
    for dataset in study.datasets:
        mine = [s for s in states if s.piece.dataset.label == dataset.label]
        runs, skipped = _report_runs(mine)
        complete = dataset_complete(states, dataset)
        baseline, note = _study_baseline(study, dataset) if complete else ("", "")
        datasets.append(DatasetStatus(
            label=dataset.label, runs=tuple(runs), skipped_arms=skipped,
            pieces_done=sum(s.state in (DONE, SKIPPED) for s in mine), pieces_total=len(mine),
            finished_spaces=_finished_spaces(study, mine), baseline=baseline,
            baseline_note=note, protocol_notes=tuple(_protocol_notes(study, dataset))))
    return StudyStatus(name=study.name, results_dir=study.results_dir,
                       datasets=tuple(datasets), alpha=study.alpha,
                       correction=study.correction, resample_seed=study.seed,
                       sensitivity=study.sensitivity,
                       sensitivity_spaces=sensitivity_spaces(study))


def _report_runs(states: list[PieceState]) -> tuple[list[tuple[str, str, int]], dict]:
    """The seed runs a dataset's report is made of (of its pieces' ``states``), in report order,
    and the ablation arms not retrained (the selection already was the arm)."""
    runs, skipped = [], {}
    for state in states:
        piece = state.piece
        if piece.kind != "seed":
            continue
        if state.state == SKIPPED:
            skipped[(piece.dataset.label, piece.space.name, piece.arm)] = state.note
        elif state.state == DONE:
            runs.append((piece.space.name, piece.arm, piece.seed))
    return runs, skipped


def _finished_spaces(study: Study, states: list[PieceState]) -> tuple[str, ...]:
    """The spaces of a dataset (of its pieces' ``states``) whose selected configuration finished
    every seed run."""
    return tuple(space.name for space in study.spaces
                 if all(s.state == DONE for s in states if s.piece.kind == "seed"
                        and s.piece.space.name == space.name and s.piece.arm == FULL_ARM)
                 and any(s.piece.kind == "seed" and s.piece.space.name == space.name
                         for s in states))


def _study_baseline(study: Study, dataset: StudyDataset) -> tuple[str, str]:
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
    """The report's lines on how a dataset's results were made: the study, its training rows,
    the search and retraining budgets, the exports it is rebuilt from, unequal arms."""
    b = dataset.budget
    precision = study.precision_of(dataset)
    notes = [
        f"Study {study.name} ({study.path.name}); training split: "
        + (f"the last {dataset.train_rows:,} rows" if dataset.train_rows else "all rows")
        + f"; search budget of every arm: {b.num_samples} trials x <= {b.max_epochs} epochs, "
        f"ASHA grace {b.grace_period}, reduction factor {b.reduction_factor}, {b.mode} "
        f"{b.metric}; retraining: <= {study.retrain_max_epochs} epochs, early stopping as "
        "configured (patience 5 by default)"
        + (f"; precision {precision} in every piece." if precision else "."),
        "Rebuilt from the study's exported files alone (verdict.study_results): ranks clipped "
        "at 21, top-20 lists as per-item slot counts.",
    ]
    if study.unequal:
        notes.append("Unequal arms, allowed by the study file: " + "; ".join(study.unequal))
    return notes
