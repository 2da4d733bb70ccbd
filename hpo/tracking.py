"""MLflow tracking: where runs go, the parent run of a search, and the per-trial logger callback.

All MLflow writes happen in the driver (the Tune callback runs there), so trials on remote nodes
never need a path to the store: one writer per search, over HTTP when the URI is a server (see
``hpo.tracking_server``). Each trial's run is tagged with the Ray node and device it ran on, and
with its retries when a failure (a crash, a node that died) was recovered from a checkpoint.

Faults. A write the store does not answer (a tracking server that is down or restarting, a SQLite
file another search keeps locked) is retried, on top of MLflow's own HTTP retries, for
``CORE_HPO_TRACKING_RETRY_S`` seconds (default 300) while the search waits; then, or at once
for a store that answers with an error (e.g. a database file that cannot be written), the search
stops with a ``TrackingUnavailableError`` naming the store. Nothing logged is lost and nothing is
logged twice: a retried batch carries its original timestamps (the store keeps one copy), a run
is looked up by its trial id before one is created, and on ``--resume`` each trial's run
continues from the last epoch it holds. A SQLite store waits for other searches' locks and is
created by one process at a time (``hpo.sqlite_stores``).
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

import requests
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from ray.tune import Callback
from sqlalchemy.exc import SQLAlchemyError

from hpo import faultpoints
from hpo.outcome import (
    DEVICE_WARNING_KEY,
    RESUME_NOTE_KEY,
    RESUMED_KEY,
    TrialOutcome,
    split_meta,
    storage_error,
    trial_error_text,
    trial_outcome,
)
from hpo.sqlite_stores import first_use_lock, with_busy_timeout

log = logging.getLogger(__name__)

PARENT_TAG = "mlflow.parentRunId"
TRIAL_TAG = "ray_trial_id"
# aug_: diffaug's generated / kept / added row counts (models.diffusion.COUNTS)
LOGGED_PREFIXES = ("train_loss", "epoch_time", "valid_", "best_valid_", "aug_")
TEST_PREFIXES = (*LOGGED_PREFIXES, "test_")
MAX_TAG_CHARS = 4000
# Result keys the trainable reports about where it runs -> the run tags that record them.
# precision_used / loss_impl_used: what a trial resolved its auto settings to (models.precision).
PLACEMENT_TAGS = {"node_id": "ray_node_id", "device": "device", "gpu_ids": "ray_gpu_ids",
                  DEVICE_WARNING_KEY: "device_warning", "precision_used": "precision_used",
                  "loss_impl_used": "loss_impl_used"}
RETRY_ENV = "CORE_HPO_TRACKING_RETRY_S"
DEFAULT_RETRY_S = 300.0
RETRY_PAUSE_S = 2.0


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
    """Fail fast, with the URI in the message, if the store cannot be used: a server that does
    not answer, or that refuses this process's login (``check_login``).

    Args:
        uri: the tracking URI.
        timeout_s: seconds a request to a tracking server may take.

    Returns:
        A client of the store.

    Raises:
        TrackingUnavailableError: the store cannot be used, with the reason.
    """
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
        check_login(uri, timeout_s)
    try:
        # A new SQLite store creates its tables when the client opens it: one process at a time.
        with first_use_lock(uri):
            client = MlflowClient(tracking_uri=with_busy_timeout(uri))
            client.search_experiments(max_results=1)
    except Exception as exc:  # any backend error means we cannot record results
        raise TrackingUnavailableError(f"MLflow tracking store {uri} is unusable: {exc}") from exc
    return client


USERNAME_ENV = "MLFLOW_TRACKING_USERNAME"
PASSWORD_ENV = "MLFLOW_TRACKING_PASSWORD"


def _tls_verify() -> bool | str:
    """What MLflow's own client verifies a server's certificate with (its environment)."""
    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() in ("true", "1"):
        return False
    return os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or True


def check_login(uri: str, timeout_s: float = 5.0) -> None:
    """Whether a tracking server lets this process read experiments, with the login MLflow's
    client sends (``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``), so that a
    missing or wrong password stops a search before anything runs, with what to do.

    A server without authentication answers anyone; one started with
    ``python -m hpo.tracking_server --auth`` answers 401 without the right password.

    Args:
        uri: the server's URI (``http(s)://host:port``).
        timeout_s: seconds the request may take.

    Raises:
        TrackingUnavailableError: the server refused the login (401) or the user may not read
            experiments (403), or did not answer.
    """
    username = os.environ.get(USERNAME_ENV) or None
    password = os.environ.get(PASSWORD_ENV) or None
    if bool(username) != bool(password):
        missing = PASSWORD_ENV if username else USERNAME_ENV
        raise TrackingUnavailableError(
            f"{missing} is not set: an MLflow tracking server login needs both "
            f"{USERNAME_ENV} and {PASSWORD_ENV}")
    try:
        response = requests.get(
            uri.rstrip("/") + "/api/2.0/mlflow/experiments/search",
            params={"max_results": 1}, auth=(username, password) if username else None,
            timeout=timeout_s, verify=_tls_verify())
    except requests.exceptions.RequestException as exc:
        raise TrackingUnavailableError(
            f"MLflow tracking server {uri} did not answer a request ({exc})") from exc
    if response.status_code == 401:
        if username is None:
            raise TrackingUnavailableError(
                f"MLflow tracking server {uri} needs a login (401 Unauthorized): set "
                f"{USERNAME_ENV} and {PASSWORD_ENV} (README, 'Run on a Ray cluster')")
        raise TrackingUnavailableError(
            f"MLflow tracking server {uri} refused the login of user {username!r} (401 "
            f"Unauthorized): wrong password or unknown user; check {USERNAME_ENV} and "
            f"{PASSWORD_ENV}")
    if response.status_code == 403:
        raise TrackingUnavailableError(
            f"MLflow tracking server {uri}: user {username!r} may not read experiments (403 "
            "Forbidden); ask the server's admin for a permission")


def retry_window_s() -> float:
    """How long a write the tracking store does not answer is retried (``RETRY_ENV``)."""
    return float(os.environ.get(RETRY_ENV, DEFAULT_RETRY_S))


def is_transient(exc: BaseException) -> bool:
    """Whether a failed MLflow call is worth retrying: the store did not answer (connection
    refused or reset, a timeout, retries of 5xx answers exhausted) or a SQLite file was locked.

    Args:
        exc: the exception the call raised.
    """
    seen = exc
    while seen is not None:
        if isinstance(seen, requests.exceptions.ConnectionError | requests.exceptions.Timeout
                      | requests.exceptions.RetryError):
            return True
        if isinstance(seen, SQLAlchemyError) and "database is locked" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    text = str(exc)
    return isinstance(exc, MlflowException) and (
        ("API request to" in text and "failed with exception" in text)
        or "database is locked" in text)


def call_tracking(uri: str, what: str, fn: Callable[..., Any], *args,
                  retry_s: float | None = None, **kwargs) -> Any:
    """``fn(*args, **kwargs)``, an MLflow call, retried while the store does not answer.

    Args:
        uri: the tracking URI (for messages).
        what: what the call does, for messages ("logging epoch 3 of trial ...").
        fn: the call.
        *args: its arguments.
        retry_s: how long to retry (default: ``retry_window_s()``).
        **kwargs: its keyword arguments.

    Raises:
        TrackingUnavailableError: the store did not answer within the window, or answered with
            an error (the search stops; ``--resume`` continues it).
    """
    retry_s = retry_window_s() if retry_s is None else retry_s
    deadline = None
    while True:
        try:
            result = fn(*args, **kwargs)
        except (MlflowException, SQLAlchemyError, requests.exceptions.RequestException) as exc:
            problem = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}"
            if not is_transient(exc):
                raise TrackingUnavailableError(
                    f"MLflow tracking store {uri} failed while {what} ({problem}). The search "
                    "stopped; what it logged is kept: fix the store and continue with --resume"
                ) from exc
            now = time.monotonic()
            if deadline is None:
                deadline = now + retry_s
                log.warning("MLflow tracking store %s did not answer while %s (%s); retrying "
                            "for up to %.0f s", uri, what, problem, retry_s)
            if now >= deadline:
                raise TrackingUnavailableError(
                    f"MLflow tracking store {uri} did not answer for {retry_s:.0f} s while "
                    f"{what} ({problem}). The search stopped; what it logged is kept: restart "
                    "the store and continue with --resume") from exc
            time.sleep(min(RETRY_PAUSE_S, deadline - now))  # backoff between retries
            continue
        if deadline is not None:
            log.warning("MLflow tracking store %s answers again: %s done", uri, what)
        return result


# The experiment's kind for MLflow 3 UIs that read it. MLflow 3.17's UI does not: it chooses its
# GenAI or model-training view per browser, from its sidebar switch or a link's
# `workflowType=machine_learning` (hpo.ui prints such links).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
# The run's description in the MLflow UI (markdown).
NOTE_TAG = "mlflow.note.content"


def get_or_create_experiment(
    client: MlflowClient, name: str, artifact_location: str | None
) -> str:
    """The id of experiment ``name``, created (or restored, if deleted) as needed, tagged as a
    model-development experiment (``EXPERIMENT_KIND_TAG``; the store's ``Default`` experiment
    is tagged too: see ``tag_default_experiment``).

    Args:
        client: the tracking client.
        name: the experiment's name.
        artifact_location: where a new experiment keeps artifacts (None: the store decides).
    """
    tag_default_experiment(client)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name, artifact_location=artifact_location,
                                            tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        except MlflowException as exc:  # another search created it since the lookup
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise exc from None
    if experiment.lifecycle_stage == "deleted":
        client.restore_experiment(experiment.experiment_id)
    _tag_kind(client, experiment)
    return experiment.experiment_id


def _tag_kind(client: MlflowClient, experiment) -> None:
    if experiment.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)


def tag_default_experiment(client: MlflowClient) -> None:
    """Tags the store's own ``Default`` experiment (which every new store creates) as a
    model-development one too, so that every experiment in a search's store has the same kind;
    nothing happens where there is none or it is deleted.

    Args:
        client: the tracking client.
    """
    try:
        default = client.get_experiment_by_name("Default")
        if default is not None and default.lifecycle_stage == "active":
            _tag_kind(client, default)
    except MlflowException as exc:  # e.g. a shared server whose permissions forbid it
        log.warning("could not tag MLflow's Default experiment: %s", exc)


def mark_killed(client: MlflowClient, run_id: str) -> None:
    """Marks a parent run KILLED after Ray Tune was stopped (Ctrl-C), best effort: the interrupt
    is what the user must see, so a tracking store that cannot be reached is logged, not raised.

    Args:
        client: the tracking client.
        run_id: the run stopped before its trials or seed runs ended.
    """
    try:
        client.set_terminated(run_id, status="KILLED")
    except Exception as exc:  # noqa: BLE001 - any store error; the interrupt goes on
        log.warning("could not mark MLflow run %s KILLED: %s", run_id, exc)


def log_params(client: MlflowClient, run_id: str, params: dict[str, Any]) -> None:
    """Log ``params`` to a run in one batch, sorted by name, each as MLflow param text.

    Args:
        client: the tracking client.
        run_id: the run.
        params: name -> value (lists, dicts and None written as their text).
    """
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
    A trial that resumed from its own resume file says so in its first result (the epoch, and any
    file it could not read): tagged ``resumed_from_epoch`` / ``resume_note``, the note also
    logged as a warning. Writes the store does not answer are retried (``call_tracking``); a
    trial reporting it cannot write its state stops the search (``OutputUnwritableError``).
    ``describe`` (a module-level function, so the callback pickles) turns a trial's config into
    the run's params and extra tags; ``name``, if given (module-level too), into the run's name
    ("dahn trial 3", "trm full seed 2"), else the run is named after the Tune trial.
    ``checkpoint_artifacts`` maps files of a completed trial's last checkpoint to the artifact
    directories they are logged to (the test stage's model).
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
        artifacts_for: Callable[[dict], bool] | None = None,
        name: Callable[[dict], str] | None = None,
    ):
        self.tracking_uri = tracking_uri
        self.name = name
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.tags = dict(tags)
        self.describe = describe
        self.metric_prefixes = metric_prefixes
        # File in a completed trial's last checkpoint -> the artifact directory it is logged to.
        self.checkpoint_artifacts = dict(checkpoint_artifacts or {})
        # Which trials (by config) leave them; None: every trial (a missing file is warned).
        self.artifacts_for = artifacts_for
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
        """The MLflow client, made on first use (in the process that logs, not the driver's)."""
        if self._client is None:
            self._client = MlflowClient(tracking_uri=with_busy_timeout(self.tracking_uri))
        return self._client

    def _call(self, what: str, fn: Callable[..., Any], *args, **kwargs) -> Any:
        return call_tracking(self.tracking_uri, what, fn, *args, **kwargs)

    def run_id(self, trial) -> str:
        """The MLflow run of ``trial``, found (by its trial id) or created once.

        Args:
            trial: a Ray Tune trial.
        """
        if trial.trial_id not in self._runs:
            self._runs[trial.trial_id] = self._call(
                f"opening the run of trial {trial}", self._find_or_create_run, trial)
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
        params, extra_tags = self.describe(trial.config)
        if existing:
            run_id = existing[0].info.run_id
            if not existing[0].data.params:  # created by a call whose answer was lost
                log_params(self.client, run_id, params)
            history = self.client.get_metric_history(run_id, "train_loss")
            self._last_step[trial.trial_id] = max((m.step for m in history), default=0)
            self.client.update_run(run_id, status="RUNNING")
            return run_id
        tags = {**self.tags, **{k: str(v) for k, v in extra_tags.items()},
                PARENT_TAG: self.parent_run_id, TRIAL_TAG: trial.trial_id}
        run = self.client.create_run(self.experiment_id, run_name=self.run_name(trial),
                                     tags=tags)
        log_params(self.client, run.info.run_id, params)
        self._last_step[trial.trial_id] = 0
        return run.info.run_id

    def run_name(self, trial) -> str:
        """The MLflow run name of ``trial``: ``name(config)``, or the Tune trial's name.

        Args:
            trial: a Ray Tune trial.

        Returns:
            The name.
        """
        name = getattr(self, "name", None)  # absent in a callback pickled before it existed
        return name(trial.config) if name is not None else str(trial)

    def on_trial_start(self, iteration, trials, trial, **info):
        self.run_id(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        problem = storage_error(result)
        if problem is not None:
            raise problem
        run_id = self.run_id(trial)
        self._tag_placement(trial, run_id, result)
        self._tag_resume(trial, run_id, result)
        step = int(result["epoch"])  # one report per epoch
        if step <= self._last_step.get(trial.trial_id, 0):
            return
        faultpoints.fire("log", split_meta(trial.config)[1].get("number"), step)
        now_ms = int(time.time() * 1000)
        batch = metric_batch(result, step, now_ms, self.metric_prefixes)
        self._call(f"logging epoch {step} of trial {trial}", self.client.log_batch, run_id,
                   metrics=batch)
        self._last_step[trial.trial_id] = step

    def _tag_resume(self, trial, run_id: str, result: dict[str, Any]) -> None:
        """Record that the trial resumed from its own resume file, and any file it skipped."""
        if RESUMED_KEY not in result:
            return
        tags = [RunTag(RESUMED_KEY, str(result[RESUMED_KEY]))]
        note = result.get(RESUME_NOTE_KEY)
        if note:
            log.warning("trial %s: %s", trial, note)
            tags.append(RunTag(RESUME_NOTE_KEY, str(note)[-MAX_TAG_CHARS:]))
        self._call(f"tagging trial {trial} resumed", self.client.log_batch, run_id, tags=tags)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._log_checkpoint_artifacts(trial)
        self._finish(trial, error=False)

    def _log_checkpoint_artifacts(self, trial) -> None:
        """Log the ``checkpoint_artifacts`` files of the trial's last checkpoint (e.g. the
        test stage's model bundle); a missing file is a warning, not a failed search."""
        wanted = getattr(self, "checkpoint_artifacts", None)  # absent in a restored callback
        if not wanted:
            return
        chooser = getattr(self, "artifacts_for", None)
        if chooser is not None and not chooser(trial.config):
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
                    self._call(f"logging {name} of trial {trial}", self.client.log_artifact,
                               run_id, str(path), artifact_dir)
                else:
                    log.warning("trial %s: %s is not in its last checkpoint", trial, name)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._finish(trial, error=True)

    def on_trial_recover(self, iteration, trials, trial, **info):
        """The trial failed and is retried from its last checkpoint: same run, nothing lost."""
        tags = [RunTag("retries", str(trial.num_failures)),
                RunTag("last_failure", trial_error_text(trial)[-MAX_TAG_CHARS:])]
        self._call(f"tagging trial {trial}'s retry", self.client.log_batch, self.run_id(trial),
                   tags=tags)
        log.warning("trial %s failed (failure %d) and is retried from its last checkpoint",
                    trial, trial.num_failures)

    def _tag_placement(self, trial, run_id: str, result: dict[str, Any]) -> None:
        """Tag where the trial runs when that is new (its first report, or after a retry)."""
        placement = {tag: str(result[key]) for key, tag in PLACEMENT_TAGS.items()
                     if result.get(key) not in (None, "")}
        if placement and placement != self._placement.get(trial.trial_id):
            self._call(f"tagging where trial {trial} runs", self.client.log_batch, run_id,
                       tags=[RunTag(k, v) for k, v in placement.items()])
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
        what = f"recording how trial {trial} ended"
        self._call(what, self.client.log_batch, run_id, tags=tags)
        self._call(what, self.client.set_terminated, run_id,
                   status="FAILED" if outcome is TrialOutcome.FAILED else "FINISHED")


def _param_text(value: Any) -> str:
    return str(value)[:6000]
