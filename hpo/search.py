"""One hyperparameter search: Tuner + OptunaSearch + ASHA over a space, recorded in MLflow.

Order matters for failing early: the tracking store and the dataset are checked before Ray starts,
and nothing is written to MLflow until both are known good.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import optuna
import pandas as pd
from mlflow.entities import RunTag
from ray import tune
from ray.tune.schedulers import ASHAScheduler

from data import DatasetSource
from hpo.cluster import Resources, init_ray
from hpo.results import plot_history, results_table
from hpo.searcher import PruningAwareOptunaSearch
from hpo.space import Budget, ConfigSampler, SearchSpace
from hpo.tracking import (
    MLflowTrialLogger,
    check_tracking,
    default_artifact_location,
    get_or_create_experiment,
    log_params,
)
from hpo.trainable import train_trial
from models.registry import dataset_needs

log = logging.getLogger(__name__)

TRIALS_DIR = "trials"
STATE_FILE = "search.json"


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

    @property
    def experiment_name(self) -> str:
        return f"{self.dataset.label}/{self.space.name}"

    @property
    def trials_storage(self) -> str:
        """Where Tune keeps the trial directories: the search dir, or under --storage-path."""
        return self.resources.trials_location(self.search_dir, self.output_dir)

    @property
    def tune_metric(self) -> str:
        """The metric at each trial's selected (best-so-far) checkpoint: what selection uses."""
        return f"best_{self.budget.metric}"

    def describe(self) -> str:
        b, r = self.budget, self.resources
        lines = [
            f"search      {self.space.name} (variant {self.space.model}) from {self.space.path}",
            f"dataset     {self.dataset.label} (data dir {self.dataset.data_dir or 'default'}"
            + (f", last {self.dataset.train_rows:,} training rows only"
               if self.dataset.train_rows else "") + ")",
            f"budget      {b.num_samples} trials x <= {b.max_epochs} epochs; ASHA grace "
            f"{b.grace_period}, reduction factor {b.reduction_factor}; {b.mode} {b.metric}",
            f"seed        {self.seed} (TPE sampler and every trial's training)",
            f"resources   {r.cpus_per_trial} CPU + {r.gpus_per_trial} GPU per trial"
            + (" (CUDA required)" if r.require_cuda else "")
            + f", max concurrent {r.max_concurrent or 'as the cluster fits'}, "
            f"max failures {r.max_failures}",
            f"ray         {r.address or 'local instance (or the Ray job cluster)'}",
            f"trials      {self.trials_storage}",
            f"mlflow      {self.tracking_uri} (experiment {self.experiment_name!r})",
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


@dataclass(frozen=True)
class SearchOutcome:
    parent_run_id: str
    table: pd.DataFrame  # all trials, best first


def run_search(plan: SearchPlan, resume: bool = False) -> SearchOutcome:
    """Run (or resume) the search; returns its MLflow parent run and the table of all trials."""
    client = check_tracking(plan.tracking_uri)
    dataset = plan.dataset.load(**dataset_needs(plan.space.model)).without_test()
    log.info("loaded %s", dataset.summary())

    state_path = plan.search_dir / STATE_FILE
    if resume:
        state = json.loads(state_path.read_text())
        recorded = state.get("resources", {}).get("storage_path")
        if recorded != plan.resources.storage_path:
            raise ValueError(f"--resume: {plan.search_dir} keeps its trials in "
                             f"{recorded or 'its output directory'}; pass the same "
                             f"--storage-path ({recorded or 'none'})")
        parent_run_id = state["parent_run_id"]
        client.update_run(parent_run_id, status="RUNNING")
    else:
        plan.search_dir.mkdir(parents=True, exist_ok=False)
        parent_run_id = _start_parent_run(client, plan)
        state_path.write_text(json.dumps({"parent_run_id": parent_run_id, **_plan_record(plan)}))

    init_ray(plan.resources.address)
    trainable = tune.with_resources(
        tune.with_parameters(
            train_trial, dataset=dataset, num_threads=plan.resources.torch_threads,
            require_cuda=plan.resources.require_cuda,
        ),
        plan.resources.per_trial(),
    )
    trials_path = f"{plan.trials_storage}/{TRIALS_DIR}"
    if resume and tune.Tuner.can_restore(trials_path):
        tuner = tune.Tuner.restore(trials_path, trainable=trainable, resume_errored=False)
    else:
        tuner = _new_tuner(plan, trainable, client, parent_run_id)
    grid = tuner.fit()

    table = results_table(grid, plan.tune_metric, plan.budget.mode)
    _finish_parent_run(client, plan, parent_run_id, table)
    if len(table) and (table["outcome"] == "failed").all():
        raise SearchFailedError(
            f"{plan.space.name}: all {len(table)} trials failed (first error: "
            f"{table['error'].iloc[0]}); see {plan.search_dir} and MLflow run {parent_run_id}"
        )
    return SearchOutcome(parent_run_id, table)


def _new_tuner(plan: SearchPlan, trainable, client, parent_run_id: str) -> tune.Tuner:
    b = plan.budget
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    sampler = ConfigSampler(plan.space, {"epochs": b.max_epochs, "seed": plan.seed})
    searcher = PruningAwareOptunaSearch(
        space=sampler,
        metric=plan.tune_metric,
        mode=b.mode,
        sampler=optuna.samplers.TPESampler(seed=plan.seed),
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
    )
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            metric=plan.tune_metric,
            mode=b.mode,
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=b.num_samples,
            max_concurrent_trials=plan.resources.concurrent_trials(),
        ),
        run_config=tune.RunConfig(
            name=TRIALS_DIR,
            storage_path=plan.trials_storage,
            callbacks=[logger],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            failure_config=tune.FailureConfig(max_failures=plan.resources.max_failures),
            verbose=1,
        ),
    )


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
              "dataset": plan.dataset.label, "search_dir": str(plan.search_dir)},
    )
    run_id = run.info.run_id
    record = _plan_record(plan)
    params = {k: v for k, v in record.items() if k not in ("budget", "resources")}
    params.update({f"budget.{k}": v for k, v in record["budget"].items()})
    params.update({f"resources.{k}": v for k, v in record["resources"].items()})
    log_params(client, run_id, params)
    client.log_artifact(run_id, str(plan.space.path), artifact_path="search_space")
    return run_id


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
        client.log_metric(run_id, plan.tune_metric, float(best[plan.tune_metric]))
    counts = table["outcome"].value_counts().to_dict()
    client.log_batch(run_id, tags=[RunTag(f"trials_{k}", str(v)) for k, v in counts.items()])
    client.set_terminated(run_id, status="FAILED" if finished.empty else "FINISHED")
