"""One hyperparameter search: a Ray Tune Tuner with an Optuna study (``hpo.optuna_study``) proposing
configurations and ASHA stopping trials early, recorded in MLflow and in a persisted study.

Order matters for failing early: the tracking store, the study storage and the dataset are
checked before Ray starts, and nothing is written to MLflow until they are known good.

Faults survived (README, "Faults survived"; ``tests/test_faults.py``): a driver killed at any
moment is continued by ``--resume`` (each trial resumes from its own resume file, see
``hpo.trainable``; the MLflow logger and the study skip what they already hold); a tracking store
that stops answering is retried, then stops the search with a message (``hpo.tracking``); a
study storage or an output directory that stops accepting writes stops it with a message naming
it, leaving every trial resumable; two searches started at once on one output directory share
its SQLite files (``hpo.sqlite_stores``), and a second search of the same space started in the
same second is refused (its folder is taken).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import optuna
import pandas as pd
from mlflow.entities import RunTag
from ray import tune
from ray.tune.error import TuneError
from ray.tune.schedulers import ASHAScheduler

from data import DatasetSource
from hpo import faultpoints
from hpo.cluster import (
    Resources,
    RunInterruptedError,
    check_ended,
    init_ray,
    tune_experiment_name,
)
from hpo.console import ConsoleReporter
from hpo.optuna_study import (
    StudySearcher,
    StudyStorageError,
    check_study_storage,
    close_orphans,
    default_storage,
    open_storage,
    param_importance,
    sampler_settings,
    storage_label,
)
from hpo.outcome import OutputUnwritableError, split_meta
from hpo.results import plot_history, results_table
from hpo.space import Budget, SearchSpace
from hpo.tracking import (
    NOTE_TAG,
    MLflowTrialLogger,
    TrackingUnavailableError,
    call_tracking,
    check_tracking,
    default_artifact_location,
    get_or_create_experiment,
    log_params,
    mark_killed,
)
from hpo.trainable import train_trial
from models.registry import config_keys, dataset_needs, fits_once

log = logging.getLogger(__name__)

TRIALS_DIR = "trials"  # the Tune experiment's name: trials-<parent run> (tune_experiment_name)
RESUME_DIR = "resume"  # beside the trials: each trial's own resume files (hpo.trainable)
STATE_FILE = "search.json"
SEARCHED_TAG = "searched_parameters"  # the parent run's tag: the space's hyperparameters
METRIC_TAG = "search_metric"  # the parent run's tag: what selection reads (best_valid_*)
SNAPSHOT_ENV = "TUNE_GLOBAL_CHECKPOINT_S"  # seconds between Tune's experiment-state snapshots


@dataclass(frozen=True)
class SearchPlan:
    """Everything a search needs, fixed before any work starts (and printed by --dry-run)."""

    space: SearchSpace
    dataset: DatasetSource
    budget: Budget
    seed: int
    resources: Resources
    output_dir: Path
    tracking_uri: str
    command_line: str = ""
    search_dir: Path = field(default=None)  # type: ignore[assignment]
    optuna_storage: str | None = None  # None: <output_dir>/optuna.db
    precision: str | None = None  # --precision: every trial's (None: the configs', auto)

    @property
    def constants(self) -> dict:
        """Config keys the search sets for every trial: the epoch budget, the seed and, when
        given, the precision (a kNN baseline has none)."""
        precise = self.precision and "precision" in config_keys(self.space.model)
        return {"epochs": self.budget.max_epochs, "seed": self.seed,
                **({"precision": self.precision} if precise else {})}

    @property
    def study_storage(self) -> str:
        """Where the search's Optuna study lives (any SQLAlchemy URL)."""
        return self.optuna_storage or default_storage(self.output_dir)

    @property
    def study_name(self) -> str:
        """The study's name: the MLflow experiment and the search's start time."""
        return f"{self.experiment_name}@{self.search_dir.name}"

    @property
    def experiment_name(self) -> str:
        """The search's MLflow experiment: ``<dataset label>/<space>``."""
        return f"{self.dataset.label}/{self.space.name}"

    @property
    def trials_storage(self) -> str:
        """Where Tune keeps the trial directories: the search dir, or under --storage-path."""
        return self.resources.trials_location(self.search_dir, self.output_dir)

    @property
    def tune_metric(self) -> str:
        """The metric at each trial's selected (best-so-far) checkpoint: what selection uses."""
        return f"best_{self.budget.metric}"

    @property
    def schedule(self) -> str:
        """How trials are run and stopped, in words: the epoch budget and ASHA's settings, or,
        for a kNN baseline, one fit per trial (ASHA has nothing to stop)."""
        b = self.budget
        if fits_once(self.space.model):
            return f"{b.num_samples} trials, one fit each (a kNN model: ASHA has nothing to stop)"
        return (f"{b.num_samples} trials x <= {b.max_epochs} epochs, ASHA grace "
                f"{b.grace_period}, reduction factor {b.reduction_factor}")

    def headline(self) -> str:
        """Three lines saying what runs and where results go (the default console header)."""
        b = self.budget
        return "\n".join([
            f"search {self.space.name} (variant {self.space.model}) on {self.dataset.label}: "
            f"{self.schedule}; {b.mode} {b.metric}",
            f"tracking {self.tracking_uri} (experiment {self.experiment_name!r}); "
            f"study {self.study_name!r} in {storage_label(self.study_storage)}",
            f"output {self.search_dir}",
        ])

    def describe(self) -> str:
        """The whole plan, a line per aspect and one per parameter (--dry-run, -v)."""
        b, r = self.budget, self.resources
        lines = [
            f"search      {self.space.name} (variant {self.space.model}) from {self.space.path}",
            f"dataset     {self.dataset.label} (data dir {self.dataset.data_dir or 'default'}"
            + (f", last {self.dataset.train_rows:,} training rows only"
               if self.dataset.train_rows else "") + ")",
            f"budget      {self.schedule}; {b.mode} {b.metric}",
            f"seed        {self.seed} (TPE sampler and every trial's training)",
            f"resources   {r.cpus_per_trial} CPU + {r.gpus_per_trial} GPU per trial"
            + (" (CUDA required)" if r.require_cuda else "")
            + f", max concurrent {r.max_concurrent or 'as the cluster fits'}, "
            f"max failures {r.max_failures}",
            f"ray         {r.address or 'local instance (or the Ray job cluster)'}",
            f"trials      {self.trials_storage}",
            f"mlflow      {self.tracking_uri} (experiment {self.experiment_name!r})",
            f"optuna      study {self.study_name!r} in {storage_label(self.study_storage)}",
            f"output      {self.search_dir}",
            "fixed       " + (json.dumps(self.space.fixed) if self.space.fixed else "-"),
            "parameters",
        ]
        for p in self.space.parameters:
            if p.type == "categorical":
                dist = f"categorical {list(p.choices)}"
            else:
                dist = f"{p.type} [{p.low:g}, {p.high:g}]" + (" log" if p.log else "")
                dist += f" step {p.step:g}" if p.step else ""
            cond = f"  if {p.condition}" if p.condition else ""
            lines.append(f"  {p.name:<16}{dist}{cond}")
        return "\n".join(lines)


def new_search_dir(output_dir: Path, dataset: str, space_name: str) -> Path:
    """A new search's folder: ``<output_dir>/<dataset>/<space>/<YYYYmmdd-HHMMSS>`` (not made).

    Args:
        output_dir: the launch's output directory.
        dataset: the dataset's label (``DatasetSource.label``).
        space_name: the space's name.
    """
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return output_dir.resolve() / dataset / space_name / stamp


def latest_search_dir(output_dir: Path, dataset: str, space_name: str) -> Path:
    """The most recent search of this space on this dataset, for --resume."""
    root = output_dir.resolve() / dataset / space_name
    candidates = sorted(p for p in root.glob("*") if (p / STATE_FILE).is_file())
    if not candidates:
        raise FileNotFoundError(f"--resume: no search of {space_name!r} on {dataset!r} in {root}")
    return candidates[-1]


class SearchFailedError(RuntimeError):
    """Every trial of a search failed (the search itself ran and is recorded in MLflow)."""


class SearchInProgressError(RuntimeError):
    """A new search's folder is already taken by another search started in the same second."""


@dataclass(frozen=True)
class SearchOutcome:
    """What a finished search leaves for the command line and the test stage."""

    parent_run_id: str
    table: pd.DataFrame  # all trials, best first
    importance: pd.DataFrame  # parameter, importance, rank (empty when not computed)
    importance_note: str  # how the importances were computed, or why not


def run_search(plan: SearchPlan, resume: bool = False, verbose: bool = False) -> SearchOutcome:
    """Run (or resume) the search.

    Args:
        plan: the search's plan (validated by ``hpo.plan.make_plans``).
        resume: continue the interrupted search in ``plan.search_dir`` and its study.
        verbose: Ray Tune's own progress tables and the trials' logs on the console, besides
            the one-line trial events.

    Returns:
        The MLflow parent run, the table of all trials and the hyperparameter importances.

    Raises:
        TrackingUnavailableError, StudyStorageError: the MLflow store or the study storage
            cannot be used (before Ray starts), or stopped working while the search ran.
        OutputUnwritableError: a trial could not write its state (the search stopped).
        SearchInProgressError: another search of the same space took the same folder.
        SearchFailedError: every trial failed.
        RunInterruptedError: Ray Tune was stopped (Ctrl-C) before every trial ended; the
            search is not recorded as finished and continues with ``resume``.
    """
    faultpoints.fire("stores")
    client = check_tracking(plan.tracking_uri)
    state_path = plan.search_dir / STATE_FILE
    state = json.loads(state_path.read_text()) if resume else {}
    if resume:
        _check_resumable(plan, state)
    check_study_storage(plan.study_storage, plan.study_name, exists=resume)
    dataset = plan.dataset.load(**dataset_needs(plan.space.model)).without_test()
    log.info("loaded %s", dataset.summary())

    if resume:
        parent_run_id = state["parent_run_id"]
        client.update_run(parent_run_id, status="RUNNING")
    else:
        try:
            plan.search_dir.mkdir(parents=True, exist_ok=False)
        except FileExistsError:
            raise SearchInProgressError(
                f"{plan.search_dir} exists: another search of {plan.space.name!r} on "
                f"{plan.dataset.label!r} started in the same second and writes there; start "
                "this one again (or continue that one with --resume)") from None
        parent_run_id = _start_parent_run(client, plan)
        state = {"parent_run_id": parent_run_id,
                 "tune_experiment": tune_experiment_name(TRIALS_DIR, parent_run_id),
                 **_plan_record(plan)}
        state_path.write_text(json.dumps(state))
    # Searches started before experiments were named per search kept theirs in "trials".
    experiment = state.get("tune_experiment", TRIALS_DIR)

    init_ray(plan.resources.address, log_to_driver=verbose)
    trainable = tune.with_resources(
        tune.with_parameters(
            train_trial, dataset=dataset, num_threads=plan.resources.torch_threads,
            require_cuda=plan.resources.require_cuda,
            resume_root=f"{plan.trials_storage}/{RESUME_DIR}",
            faults=faultpoints.FaultPoints.from_env(),
        ),
        plan.resources.per_trial(),
    )
    # Tune snapshots the experiment every 10 s or more by default ("auto"); a trial created and
    # killed with its driver in between is unknown to --resume, its run and study trial
    # orphaned. Every second, a new trial is in the snapshot before its first result (its
    # actor takes longer to start). Trials no longer force snapshots by checkpointing each
    # epoch (hpo.trainable).
    os.environ.setdefault(SNAPSHOT_ENV, "1")
    trials_path = f"{plan.trials_storage}/{experiment}"
    if resume and tune.Tuner.can_restore(trials_path):
        tuner = tune.Tuner.restore(trials_path, trainable=trainable, resume_errored=False)
    else:
        tuner = _new_tuner(plan, trainable, client, parent_run_id, experiment, resume, verbose)
    try:
        grid = tuner.fit()
    except TuneError as exc:  # Tune wraps what our searcher or callbacks raise
        fault = _fault_behind(exc)
        if fault is None:
            raise
        raise fault from None
    try:
        check_ended(grid, plan.budget.num_samples, f"search {plan.space.name}")
    except RunInterruptedError as exc:
        # Not finished: the parent run is marked KILLED (--resume sets it RUNNING again), the
        # study and the trials' runs stay as they are for --resume to continue.
        mark_killed(client, parent_run_id)
        raise RunInterruptedError(exc.stopped, "what was recorded is kept: continue it with "
                                  "the same command and --resume") from None

    study = optuna.load_study(study_name=plan.study_name,
                              storage=open_storage(plan.study_storage))
    orphans = close_orphans(study)
    if orphans:
        log.warning("%d study trial(s) were asked by an interrupted driver and never ran: "
                    "told FAIL (user attribute 'orphaned')", orphans)
    table = results_table(grid, plan.tune_metric, plan.budget.mode)
    # The trials are done and recorded; if the store fails now, --resume records the rest.
    importance, note = call_tracking(plan.tracking_uri, "recording the search's importances",
                                     _importance, client, plan, parent_run_id, study)
    call_tracking(plan.tracking_uri, "recording the search's results", _finish_parent_run,
                  client, plan, parent_run_id, table)
    if len(table) and (table["outcome"] == "failed").all():
        raise SearchFailedError(
            f"{plan.space.name}: all {len(table)} trials failed (first error: "
            f"{table['error'].iloc[0]}); see {plan.search_dir} and MLflow run {parent_run_id}"
        )
    return SearchOutcome(parent_run_id, table, importance, note)


STOPPING_FAULTS = (OutputUnwritableError, TrackingUnavailableError, StudyStorageError)


def _fault_behind(exc: BaseException) -> BaseException | None:
    """The fault that stopped the search (``STOPPING_FAULTS``), behind Tune's ``TuneError``."""
    seen = exc.__cause__ or exc.__context__
    while seen is not None:
        if isinstance(seen, STOPPING_FAULTS):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _check_resumable(plan: SearchPlan, state: dict) -> None:
    """--resume continues a search only with the storage locations it started with."""
    recorded = state.get("resources", {}).get("storage_path")
    if recorded != plan.resources.storage_path:
        raise ValueError(f"--resume: {plan.search_dir} keeps its trials in "
                         f"{recorded or 'its output directory'}; pass the same "
                         f"--storage-path ({recorded or 'none'})")
    study = state.get("optuna")
    if study is None:
        raise ValueError(f"--resume: {plan.search_dir} was started by a version of this tool "
                         "that kept no Optuna study; it cannot be resumed, start a new search")
    if study["study_name"] != plan.study_name or study["storage"] != storage_label(
            plan.study_storage):
        raise ValueError(f"--resume: {plan.search_dir} keeps its study "
                         f"{study['study_name']!r} in {study['storage']}; pass the same "
                         "--optuna-storage")


def _importance(client, plan: SearchPlan, run_id: str, study) -> tuple[pd.DataFrame, str]:
    """Hyperparameter importances written beside the trials and logged to the parent run."""
    plot_path = plan.search_dir / "param_importance.png"
    importance, note = param_importance(study, seed=plan.seed, plot_path=plot_path)
    csv_path = plan.search_dir / "param_importance.csv"
    importance.assign(method=note).to_csv(csv_path, index=False)
    client.log_artifact(run_id, str(csv_path))
    if plot_path.is_file():
        client.log_artifact(run_id, str(plot_path))
    client.set_tag(run_id, "param_importance", note)
    return importance, note


def _new_tuner(plan: SearchPlan, trainable, client, parent_run_id: str, experiment: str,
               resume: bool, verbose: bool) -> tune.Tuner:
    b = plan.budget
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    concurrent = plan.resources.concurrent_trials()
    settings = sampler_settings(b.num_samples, concurrent, plan.seed)
    log_params(client, parent_run_id, settings.as_params())
    searcher = StudySearcher(
        plan.space,
        plan.constants,
        storage=plan.study_storage,
        study_name=plan.study_name,
        metric=plan.tune_metric,
        mode=b.mode,
        settings=settings,
        # A resume whose Tuner never saved its state: the study exists, its trials are kept.
        resume=resume,
        study_attrs={"mlflow_experiment": plan.experiment_name,
                     "mlflow_parent_run": parent_run_id, "search_dir": str(plan.search_dir),
                     "command_line": plan.command_line},
    )
    scheduler = ASHAScheduler(
        time_attr="epoch",
        max_t=b.max_epochs,
        grace_period=b.grace_period,
        reduction_factor=b.reduction_factor,
    )
    logger = MLflowTrialLogger(
        plan.tracking_uri,
        experiment_id,
        parent_run_id,
        tags={"stage": "search", "variant": plan.space.model, "search": plan.space.name},
        name=functools.partial(trial_run_name, plan.space.name),
    )
    console = ConsoleReporter(plan.tune_metric, b.mode, b.num_samples, concurrent,
                              [p.name for p in plan.space.parameters], budget=b,
                              fits_once=fits_once(plan.space.model))
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            metric=plan.tune_metric,
            mode=b.mode,
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=b.num_samples,
            max_concurrent_trials=concurrent,
        ),
        run_config=tune.RunConfig(
            name=experiment,
            storage_path=plan.trials_storage,
            callbacks=[logger, console],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            failure_config=tune.FailureConfig(max_failures=plan.resources.max_failures),
            verbose=1 if verbose else 0,
        ),
    )


def trial_run_name(space: str, config: dict) -> str:
    """A search trial's MLflow run name: the space and the Optuna trial number, as the console
    names it ("dahn trial 3").

    Args:
        space: the space's name.
        config: the trial's config as Ray Tune holds it (the searcher's bookkeeping included).

    Returns:
        The name.
    """
    number = split_meta(config)[1].get("number")
    return f"{space} trial {number}" if number is not None else f"{space} trial"


def _plan_record(plan: SearchPlan) -> dict:
    return {
        "space": plan.space.name,
        "space_file": str(plan.space.path),
        "variant": plan.space.model,
        "dataset": plan.dataset.label,
        "train_rows": plan.dataset.train_rows,
        **({"text_model": plan.dataset.text_model or "packaged all-MiniLM-L6-v2"}
           if dataset_needs(plan.space.model)["item_vectors"] else {}),
        "seed": plan.seed,
        "precision": plan.precision or "configs' (auto)",
        "optuna": {"study_name": plan.study_name, "storage": storage_label(plan.study_storage)},
        "budget": asdict(plan.budget),
        "resources": asdict(plan.resources),
        "command_line": plan.command_line,
    }


def _start_parent_run(client, plan: SearchPlan) -> str:
    experiment_id = get_or_create_experiment(
        client,
        plan.experiment_name,
        default_artifact_location(plan.tracking_uri, plan.output_dir, plan.experiment_name),
    )
    run = client.create_run(
        experiment_id,
        run_name=f"{plan.space.name}-{plan.search_dir.name}",
        tags={"stage": "search", "variant": plan.space.model, "search": plan.space.name,
              "dataset": plan.dataset.label, "search_dir": str(plan.search_dir),
              "schedule": plan.schedule, NOTE_TAG: _description(plan),
              # What the MLflow UI's saved view of the trials shows (hpo.ui).
              SEARCHED_TAG: ",".join(p.name for p in plan.space.parameters),
              METRIC_TAG: plan.tune_metric},
    )
    run_id = run.info.run_id
    record = _plan_record(plan)
    params = {k: v for k, v in record.items() if k not in ("budget", "resources", "optuna")}
    params.update({f"optuna.{k}": v for k, v in record["optuna"].items()})
    params.update({f"budget.{k}": v for k, v in record["budget"].items()})
    params.update({f"resources.{k}": v for k, v in record["resources"].items()})
    log_params(client, run_id, params)
    client.log_artifact(run_id, str(plan.space.path), artifact_path="search_space")
    return run_id


def _description(plan: SearchPlan) -> str:
    """The parent run's description in the MLflow UI (markdown)."""
    b = plan.budget
    return "\n".join([
        f"**Search** of `{plan.space.name}` (variant `{plan.space.model}`, space file "
        f"`{plan.space.path.name}`) on **{plan.dataset.label}**.",
        "",
        f"- budget: {plan.schedule}; {b.mode} `{b.metric}`",
        f"- Optuna study `{plan.study_name}` in `{storage_label(plan.study_storage)}`; the "
        "first trial is the variant's published configuration",
        f"- seed {plan.seed}",
        f"- command: `{plan.command_line}`" if plan.command_line else "",
    ]).strip()


def _finish_parent_run(client, plan: SearchPlan, run_id: str, table: pd.DataFrame) -> None:
    table_path = plan.search_dir / "trials.csv"
    table.to_csv(table_path, index=False)
    client.log_artifact(run_id, str(table_path))
    plot_path = plan.search_dir / "optimization_history.png"
    plot_history(table, plan.tune_metric, plan.budget.mode, plot_path)
    client.log_artifact(run_id, str(plot_path))
    finished = table[table["outcome"] != "failed"]
    if len(finished):
        best = finished.iloc[0]
        best_record = {"trial_id": best["trial_id"], plan.tune_metric: best[plan.tune_metric],
                       "config": json.loads(best["config"])}
        best_path = plan.search_dir / "best_config.json"
        best_path.write_text(json.dumps(best_record, indent=2))
        client.log_artifact(run_id, str(best_path))
        value = float(best[plan.tune_metric])
        if client.get_run(run_id).data.metrics.get(plan.tune_metric) != value:  # resumed: once
            client.log_metric(run_id, plan.tune_metric, value)
    counts = table["outcome"].value_counts().to_dict()
    client.log_batch(run_id, tags=[RunTag(f"trials_{k}", str(v)) for k, v in counts.items()])
    client.set_terminated(run_id, status="FAILED" if finished.empty else "FINISHED")
