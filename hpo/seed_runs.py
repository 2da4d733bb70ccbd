"""The seed runs: retrain each selected configuration over several seeds, score test once, and
hand the results to the report (``verdict.report``).

Runs as one Ray Tune experiment (a grid over variant x arm x seed, no scheduler), so seeds train
in parallel with the same resource options as a search, and every seed is an MLflow child run of
a "test" parent run that holds the report. The arm of a run is ``full`` for the selected
configuration and ``KEY=VALUE`` for an ablation arm (the selected configuration with that change).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.entities import RunTag
from ray import tune

from data import DatasetSource, SessionDataset
from hpo import faultpoints
from hpo.ablation import Arm, arm_jobs
from hpo.cluster import (
    Resources,
    RunInterruptedError,
    check_ended,
    init_ray,
    tune_experiment_name,
)
from hpo.console import SeedRunReporter
from hpo.options import DEFAULT_RETRAIN_MAX_EPOCHS
from hpo.selection import Selection
from hpo.tracking import (
    TEST_PREFIXES,
    MLflowTrialLogger,
    check_tracking,
    default_artifact_location,
    get_or_create_experiment,
    log_params,
    mark_killed,
)
from hpo.trainable import TEST_ROWS_FILE, has_model_bundle, retrain_trial
from models.metrics import METRIC_LABELS
from models.metrics import METRIC_NAMES as METRICS
from models.persona import persona_groups
from models.recommend import MODEL_ARTIFACT_DIR, MODEL_FILE
from models.registry import config_keys, dataset_needs
from models.trainer import SELECTION_METRIC
from verdict.options import DEFAULT_ALPHA, FULL_ARM, TABLE_METRICS
from verdict.report import write_report
from verdict.results import TestResults, exposure_counts

log = logging.getLogger(__name__)

JOB_TAGS = ("variant", "space", "arm", "seed", "selected_from")


class TestStageError(RuntimeError):
    """Some seed runs failed, so no paired statistics can be computed."""


@dataclass(frozen=True)
class TestPlan:
    """Everything the test stage needs, fixed before it starts."""

    dataset: DatasetSource
    selections: tuple[Selection, ...]
    seeds: tuple[int, ...]
    baseline: str  # the space every other one is compared with (resolved)
    output_dir: Path
    tracking_uri: str
    resources: Resources = Resources()
    command_line: str = ""
    baseline_rule: str = ""  # --baseline as given: a space name or "strongest"
    baseline_note: str = ""  # how the baseline was chosen, for the report
    arms: tuple[Arm, ...] = ()
    correction: str = "holm"
    alpha: float = DEFAULT_ALPHA
    resample_seed: int = 0  # seed of the session-level randomization and bootstrap tests
    # Epoch budget of a retraining (the config's patience stops it earlier): the CORE protocol's
    # 300 by default, not the search's per-trial budget.
    max_epochs: int = DEFAULT_RETRAIN_MAX_EPOCHS
    # The differences between the compared spaces that --allow-unequal-spaces let through
    # (hpo.fairness), for the report; "" when the arms were searched alike.
    unequal_arms: str = ""
    precision: str | None = None  # --precision of every seed run (None: the configs')

    @property
    def experiment_name(self) -> str:
        """The MLflow experiment of the seed runs: ``<dataset label>/test``."""
        return f"{self.dataset.label}/test"


def describe_job(config: dict) -> tuple[dict, dict]:
    """MLflow params and tags of a seed run: the retrained config; variant, arm, seed, provenance.

    Args:
        config: the Tune trial's config (``{"job": ...}``).
    """
    job = config["job"]
    return job["config"], {key: job[key] for key in JOB_TAGS}


def run_test_stage(plan: TestPlan, verbose: bool = False) -> dict[str, Path]:
    """Retrain, score test, write the report; returns the report files.

    Args:
        plan: the selections, seeds, baseline, arms and statistics options.
        verbose: Ray Tune's own progress tables and the runs' logs on the console, besides
            a line per seed run's start and end and a status line (``hpo.console``).

    Raises:
        hpo.ablation.AblationError: an arm is invalid with a selected configuration (before Ray).
        TestStageError: some seed runs failed.
        RunInterruptedError: Ray Tune was stopped (Ctrl-C) before every seed run ended (the
            parent run is marked KILLED).
    """
    client = check_tracking(plan.tracking_uri)
    ablated, skipped = arm_jobs(plan.arms, plan.selections)  # invalid arms fail before Ray
    dataset = plan.dataset.load(**dataset_needs([s.variant for s in plan.selections]))
    label = plan.dataset.label
    out_dir = plan.output_dir.resolve() / label / "test" / time.strftime("%Y%m%d-%H%M%S")
    out_dir.mkdir(parents=True)
    parent_run_id = _start_parent_run(client, plan, out_dir)

    init_ray(plan.resources.address, log_to_driver=verbose)
    configs = [(s, FULL_ARM, s.config) for s in plan.selections]
    configs += [(s, arm.name, config) for s, arm, config in ablated]
    jobs = [
        seed_job(space=s.space, arm=arm, seed=seed, selected_from=s.trial_run_id,
                 config=config, max_epochs=plan.max_epochs, precision=plan.precision)
        for s, arm, config in configs
        for seed in plan.seeds
    ]
    try:
        grid = run_seed_jobs(
            jobs, dataset, resources=plan.resources, tracking_uri=plan.tracking_uri,
            parent_run_id=parent_run_id,
            storage=plan.resources.trials_location(out_dir, plan.output_dir),
            name=tune_experiment_name("seeds", parent_run_id), tags={"dataset": label},
            verbose=verbose)
    except RunInterruptedError as exc:
        mark_killed(client, parent_run_id)
        raise RunInterruptedError(exc.stopped, "no report was written: run the test stage "
                                  "again (its seed runs start over)") from None

    failed = [r for r in grid if r.error is not None]
    if failed:
        client.set_terminated(parent_run_id, status="FAILED")
        raise TestStageError(
            f"{len(failed)} of {len(jobs)} seed runs failed (first: {failed[0].error}); "
            f"see {out_dir}"
        )
    seed_results, per_row, arm_per_row = _collect(
        grid, label, [(s.space, arm) for s, arm, _ in configs], dataset.n_items)
    results = TestResults(
        seed_results,
        per_row,
        targets={label: dataset.test.targets},
        popularity={label: train_popularity(dataset)},
        n_items={label: dataset.n_items},
        row_groups=(
            {label: persona_groups(dataset, "test")} if dataset.test.users is not None else None
        ),
        skipped_arms=skipped,
        arm_per_row=arm_per_row or None,
    )
    paths = write_report(
        out_dir,
        results,
        baseline=plan.baseline,
        alpha=plan.alpha,
        correction=plan.correction,
        baseline_note=plan.baseline_note,
        resample_seed=plan.resample_seed,
        protocol_notes=[f"Unequal arms, compared with --allow-unequal-spaces: {plan.unequal_arms}"]
        if plan.unequal_arms else (),
    )
    for path in paths.values():
        client.log_artifact(parent_run_id, str(path))
    client.set_terminated(parent_run_id, status="FINISHED")
    return paths


def seed_job(
    *, space: str, arm: str, seed: int, selected_from: str, config: dict, max_epochs: int,
    precision: str | None = None,
) -> dict:
    """One seed run of the test stage: the selected configuration (or an ablation arm of it)
    with its seed and the retraining's epoch budget, and what its MLflow run is tagged with.

    Args:
        space: the space (its report name) the configuration was selected from.
        arm: ``FULL_ARM`` or the ablation arm's name.
        seed: the training seed.
        selected_from: the trial it was selected from (an MLflow run id or a trial id).
        config: the configuration (the arm's change applied).
        max_epochs: the retraining's epoch budget (patience stops it earlier).
        precision: every seed run's precision (``--precision``; None: the config's; a kNN
            baseline has none).
    """
    precise = precision and "precision" in config_keys(config["model"])
    fixed = {"seed": seed, "epochs": max_epochs, **({"precision": precision} if precise
                                                     else {})}
    return {"variant": space, "space": space, "arm": arm, "seed": seed,
            "selected_from": selected_from, "config": {**config, **fixed}}


def run_seed_jobs(
    jobs: list[dict], dataset: SessionDataset, *, resources: Resources, tracking_uri: str,
    parent_run_id: str, storage: str, name: str, tags: dict | None = None,
    verbose: bool = False, restore: bool = False,
):
    """Retrain ``jobs`` (``seed_job``) as one Ray Tune experiment, each logged to MLflow as a
    child of ``parent_run_id``, each scoring test once with its best-validation checkpoint.

    Args:
        jobs: the seed runs.
        dataset: the dataset, test split included.
        resources: per-trial resources and concurrency.
        tracking_uri: the MLflow store.
        parent_run_id: the test stage's parent run.
        storage: where Tune keeps the experiment.
        name: the experiment's name (unique per driver: ``tune_experiment_name``).
        tags: tags of every seed run besides ``stage`` and the job's own.
        verbose: Ray Tune's own tables and the runs' logs on the console.
        restore: continue the experiment at ``storage/name`` (a run interrupted with its
            driver resumes from its last epoch).

    Returns:
        Tune's ``ResultGrid``.

    Raises:
        RunInterruptedError: Ray Tune was stopped (Ctrl-C) before every run ended.
    """
    trainable = tune.with_resources(
        tune.with_parameters(retrain_trial, dataset=dataset,
                             num_threads=resources.torch_threads,
                             require_cuda=resources.require_cuda,
                             faults=faultpoints.FaultPoints.from_env()),
        resources.per_trial(),
    )
    path = f"{storage}/{name}"
    if restore and tune.Tuner.can_restore(path):
        grid = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True,
                                  resume_errored=True).fit()
        check_ended(grid, len(jobs), "seed runs")
        return grid
    client = check_tracking(tracking_uri)
    logger = MLflowTrialLogger(
        tracking_uri,
        client.get_run(parent_run_id).info.experiment_id,
        parent_run_id,
        tags={"stage": "test", **(tags or {})},
        describe=describe_job,
        metric_prefixes=TEST_PREFIXES,
        checkpoint_artifacts={MODEL_FILE: MODEL_ARTIFACT_DIR},  # models.recommend reads it
        artifacts_for=has_model_bundle,  # not the kNN baselines'
        name=seed_run_name,
    )
    concurrent = resources.concurrent_trials()
    grid = tune.Tuner(
        trainable,
        param_space={"job": tune.grid_search(jobs)},
        tune_config=tune.TuneConfig(max_concurrent_trials=concurrent),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage,
            callbacks=[logger, SeedRunReporter(
                len(jobs), concurrent, run_label,
                [(f"test_{m}", METRIC_LABELS[m]) for m in TABLE_METRICS],
                progress=(f"best_valid_{SELECTION_METRIC}",
                          f"valid {METRIC_LABELS[SELECTION_METRIC]}"))],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            failure_config=tune.FailureConfig(max_failures=resources.max_failures),
            verbose=1 if verbose else 0,
        ),
    ).fit()
    check_ended(grid, len(jobs), "seed runs")
    return grid


def run_label(config: dict) -> str:
    """A seed run's name on the console: "<space> seed <n>", with its arm unless the full one.

    Args:
        config: the run's Tune config (``{"job": ...}``).
    """
    job = config["job"]
    arm = "" if job["arm"] == FULL_ARM else f" [{job['arm']}]"
    return f"{job['space']}{arm} seed {job['seed']}"


def seed_run_name(config: dict) -> str:
    """A seed run's MLflow run name: its variant, arm and seed ("trm full seed 1",
    "da da_gating=false seed 2"), so that runs read apart in the MLflow UI's tables and charts.

    Args:
        config: the run's Tune config (``{"job": ...}``).

    Returns:
        The name.
    """
    job = config["job"]
    return f"{job['space']} {job['arm']} seed {job['seed']}"


def train_popularity(dataset: SessionDataset) -> np.ndarray:
    """How often each item is a training target: the head/tail/cold split of the report.

    Args:
        dataset: the loaded dataset (its training split).
    """
    return np.bincount(dataset.train.targets, minlength=dataset.n_items)


def _collect(
    grid, dataset_name: str, order: list[tuple[str, str]], n_items: int
) -> tuple[pd.DataFrame, dict, dict]:
    """Per-seed results (in ``order`` of (variant, arm), then seed) and the per-row ranks and
    top-k exposure counts (``verdict.results.exposure_counts``), of the full configurations
    ((dataset, variant) -> per seed) and of the ablation arms ((dataset, variant, arm) -> per
    seed)."""
    rows, per_row = [], {}
    for result in grid:
        job, metrics = result.config["job"], result.metrics
        rows.append({
            "dataset": dataset_name, "variant": job["variant"], "arm": job["arm"],
            "seed": job["seed"], "best_epoch": metrics["best_epoch"],
            "selected_from": job["selected_from"],
            **{name: metrics[f"test_{name}"] for name in METRICS},
        })
        with result.checkpoint.as_directory() as directory:
            with np.load(Path(directory) / TEST_ROWS_FILE) as arrays:
                entry = (arrays["ranks"], exposure_counts(arrays["topk"], n_items))
        key = (dataset_name, job["variant"], job["arm"])
        per_row.setdefault(key, []).append((job["seed"], entry))
    ordered = {
        key: [entry for _, entry in sorted(seeds, key=lambda pair: pair[0])]
        for key, seeds in per_row.items()
    }
    full = {(d, v): seeds for (d, v, arm), seeds in ordered.items() if arm == FULL_ARM}
    arms = {key: seeds for key, seeds in ordered.items() if key[2] != FULL_ARM}
    rank = {key: i for i, key in enumerate(order)}
    frame = pd.DataFrame(rows)
    frame = frame.assign(_order=[rank[(v, a)] for v, a in zip(frame["variant"], frame["arm"],
                                                              strict=True)])
    frame = frame.sort_values(["_order", "seed"], kind="stable").drop(columns="_order")
    return frame.reset_index(drop=True), full, arms


def _start_parent_run(client, plan: TestPlan, out_dir: Path) -> str:
    experiment_id = get_or_create_experiment(
        client, plan.experiment_name,
        default_artifact_location(plan.tracking_uri, plan.output_dir, plan.experiment_name),
    )
    run = client.create_run(
        experiment_id,
        run_name=f"test-{out_dir.name}",
        tags={"stage": "test", "dataset": plan.dataset.label, "output_dir": str(out_dir)},
    )
    log_params(client, run.info.run_id, {
        "variants": ",".join(s.space for s in plan.selections),
        "seeds": ",".join(map(str, plan.seeds)),
        "baseline": plan.baseline,
        "baseline_rule": plan.baseline_rule or plan.baseline,
        "correction": plan.correction,
        "alpha": plan.alpha,
        "arms": ";".join(arm.name for arm in plan.arms) or "-",
        "retrain_max_epochs": plan.max_epochs,
        "command_line": plan.command_line,
    })
    selections = [asdict(s) for s in plan.selections]
    (out_dir / "selections.json").write_text(json.dumps(selections, indent=2))
    client.log_artifact(run.info.run_id, str(out_dir / "selections.json"))
    client.log_batch(run.info.run_id, tags=[
        RunTag(f"selected_from.{s.space}", s.trial_run_id) for s in plan.selections
    ])
    return run.info.run_id
