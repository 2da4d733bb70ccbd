"""MLflow tracking: where runs go, the parent run of a search, and the per-trial logger callback.

All MLflow writes happen in the driver (the Tune callback runs there), so trials on remote nodes
never need a path to the store: one writer per search, over HTTP when the URI is a server (see
``hpo.tracking_server``). Each trial's run is tagged with the Ray node and device it ran on, and
with its retries when a failure (a crash, a node that died) was recovered from a checkpoint.
"""

from __future__ import annotations

import logging
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from hpo.outcome import TrialOutcome, split_meta, trial_error_text, trial_outcome

log = logging.getLogger(__name__)

PARENT_TAG = "mlflow.parentRunId"
TRIAL_TAG = "ray_trial_id"
LOGGED_PREFIXES = ("train_loss", "epoch_time", "valid_", "best_valid_")
TEST_PREFIXES = (*LOGGED_PREFIXES, "test_")
MAX_TAG_CHARS = 4000
# Result keys the trainable reports about where it runs -> the run tags that record them.
PLACEMENT_TAGS = {"node_id": "ray_node_id", "device": "device", "gpu_ids": "ray_gpu_ids"}


class TrackingUnavailableError(RuntimeError):
    """The tracking server cannot be reached; raised before any trial starts."""


def resolve_tracking_uri(cli_uri: str | None, output_dir: Path) -> str:
    """--mlflow-uri, else MLFLOW_TRACKING_URI, else a SQLite store under the output directory.

    The SQLite path is absolute so the store is the same from any working directory.
    """
    uri = cli_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{(output_dir / 'mlflow.db').resolve()}"


def default_artifact_location(tracking_uri: str, output_dir: Path, experiment: str) -> str | None:
    """Local stores keep artifacts beside the database; a server decides for itself."""
    if tracking_uri.startswith(("sqlite:", "file:")) or "://" not in tracking_uri:
        return (output_dir.resolve() / "mlartifacts" / experiment.replace("/", "_")).as_uri()
    return None


def check_tracking(uri: str, timeout_s: float = 5.0) -> MlflowClient:
    """Fail fast, with the URI in the message, if the store cannot be used."""
    if uri.startswith(("http://", "https://")):
        health = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(health, timeout=timeout_s) as response:
                response.read()
        except (urllib.error.URLError, OSError) as exc:
            raise TrackingUnavailableError(
                f"MLflow tracking server {uri} is unreachable ({exc}). Start it (see README, "
                "'python -m hpo.tracking_server') or pass another --mlflow-uri."
            ) from exc
    elif uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(tracking_uri=uri)
    try:
        client.search_experiments(max_results=1)
    except Exception as exc:  # any backend error means we cannot record results
        raise TrackingUnavailableError(f"MLflow tracking store {uri} is unusable: {exc}") from exc
    return client


# MLflow 3's UI opens an experiment of this kind on its runs table (not the GenAI overview).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
# The run's description in the MLflow UI (markdown).
NOTE_TAG = "mlflow.note.content"


def get_or_create_experiment(
    client: MlflowClient, name: str, artifact_location: str | None
) -> str:
    """The id of experiment ``name``, created (or restored, if deleted) as needed, tagged as a
    model-development experiment so the MLflow UI opens on its runs table.

    Args:
        client: the tracking client.
        name: the experiment's name.
        artifact_location: where a new experiment keeps artifacts (None: the store decides).
    """
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return client.create_experiment(name, artifact_location=artifact_location,
                                        tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
    if experiment.lifecycle_stage == "deleted":
        client.restore_experiment(experiment.experiment_id)
    if experiment.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return experiment.experiment_id


def log_params(client: MlflowClient, run_id: str, params: dict[str, Any]) -> None:
    client.log_batch(run_id, params=[Param(k, _param_text(v)) for k, v in sorted(params.items())])


def metric_batch(
    result: dict[str, Any], step: int, timestamp_ms: int, prefixes: tuple[str, ...]
) -> list[Metric]:
    """The per-epoch learning curves, without Tune's bookkeeping (pid, timestamp, config/...)."""
    return [
        Metric(key, float(value), timestamp_ms, step)
        for key, value in sorted(result.items())
        if key.startswith(prefixes) and isinstance(value, int | float)
    ]


# Tags of a search trial's run from the searcher's bookkeeping (``hpo.outcome.META_KEY``).
META_TAGS = {"number": "optuna_trial", "source": "config_source"}


def config_as_params(config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """Default trial description: the config as params; the searcher's bookkeeping (Optuna
    trial number, where the configuration came from) as tags.

    Args:
        config: the trial's config as Ray Tune holds it.

    Returns:
        ``(params, tags)`` for the trial's MLflow run.
    """
    params, meta = split_meta(config)
    return params, {tag: str(meta[key]) for key, tag in META_TAGS.items() if key in meta}


class MLflowTrialLogger(Callback):
    """One nested MLflow run per Tune trial, written from the driver.

    On a resumed search the trial's existing run is found by its trial-id tag and continued;
    results it already holds are not logged again, so a restore never duplicates runs or points.
    ``describe`` (a module-level function, so the callback pickles) turns a trial's config into
    the run's params and extra tags. ``checkpoint_artifacts`` maps files of a completed trial's
    last checkpoint to the artifact directories they are logged to (the test stage's model).
    """

    def __init__(
        self,
        tracking_uri: str,
        experiment_id: str,
        parent_run_id: str,
        tags: dict,
        describe: Callable[[dict], tuple[dict, dict]] = config_as_params,
        metric_prefixes: tuple[str, ...] = LOGGED_PREFIXES,
        checkpoint_artifacts: dict[str, str] | None = None,
    ):
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.tags = dict(tags)
        self.describe = describe
        self.metric_prefixes = metric_prefixes
        # File in a completed trial's last checkpoint -> the artifact directory it is logged to.
        self.checkpoint_artifacts = dict(checkpoint_artifacts or {})
        self._runs: dict[str, str] = {}
        self._last_step: dict[str, int] = {}
        self._placement: dict[str, dict[str, str]] = {}
        self._client: MlflowClient | None = None

    def __getstate__(self):
        # Tune pickles callbacks into its experiment state; live clients and caches stay out.
        state = self.__dict__.copy()
        state.update(_client=None, _runs={}, _last_step={}, _placement={})
        return state

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def run_id(self, trial) -> str:
        if trial.trial_id not in self._runs:
            self._runs[trial.trial_id] = self._find_or_create_run(trial)
        return self._runs[trial.trial_id]

    def _find_or_create_run(self, trial) -> str:
        existing = self.client.search_runs(
            [self.experiment_id],
            filter_string=(
                f"tags.`{TRIAL_TAG}` = '{trial.trial_id}' "
                f"and tags.`{PARENT_TAG}` = '{self.parent_run_id}'"
            ),
            max_results=1,
        )
        if existing:
            run_id = existing[0].info.run_id
            history = self.client.get_metric_history(run_id, "train_loss")
            self._last_step[trial.trial_id] = max((m.step for m in history), default=0)
            self.client.update_run(run_id, status="RUNNING")
            return run_id
        params, extra_tags = self.describe(trial.config)
        tags = {**self.tags, **{k: str(v) for k, v in extra_tags.items()},
                PARENT_TAG: self.parent_run_id, TRIAL_TAG: trial.trial_id}
        run = self.client.create_run(self.experiment_id, run_name=str(trial), tags=tags)
        log_params(self.client, run.info.run_id, params)
        self._last_step[trial.trial_id] = 0
        return run.info.run_id

    def on_trial_start(self, iteration, trials, trial, **info):
        self.run_id(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        run_id = self.run_id(trial)
        self._tag_placement(trial, run_id, result)
        step = int(result["epoch"])  # one report per epoch
        if step <= self._last_step.get(trial.trial_id, 0):
            return
        now_ms = int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=metric_batch(result, step, now_ms,
                                                           self.metric_prefixes))
        self._last_step[trial.trial_id] = step

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._log_checkpoint_artifacts(trial)
        self._finish(trial, error=False)

    def _log_checkpoint_artifacts(self, trial) -> None:
        """Log the ``checkpoint_artifacts`` files of the trial's last checkpoint (e.g. the
        test stage's model bundle); a missing file is a warning, not a failed search."""
        wanted = getattr(self, "checkpoint_artifacts", None)  # absent in a restored callback
        if not wanted:
            return
        checkpoint = trial.checkpoint
        if checkpoint is None:
            log.warning("trial %s completed without a checkpoint: no %s logged",
                        trial, sorted(wanted))
            return
        run_id = self.run_id(trial)
        with checkpoint.as_directory() as directory:
            for name, artifact_dir in wanted.items():
                path = Path(directory) / name
                if path.is_file():
                    self.client.log_artifact(run_id, str(path), artifact_dir)
                else:
                    log.warning("trial %s: %s is not in its last checkpoint", trial, name)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._finish(trial, error=True)

    def on_trial_recover(self, iteration, trials, trial, **info):
        """The trial failed and is retried from its last checkpoint: same run, nothing lost."""
        tags = [RunTag("retries", str(trial.num_failures)),
                RunTag("last_failure", trial_error_text(trial)[-MAX_TAG_CHARS:])]
        self.client.log_batch(self.run_id(trial), tags=tags)
        log.warning("trial %s failed (failure %d) and is retried from its last checkpoint",
                    trial, trial.num_failures)

    def _tag_placement(self, trial, run_id: str, result: dict[str, Any]) -> None:
        """Tag where the trial runs when that is new (its first report, or after a retry)."""
        placement = {tag: str(result[key]) for key, tag in PLACEMENT_TAGS.items()
                     if result.get(key) not in (None, "")}
        if placement and placement != self._placement.get(trial.trial_id):
            self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in placement.items()])
            self._placement[trial.trial_id] = placement

    def _finish(self, trial, error: bool) -> None:
        run_id = self.run_id(trial)
        result = trial.last_result or {}
        outcome = trial_outcome(result, error)
        epochs = int(result.get("epoch", 0))
        status = {
            TrialOutcome.COMPLETED: "completed",
            TrialOutcome.STOPPED: f"stopped by ASHA at epoch {epochs}",
            TrialOutcome.FAILED: "failed",
        }[outcome]
        tags = [
            RunTag("status", status),
            RunTag("outcome", outcome.value),
            RunTag("epochs_trained", str(epochs)),
        ]
        if outcome is TrialOutcome.FAILED:
            tags.append(RunTag("error", trial_error_text(trial)[-MAX_TAG_CHARS:]))
        self.client.log_batch(run_id, tags=tags)
        self.client.set_terminated(
            run_id, status="FAILED" if outcome is TrialOutcome.FAILED else "FINISHED"
        )


def _param_text(value: Any) -> str:
    return str(value)[:6000]
