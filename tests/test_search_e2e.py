"""End to end: launch.py runs a real search (local Ray, SQLite MLflow store) on tiny data."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

import launch
from hpo.faultpoints import DIR_ENV, ENV
from hpo.optuna_study import PUBLISHED, RAY_TRIAL_ATTR, published_params
from hpo.outcome import RESUMED_KEY
from hpo.space import load_space
from hpo.tracking import (
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    LOGGED_PREFIXES,
    PARENT_TAG,
    TRIAL_TAG,
)

TINY = "tiny"  # written by the tiny_data_dir fixture

ROOT = Path(__file__).resolve().parent.parent
NUM_SAMPLES = 6
FAILING_TEMPERATURE = 1e-40
CONSOLE: dict[str, str] = {}  # what the module's search printed, by fixture


def space_file(tmp_path: Path) -> Path:
    """hn with a temperature choice of 1e-40: valid in the space, but the logits overflow to
    inf and the loss is NaN in the first batch, so a trial that gets it must fail. With seed 3
    the sampler's second (random) trial draws it, whatever the trials score."""
    raw = yaml.safe_load((ROOT / "search_spaces" / "hn.yaml").read_text())
    raw["fixed"] = {"embedding_size": 16, "inner_size": 32, "batch_size": 256}
    raw["parameters"]["temperature"] = {
        "type": "categorical", "choices": [0.07, 0.1, 0.2, FAILING_TEMPERATURE]
    }
    path = tmp_path / "hn_test.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def child_runs(client: MlflowClient, parent):
    return client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'"
    )


def parent_runs(client: MlflowClient, experiment: str):
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], filter_string="tags.stage = 'search'")
    return [r for r in runs if PARENT_TAG not in r.data.tags]


@pytest.fixture(scope="module")
def finished_search(tmp_path_factory, tiny_data_dir, ray_local):
    tmp = tmp_path_factory.mktemp("search")
    out = tmp / "outputs"
    console = io.StringIO()
    with contextlib.redirect_stdout(console):
        rc = launch.main([
            "--space", str(space_file(tmp)), "--dataset", TINY, "--data-dir",
            str(tiny_data_dir), "--num-samples", str(NUM_SAMPLES), "--max-epochs", "4",
            "--grace-period", "1", "--reduction-factor", "2", "--max-concurrent", "1",
            "--seed", "3", "--precision", "fp32", "--output-dir", str(out),
        ])
    assert rc == 0
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    [parent] = parent_runs(client, f"{TINY}/hn_test")
    CONSOLE["finished_search"] = console.getvalue()
    return client, parent, out


def test_one_child_run_per_trial_nested_under_the_parent(finished_search):
    client, parent, _ = finished_search
    children = child_runs(client, parent)
    assert len(children) == NUM_SAMPLES
    assert len({c.data.tags[TRIAL_TAG] for c in children}) == NUM_SAMPLES
    assert parent.info.status == "FINISHED"
    assert parent.data.params["seed"] == "3"
    assert parent.data.params["budget.num_samples"] == str(NUM_SAMPLES)
    assert "launch.py" in parent.data.params["command_line"]
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    expected = {"trials.csv", "best_config.json", "optimization_history.png", "search_space"}
    assert expected <= artifacts


def test_every_trial_has_its_params_statuses_and_epoch_histories(finished_search):
    client, parent, _ = finished_search
    outcomes = []
    for run in child_runs(client, parent):
        tags, params = run.data.tags, run.data.params
        outcomes.append(tags["outcome"])
        assert {"temperature", "lr", "hn_k", "hn_lambda", "model", "epochs"} <= set(params)
        assert params["precision"] == "fp32"  # --precision, every trial
        if tags["outcome"] != "failed":  # what the trial resolved (models.precision)
            assert tags["precision_used"] == "fp32"
            assert tags["loss_impl_used"] in ("dense", "chunked")
        assert all(key.startswith(LOGGED_PREFIXES) for key in run.data.metrics), run.data.metrics
        epochs = int(tags["epochs_trained"])
        if tags["outcome"] == "failed":
            assert run.info.status == "FAILED"
            assert tags["status"] == "failed" and tags["error"]
            assert float(params["temperature"]) == FAILING_TEMPERATURE
            assert "NonFiniteLossError" in tags["error"]
            continue
        assert run.info.status == "FINISHED"
        for key in ("train_loss", "valid_mrr_20", "valid_recall_10", "valid_ndcg_20",
                    "epoch_time"):
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert sorted(steps) == list(range(1, epochs + 1)), (key, steps)
        if tags["outcome"] == "stopped":
            assert tags["status"] == f"stopped by ASHA at epoch {epochs}"
            assert epochs < 4
        else:
            assert tags["status"] == "completed"
    assert "stopped" in outcomes and "completed" in outcomes and "failed" in outcomes


def test_results_table_and_best_config(finished_search):
    client, parent, _ = finished_search
    search_dir = Path(parent.data.tags["search_dir"])
    table = pd.read_csv(search_dir / "trials.csv")
    assert len(table) == NUM_SAMPLES
    scored = table[table["outcome"] != "failed"]
    assert scored["best_valid_mrr_20"].is_monotonic_decreasing
    assert table["outcome"].iloc[-1] == "failed"
    best = json.loads((search_dir / "best_config.json").read_text())
    assert best["trial_id"] == scored["trial_id"].iloc[0]
    assert best["config"]["model"] == "hn"
    assert best["config"]["temperature"] != FAILING_TEMPERATURE


def test_the_study_is_persisted_with_every_trial_published_configuration_first(finished_search):
    client, parent, out = finished_search
    name = parent.data.params["optuna.study_name"]
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'optuna.db'}")
    trials = study.get_trials()
    children = {c.data.tags[TRIAL_TAG]: c for c in child_runs(client, parent)}
    assert sorted(t.user_attrs[RAY_TRIAL_ATTR] for t in trials) == sorted(children)
    # Each trial told as it ended: ASHA-stopped as PRUNED, failures as FAIL.
    expected = {"completed": TrialState.COMPLETE, "stopped": TrialState.PRUNED,
                "failed": TrialState.FAIL}
    for t in trials:
        run = children[t.user_attrs[RAY_TRIAL_ATTR]]
        assert t.state == expected[run.data.tags["outcome"]]
        assert run.data.tags["optuna_trial"] == str(t.number)
    first = min(trials, key=lambda t: t.number)
    params, _ = published_params(load_space(parent.data.params["space_file"]))
    assert first.params == params
    assert children[first.user_attrs[RAY_TRIAL_ATTR]].data.tags["config_source"] == PUBLISHED
    # TPE's settings are recorded; the demo budget leaves room for TPE after the random start.
    assert int(parent.data.params["sampler.n_startup_trials"]) < NUM_SAMPLES
    assert parent.data.params["sampler.multivariate"] == "True"


def test_importance_description_and_experiment_kind(finished_search):
    client, parent, _ = finished_search
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"param_importance.csv", "param_importance.png"} <= artifacts
    table = pd.read_csv(Path(parent.data.tags["search_dir"]) / "param_importance.csv")
    assert table["importance"].sum() == pytest.approx(1.0)
    assert set(table["parameter"]) <= {"temperature", "lr", "hn_k", "hn_lambda", "sess_dropout",
                                       "item_dropout", "hidden_dropout", "attn_dropout"}
    assert "fANOVA" in parent.data.tags["param_importance"]
    note = parent.data.tags["mlflow.note.content"]
    assert "hn_test" in note and "launch.py" in note
    experiments = client.search_experiments()
    assert {e.name for e in experiments} >= {"Default"}  # the store's own one is tagged too
    assert all(e.tags.get(EXPERIMENT_KIND_TAG) == EXPERIMENT_KIND for e in experiments), [
        (e.name, e.tags) for e in experiments]


def test_console_prints_trial_events_not_ray_tables(finished_search):
    text = CONSOLE["finished_search"]
    lines = text.splitlines()
    started = [line for line in lines if " started (" in line]
    assert len(started) == NUM_SAMPLES
    assert f"trial 0 started ({PUBLISHED})" in started[0]
    assert any("stopped by ASHA at epoch" in line for line in lines)
    assert any(" failed at epoch " in line for line in lines)
    assert not any("Trial status" in line or "Configuration for experiment" in line
                   for line in lines)
    assert "most important:" in text
    # Header, one line per start and end, improvements, summary: bounded by the trial count.
    assert len(lines) <= 4 * NUM_SAMPLES + 15


def test_dry_run_prints_plan_without_running(tmp_path, tiny_data_dir, capsys):
    rc = launch.main(["--space", "enhanced.yaml", "--dataset", TINY, "--data-dir",
                      str(tiny_data_dir), "--output-dir", str(tmp_path), "--dry-run"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "beta" in printed and "if {'enh_inbatch': (True,)}" in printed
    assert "8 trials" not in printed and "20 trials x <= 30 epochs" in printed
    assert not any(tmp_path.iterdir())


def test_bad_inputs_fail_before_anything_runs(tmp_path, tiny_data_dir, capsys):
    common = ["--dataset", TINY, "--data-dir", str(tiny_data_dir), "--output-dir", str(tmp_path)]
    assert launch.main(["--space", "nope.yaml", *common]) == 2
    assert "search space 'nope.yaml' not found" in capsys.readouterr().err
    assert launch.main(["--space", "trm.yaml", "--mlflow-uri", "http://127.0.0.1:9", *common]) == 2
    assert "MLflow tracking server http://127.0.0.1:9 is unreachable" in capsys.readouterr().err
    assert launch.main(["--space", "trm.yaml", "--dataset", "retailrocket", "--data-dir",
                        str(tmp_path / "none"), "--output-dir", str(tmp_path)]) == 2
    assert "dataset 'retailrocket' not found" in capsys.readouterr().err
    assert launch.main(["--space", "trm.yaml", "--dataset", "retailrocket", "--data-dir",
                        str(tmp_path / "none"), "--output-dir", str(tmp_path), "--dry-run"]) == 2
    assert "dataset 'retailrocket' not found" in capsys.readouterr().err
    assert launch.main(["--space", "trm.yaml", "--dataset", "../up", "--output-dir",
                        str(tmp_path), "--dry-run"]) == 2
    assert "invalid dataset name '../up'" in capsys.readouterr().err
    assert not (tmp_path / TINY).exists()
    assert not (tmp_path / "mlflow.db").exists(), "the tracking store was touched before the check"


@pytest.mark.slow
def test_resume_after_driver_is_killed(tmp_path, tiny_data_dir):
    """SIGKILL the driver mid-search; --resume finishes it with exactly one run per trial.

    Issue 20: a kill between Tune deleting a trial's previous checkpoint and its next
    experiment-state snapshot left a state naming a deleted checkpoint, and the resumed trial
    failed in Ray's restore. Trials now resume from their own resume files (``hpo.trainable``);
    the one that was training resumes from at least the last epoch MLflow held.
    """
    out = tmp_path / "outputs"
    raw = yaml.safe_load((ROOT / "search_spaces" / "trm.yaml").read_text())
    raw["fixed"] = {"embedding_size": 16, "inner_size": 32, "batch_size": 256}
    space = tmp_path / "trm_resume.yaml"
    space.write_text(yaml.safe_dump(raw, sort_keys=False))
    args = [sys.executable, str(ROOT / "launch.py"), "--space", str(space), "--dataset", TINY,
            "--data-dir", str(tiny_data_dir), "--num-samples", "4", "--max-epochs", "4",
            "--grace-period", "4", "--max-concurrent", "1", "--output-dir", str(out)]
    env = {**os.environ, "RAY_ADDRESS": "", "PYTHONPATH": str(ROOT)}
    # Trial 1 (the second: one at a time) stops before its third epoch until it is killed, so
    # the kill always finds one trial finished and one training with two epochs logged (on tiny
    # data a whole search can finish between two looks of a poll that only watches MLflow).
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    driver = subprocess.Popen(args, cwd=tmp_path, start_new_session=True,
                              env={**env, ENV: "pause@train:1:3", DIR_ENV: str(hooks)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    # An upper bound for a loaded machine (Ray start-up, a first trial of 4 epochs): the loop
    # returns as soon as trial 1 has paused and MLflow shows it training after trial 0 ended.
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline and driver.poll() is None:
            if (hooks / "train.paused").exists() and _one_finished_one_training(client):
                break
            time.sleep(0.5)  # polling interval while waiting for a condition, not a timing guess
        assert driver.poll() is None, "the search ended before it could be interrupted"
        assert _one_finished_one_training(client), "no trial in training within the deadline"
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    [parent] = parent_runs(client, f"{TINY}/trm_resume")
    before = {r.data.tags[TRIAL_TAG]: r for r in child_runs(client, parent)}
    finished_before = {t for t, r in before.items() if r.info.status == "FINISHED"}
    logged_before = {t: len(client.get_metric_history(r.info.run_id, "train_loss"))
                     for t, r in before.items()}
    assert finished_before, "the first trial should have finished before the kill"

    resumed = subprocess.run([*args, "--resume"], cwd=tmp_path, env=env, timeout=400,
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    [parent_after] = parent_runs(client, f"{TINY}/trm_resume")
    assert parent_after.info.run_id == parent.info.run_id
    after = child_runs(client, parent)
    assert len(after) == 4
    assert len({r.data.tags[TRIAL_TAG] for r in after}) == 4
    for run in after:
        assert run.info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")]
        assert sorted(steps) == list(range(1, 5)), steps
        if run.data.tags[TRIAL_TAG] in finished_before:  # not re-run: nothing logged after
            assert run.info.end_time == before[run.data.tags[TRIAL_TAG]].info.end_time
        elif logged_before.get(run.data.tags[TRIAL_TAG]):  # was training: resumed, not redone
            resumed = int(run.data.tags.get(RESUMED_KEY, 0))
            assert resumed >= logged_before[run.data.tags[TRIAL_TAG]], (resumed, logged_before)
    # The same study continued: each Ray trial once, told COMPLETE, none asked twice.
    study = optuna.load_study(study_name=parent_after.data.params["optuna.study_name"],
                              storage=f"sqlite:///{out / 'optuna.db'}")
    ran = [t for t in study.get_trials() if RAY_TRIAL_ATTR in t.user_attrs
           and t.state != TrialState.FAIL]
    assert sorted(t.user_attrs[RAY_TRIAL_ATTR] for t in ran) == sorted(
        r.data.tags[TRIAL_TAG] for r in after)
    assert all(t.state == TrialState.COMPLETE for t in ran)
    assert not study.get_trials(states=(TrialState.RUNNING,))


def _one_finished_one_training(client: MlflowClient) -> bool:
    experiment = client.get_experiment_by_name(f"{TINY}/trm_resume")
    if experiment is None:
        return False
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.stage = 'search'")
    children = [r for r in runs if PARENT_TAG in r.data.tags]
    finished = [r for r in children if r.info.status == "FINISHED"]
    training = [
        r for r in children if r.info.status == "RUNNING" and "train_loss" in r.data.metrics
    ]
    return bool(finished) and bool(training)
