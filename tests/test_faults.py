"""The fault suite (issue 20): real Ray, a real MLflow store or server, real SIGKILLs.

Each case ends with every trial accounted for exactly once (one MLflow run per Ray trial, each
finished once, one Optuna trial per Ray trial, told once) and every epoch's metrics logged exactly
once. Moments are made deterministic with the test hook ``CORE_HPO_TEST_HOOK``
(``hpo.faultpoints``): a driver or trial pauses at a named point and writes a marker; the test
polls for the marker (with a deadline) and then kills, damages or releases. Nothing sleeps to make
timing work.

Drivers that are killed run as subprocesses connected to the session's Ray instance (the
``ray_local`` fixture: no Ray start-up per driver); the ``--resume`` that follows runs in this
process, on the same instance. To keep the suite short on 2 cores, a case runs one trial unless
it needs more (two trials training at once when the driver dies; three for trials that fail).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import signal
import subprocess
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from local_cluster import (
    ROOT,
    free_port,
    kill_tree,
    launch_driver,
    start_mlflow_server,
    wait_exit,
    wait_for,
)
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

import launch
from hpo.cluster import EXPERIMENT_STATE_LOGGER, OneLineSaveError, quiet_state_save_errors
from hpo.faultpoints import ENV
from hpo.optuna_study import RAY_TRIAL_ATTR
from hpo.outcome import RESUME_NOTE_KEY, RESUMED_KEY
from hpo.search import RESUME_DIR, STATE_FILE
from hpo.selection import select_best
from hpo.tracking import (
    PARENT_TAG,
    RETRY_ENV,
    TRIAL_TAG,
    TrackingUnavailableError,
    call_tracking,
    mark_killed,
)
from hpo.tracking_server import wait_until_healthy

pytestmark = pytest.mark.slow

TINY = "tiny"  # written by the tiny_data_dir fixture
EPOCHS = 3
CURVES = ("train_loss", "valid_mrr_20", "best_valid_mrr_20", "epoch_time")
DEADLINE_S = 300  # upper bound for a loaded 2-core machine; every wait returns on its condition


def space_file(directory: Path, name: str) -> Path:
    """trm with tiny fixed sizes, under its own name (the experiment is ``tiny/<name>``)."""
    raw = yaml.safe_load((ROOT / "search_spaces" / "trm.yaml").read_text())
    raw["fixed"] = {"embedding_size": 16, "inner_size": 32, "batch_size": 256}
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def search_args(space: Path, data_dir: Path, out: Path, *extra: str,
                num_samples: int = 1, concurrent: int = 1) -> list[str]:
    """A search every trial of which trains EPOCHS epochs (grace period = max epochs: ASHA never
    stops one, so every trial must end with exactly epochs 1..EPOCHS logged)."""
    return ["--space", str(space), "--dataset", TINY, "--data-dir", str(data_dir),
            "--num-samples", str(num_samples), "--max-epochs", str(EPOCHS),
            "--grace-period", str(EPOCHS), "--max-concurrent", str(concurrent),
            "--output-dir", str(out), *extra]


def start_driver(args: list[str], workdir: Path, ray_address: str, hook: str | None = None,
                 hook_dir: Path | None = None, **env: str) -> tuple[subprocess.Popen, Path]:
    """``launch.py`` in its own session, on the session's Ray instance; output to a log file."""
    environment = {**os.environ, "RAY_ADDRESS": ray_address, "PYTHONPATH": str(ROOT), **env}
    return launch_driver(args, workdir, environment, hook, hook_dir)


def wait_marker(hook_dir: Path, point: str, driver: subprocess.Popen, log: Path) -> dict:
    """The marker of a paused point (the driver must still be running)."""
    marker = hook_dir / f"{point}.paused"
    try:
        wait_for(marker.exists, DEADLINE_S, f"hook at {point!r}", process=driver)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{log.read_text()[-3000:]}") from None
    return json.loads(marker.read_text())


def search_runs(client: MlflowClient, space: str):
    """The search's parent run and its child runs by Ray trial id."""
    experiment = client.get_experiment_by_name(f"{TINY}/{space}")
    runs = client.search_runs([experiment.experiment_id], "tags.stage = 'search'",
                              max_results=1000)
    [parent] = [r for r in runs if PARENT_TAG not in r.data.tags]
    children = [r for r in runs if r.data.tags.get(PARENT_TAG) == parent.info.run_id]
    by_trial = {r.data.tags[TRIAL_TAG]: r for r in children}
    assert len(by_trial) == len(children), "two runs for one trial"
    return parent, by_trial


def logged_steps(client: MlflowClient, run_id: str, key: str = "train_loss") -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def study_of(parent, out: Path) -> optuna.Study:
    return optuna.load_study(study_name=parent.data.params["optuna.study_name"],
                             storage=f"sqlite:///{out / 'optuna.db'}")


def assert_accounted(client: MlflowClient, out: Path, space: str, num_samples: int = 1) -> dict:
    """Every trial once in MLflow, in the study and in trials.csv, each epoch logged once."""
    parent, runs = search_runs(client, space)
    assert parent.info.status == "FINISHED"
    assert len(runs) == num_samples
    for trial_id, run in runs.items():
        assert run.info.status == "FINISHED", (trial_id, run.info.status, run.data.tags)
        assert run.data.tags["outcome"] == "completed"
        for key in CURVES:
            assert logged_steps(client, run.info.run_id, key) == list(range(1, EPOCHS + 1)), (
                trial_id, key)
    study = study_of(parent, out)
    told = [t for t in study.get_trials() if RAY_TRIAL_ATTR in t.user_attrs]
    assert sorted(t.user_attrs[RAY_TRIAL_ATTR] for t in told) == sorted(runs)
    assert all(t.state == TrialState.COMPLETE for t in told)
    table = pd.read_csv(Path(parent.data.tags["search_dir"]) / "trials.csv",
                        dtype={"trial_id": str})  # ids like 0722e143 would parse as numbers
    assert sorted(table["trial_id"]) == sorted(runs)
    return runs


def trial_of(runs: dict, number: int) -> str:
    """The Ray trial id of Optuna trial ``number``."""
    [trial_id] = [t for t, r in runs.items() if r.data.tags["optuna_trial"] == str(number)]
    return trial_id


def snapshot(client: MlflowClient, space: str) -> dict[str, tuple[str, int]]:
    """Each trial's run status and last logged epoch (0: none)."""
    _, runs = search_runs(client, space)
    return {t: (r.info.status, max(logged_steps(client, r.info.run_id), default=0))
            for t, r in runs.items()}


def assert_at_most_one_epoch_lost(runs: dict, before: dict) -> None:
    """A trial running at the kill resumed from at least the last epoch MLflow held then: only
    the epoch in progress (at most one) was trained again."""
    for trial_id, (status, last_logged) in before.items():
        if status == "RUNNING":
            resumed = int(runs[trial_id].data.tags.get(RESUMED_KEY, 0))
            assert resumed >= last_logged, (trial_id, resumed, last_logged)


def resume(args: list[str]) -> None:
    assert launch.main([*args, "--resume"]) == 0


def new_search(tmp_path: Path, data_dir: Path, ray, trials: int = 1):
    """A fresh search's space, arguments (``trials`` trials, all at once), output directory and
    the Ray address its subprocess drivers use."""
    space = space_file(tmp_path, "trm_faults")
    out = tmp_path / "outputs"
    args = search_args(space, data_dir, out, num_samples=trials, concurrent=trials)
    return space, args, out, ray.get_runtime_context().gcs_address


@pytest.fixture
def search(tmp_path, tiny_data_dir, ray_local):
    """A one-trial search (see ``new_search``)."""
    return new_search(tmp_path, tiny_data_dir, ray_local)


def killed_at(point: str, hook: str, search, tmp_path):
    """Run the search until ``hook`` pauses it, SIGKILL the driver, return what MLflow held."""
    space, args, out, address = search
    hooks = tmp_path / "hooks"
    driver, log = start_driver(args, tmp_path, address, hook, hooks)
    try:
        marker = wait_marker(hooks, point, driver, log)
    finally:
        kill_tree(driver)  # SIGKILL: the process group and whatever it started
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    return client, marker, snapshot(client, space.stem)


def test_driver_killed_while_trials_train(tmp_path, tiny_data_dir, ray_local):
    """Killed while two trials train, trial 1 about to train epoch 2: each resumes from at least
    the last epoch MLflow held; trial 1 from epoch 1."""
    search = new_search(tmp_path, tiny_data_dir, ray_local, trials=2)
    client, marker, before = killed_at("train", "pause@train:1:2", search, tmp_path)
    space, args, out, _ = search
    resume(args)
    runs = assert_accounted(client, out, space.stem, num_samples=2)
    assert_at_most_one_epoch_lost(runs, before)
    assert runs[trial_of(runs, 1)].data.tags[RESUMED_KEY] == "1"


def test_driver_killed_while_a_checkpoint_is_written(search, tmp_path):
    """Killed with trial 0's resume file of epoch 2 half written: the partial file is never
    used; the trial resumes from epoch 1 (the one epoch in progress is lost)."""
    client, marker, before = killed_at("checkpoint", "pause@checkpoint:0:2", search, tmp_path)
    partial = Path(marker["path"])
    assert partial.name == "epoch_000002.pt.partial" and partial.stat().st_size > 0
    space, args, out, _ = search
    resume(args)
    runs = assert_accounted(client, out, space.stem)
    assert_at_most_one_epoch_lost(runs, before)
    assert runs[trial_of(runs, 0)].data.tags[RESUMED_KEY] == "1"


def test_driver_killed_while_metrics_are_logged(search, tmp_path):
    """Killed while logging trial 0's epoch 2 (its resume file of epoch 2 already written): the
    resumed trial reports epoch 2 again, which lands once."""
    client, marker, before = killed_at("log", "pause@log:0:2", search, tmp_path)
    space, args, out, _ = search
    assert list(before.values()) == [("RUNNING", 1)]  # epoch 2 not logged before the kill
    resume(args)
    runs = assert_accounted(client, out, space.stem)
    assert_at_most_one_epoch_lost(runs, before)
    assert runs[trial_of(runs, 0)].data.tags[RESUMED_KEY] == "2"


def test_ctrl_c_stops_the_search_unfinished_and_resume_completes_it(search, tmp_path):
    """Ctrl-C (SIGINT to the driver) while trial 0 is about to train epoch 2: Ray Tune saves
    its state and returns from ``fit()`` as if done; the search must not be recorded as
    finished (nor selected from), but end with one line, exit status 130, its parent run
    KILLED, and ``--resume`` must finish it."""
    space, args, out, address = search
    hooks = tmp_path / "hooks"
    driver, log = start_driver(args, tmp_path, address, "pause@train:0:2", hooks)
    try:
        wait_marker(hooks, "train", driver, log)
        driver.send_signal(signal.SIGINT)  # the driver alone, as `kill -INT` would
        rc = wait_exit(driver, log, DEADLINE_S)
    finally:
        kill_tree(driver)
    text = log.read_text()
    assert rc == launch.INTERRUPTED, text[-3000:]
    [line] = [t for t in text.splitlines() if t.startswith("interrupted: ")]
    assert f"search {space.stem} interrupted: 0 of 1 trials ended" in line
    assert "--resume" in line and "Traceback" not in text
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    parent, runs = search_runs(client, space.stem)
    assert parent.info.status == "KILLED"
    assert [logged_steps(client, r.info.run_id) for r in runs.values()] == [[1]]
    assert not (Path(parent.data.tags["search_dir"]) / "trials.csv").exists()
    resume(args)
    assert_accounted(client, out, space.stem)


def test_truncated_checkpoint_found_at_resume(search, tmp_path, caplog):
    """Trial 0's newest resume file is truncated while the driver is down: the resumed trial
    warns, naming the file, and continues from the file before it."""
    client, marker, before = killed_at("train", "pause@train:0:3", search, tmp_path)
    space, args, out, _ = search
    _, runs = search_runs(client, space.stem)
    trial_id = trial_of(runs, 0)
    [search_dir] = (out / TINY / space.stem).iterdir()
    newest = search_dir / RESUME_DIR / trial_id / "epoch_000002.pt"
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 3])
    caplog.set_level("WARNING", logger="hpo")
    resume(args)
    runs = assert_accounted(client, out, space.stem)
    tags = runs[trial_id].data.tags
    assert tags[RESUMED_KEY] == "1"
    assert str(newest) in tags[RESUME_NOTE_KEY] and "unreadable" in tags[RESUME_NOTE_KEY]
    assert any(str(newest) in r.getMessage() and "unreadable" in r.getMessage()
               for r in caplog.records if r.levelname == "WARNING")
    assert newest.with_name(newest.name + ".unreadable").is_file()


def test_trials_whose_loss_is_nan_or_that_run_out_of_memory_fail_alone(
        tmp_path, tiny_data_dir, ray_local, monkeypatch):
    """Trial 0's loss becomes NaN at epoch 2 (after a good epoch 1), trial 1 raises MemoryError:
    both are recorded failed with their error, trial 2 completes, selection picks trial 2."""
    space = space_file(tmp_path, "trm_failing")
    out = tmp_path / "outputs"
    monkeypatch.setenv(ENV, "nan@train:0:2,memory_error@train:1:2")
    rc = launch.main(search_args(space, tiny_data_dir, out, num_samples=3, concurrent=2))
    assert rc == 0
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    parent, runs = search_runs(client, space.stem)
    assert parent.info.status == "FINISHED" and len(runs) == 3
    errors = {0: "NonFiniteLossError", 1: "MemoryError"}
    for number, error in errors.items():
        run = runs[trial_of(runs, number)]
        assert run.info.status == "FAILED" and run.data.tags["outcome"] == "failed"
        assert error in run.data.tags["error"]
        assert logged_steps(client, run.info.run_id) == [1]  # epoch 1 was logged, then it failed
        assert "best_valid_mrr_20" in run.data.metrics
    healthy = trial_of(runs, 2)
    assert runs[healthy].data.tags["outcome"] == "completed"
    study = study_of(parent, out)
    states = {t.number: t.state for t in study.get_trials()}
    assert states == {0: TrialState.FAIL, 1: TrialState.FAIL, 2: TrialState.COMPLETE}
    table = pd.read_csv(Path(parent.data.tags["search_dir"]) / "trials.csv")
    failed = table[table["outcome"] == "failed"]
    assert sorted(failed["optuna_trial"]) == [0, 1]
    assert failed["error"].str.contains("NonFiniteLossError|MemoryError").all()
    best = json.loads((Path(parent.data.tags["search_dir"]) / "best_config.json").read_text())
    assert best["trial_id"] == healthy
    selection = select_best(client, TINY, space.stem, "valid_mrr_20")
    assert selection.trial_id == healthy


def test_tracking_server_killed_and_restarted_mid_search(search, tmp_path):
    """The MLflow server dies while the driver is about to log trial 0's epoch 2 and comes back:
    the driver retries, the epoch lands once, the search completes."""
    space, _, out, address = search
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server, _ = start_mlflow_server(tmp_path, port)
    driver = None
    try:
        wait_until_healthy(uri, DEADLINE_S, server)
        args = [*search[1], "--mlflow-uri", uri]
        hooks = tmp_path / "hooks"
        driver, log = start_driver(args, tmp_path, address, "wait@log:0:2", hooks,
                                   MLFLOW_HTTP_REQUEST_MAX_RETRIES="0")
        wait_marker(hooks, "log", driver, log)
        kill_tree(server)
        (hooks / "log.release").touch()
        wait_for(lambda: "did not answer while logging epoch 2" in log.read_text(), DEADLINE_S,
                 "the driver's retry warning", process=driver)
        server, _ = start_mlflow_server(tmp_path, port)
        wait_until_healthy(uri, DEADLINE_S, server)
        assert wait_exit(driver, log, DEADLINE_S) == 0, log.read_text()[-3000:]
        assert "answers again: logging epoch 2" in log.read_text()
        assert_accounted(MlflowClient(uri), out, space.stem)
    finally:
        if driver is not None and driver.poll() is None:
            kill_tree(driver)
        kill_tree(server)


def test_tracking_store_that_stays_down_stops_with_a_clear_message(monkeypatch):
    """A store that does not answer within the retry window: a clear error, not a traceback."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv(RETRY_ENV, "1")
    client = MlflowClient("http://127.0.0.1:9")
    with pytest.raises(TrackingUnavailableError, match=r"did not answer for 1 s while logging "
                                                       r"epoch 1.*--resume"):
        call_tracking("http://127.0.0.1:9", "logging epoch 1 of trial x", client.log_batch,
                      "0" * 32, metrics=[Metric("train_loss", 1.0, 0, 1)])


def test_marking_a_run_killed_after_ctrl_c_never_hides_the_interrupt(tmp_path, monkeypatch,
                                                                     caplog):
    """An interrupted search or test stage marks its parent run KILLED; where the store cannot
    take it (down, or the run is gone) that is a warning, and the interrupt is what is raised."""
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.create_run(client.create_experiment("x"))
    mark_killed(client, run.info.run_id)
    assert client.get_run(run.info.run_id).info.status == "KILLED"
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with caplog.at_level("WARNING", logger="hpo.tracking"):
        mark_killed(MlflowClient("http://127.0.0.1:9"), run.info.run_id)
    assert f"could not mark MLflow run {run.info.run_id} KILLED" in caplog.text


def test_two_searches_started_at_once_share_one_sqlite_store(tmp_path, tiny_data_dir,
                                                             ray_local):
    """Two searches on one output directory (one mlflow.db, one optuna.db), released at the
    same moment before either opens a store: both complete, neither sees "database is locked",
    and their Tune experiments have names of their own (Ray stages a driver's experiment files
    by name and start second: one name made both sync each other's state, a "Traceback")."""
    out = tmp_path / "outputs"
    address = ray_local.get_runtime_context().gcs_address
    drivers = []
    for name in ("trm_one", "trm_two"):
        args = search_args(space_file(tmp_path, name), tiny_data_dir, out)
        hooks = tmp_path / f"hooks-{name}"
        drivers.append((name, hooks, *start_driver(args, tmp_path, address, "wait@stores",
                                                    hooks)))
    try:
        for _, hooks, driver, log in drivers:
            wait_marker(hooks, "stores", driver, log)
        for _, hooks, _, _ in drivers:
            (hooks / "stores.release").touch()
        codes = [wait_exit(driver, log, DEADLINE_S) for _, _, driver, log in drivers]
    finally:
        for _, _, driver, _ in drivers:
            if driver.poll() is None:
                kill_tree(driver)
    texts = [log.read_text() for _, _, _, log in drivers]
    assert codes == [0, 0], [text[-3000:] for text in texts]
    for text in texts:
        assert "database is locked" not in text and "Traceback" not in text
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    experiments = []
    for name, *_ in drivers:
        assert_accounted(client, out, name)
        [state_file] = (out / TINY / name).glob(f"*/{STATE_FILE}")
        state = json.loads(state_file.read_text())
        experiments.append(state["tune_experiment"])
        assert state["tune_experiment"] == f"trials-{state['parent_run_id'][:8]}"
        folder = state_file.parent / state["tune_experiment"]
        assert list(folder.glob("experiment_state-*.json")), sorted(folder.parent.iterdir())
    assert len(set(experiments)) == 2


@contextlib.contextmanager
def unwritable(path: Path):
    """``path`` and everything under it immutable (``chattr -R +i``): the kernel refuses to
    create, rename, delete or modify anything there, root included, as on a file system
    remounted read-only. (chmod does not stop root; a read-only bind mount or a tiny tmpfs to
    fill are not available in CI.) Undone on exit, always."""
    subprocess.run(["chattr", "-R", "+i", str(path)], check=True, capture_output=True)
    try:
        yield
    finally:
        subprocess.run(["chattr", "-R", "-i", str(path)], check=True, capture_output=True)


@pytest.fixture
def immutable_supported(tmp_path):
    probe = tmp_path / "probe"
    probe.mkdir()
    try:
        with unwritable(probe):
            with contextlib.suppress(PermissionError):
                (probe / "file").touch()
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"chattr +i is not available here ({exc}): it needs CAP_LINUX_IMMUTABLE "
                    "on ext4, xfs or btrfs")
    if (probe / "file").exists():
        pytest.skip("chattr +i did not stop writes on this file system")


def test_output_directory_unwritable_mid_search(search, tmp_path, immutable_supported):
    """The output directory stops accepting writes while trial 0 trains: the search stops with
    a clear error, no trial is marked failed, and --resume completes once it is writable."""
    space, args, out, address = search
    hooks = tmp_path / "hooks"
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    driver, log = start_driver(args, tmp_path, address, "wait@train:0:2", hooks)
    try:
        wait_marker(hooks, "train", driver, log)
        with unwritable(out):
            (hooks / "train.release").touch()
            code = wait_exit(driver, log, DEADLINE_S)
    finally:
        if driver.poll() is None:
            kill_tree(driver)
    text = log.read_text()
    last = text.strip().splitlines()[-1]
    assert code == 2, text[-3000:]
    assert last.startswith("error: cannot write ") and "epoch_000002.pt" in last, last
    assert "Operation not permitted" in last and "--resume" in last
    parent, runs = search_runs(client, space.stem)
    stopped = runs[trial_of(runs, 0)]
    assert parent.info.status == "RUNNING" and stopped.info.status == "RUNNING"
    assert logged_steps(client, stopped.info.run_id) == [1]
    assert not study_of(parent, out).get_trials(states=(TrialState.FAIL,))
    resume(args)
    runs = assert_accounted(client, out, space.stem)
    assert runs[trial_of(runs, 0)].data.tags[RESUMED_KEY] == "1"


def test_ray_tunes_failed_state_copy_is_one_line_without_a_traceback():
    """Ray Tune logs a failed copy of its experiment state (seen on Ctrl-C: a temporary file
    renamed mid-copy) with a traceback; the driver shows it as one warning line instead."""
    quiet_state_save_errors()
    quiet_state_save_errors()  # once only
    logger = logging.getLogger(EXPERIMENT_STATE_LOGGER)
    assert sum(isinstance(f, OneLineSaveError) for f in logger.filters) == 1
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger.addHandler(handler)
    try:
        try:
            raise FileNotFoundError("Failed to open local file '.x-tmp-searcher-state.pkl'")
        except FileNotFoundError:
            logger.error("Saving experiment state to storage at '/out' failed with exception: ",
                         exc_info=True)
        logger.error("something else")
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert lines == [
        "WARNING Saving experiment state to storage at '/out' failed with exception: "
        "FileNotFoundError: Failed to open local file '.x-tmp-searcher-state.pkl'",
        "ERROR something else",
    ]
