"""Cluster options without a cluster: storage locations, the tracking-server command, and the MLflow
logger's record of where a trial ran and of its retries."""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace

import pytest
from mlflow.tracking import MlflowClient

import launch
from hpo import tracking_server
from hpo.cluster import Resources
from hpo.plan import make_plans
from hpo.tracking import MLflowTrialLogger


def test_trials_go_under_the_output_dir_or_mirror_it_in_the_storage_path(tmp_path):
    out = tmp_path / "outputs"
    search_dir = out / "tiny" / "trm" / "20260101-000000"
    assert Resources().trials_location(search_dir, out) == str(search_dir)
    assert Resources(storage_path="s3://bucket/hpo/").trials_location(search_dir, out) == \
        "s3://bucket/hpo/tiny/trm/20260101-000000"
    shared = Resources(storage_path=str(tmp_path / "shared")).trials_location(search_dir, out)
    assert shared == str(tmp_path / "shared" / "tiny" / "trm" / "20260101-000000")


def test_dry_run_shows_where_trials_go_and_the_failure_policy(tmp_path, capsys):
    rc = launch.main(["--space", "trm.yaml", "--dataset", "synthetic", "--output-dir",
                      str(tmp_path / "out"), "--storage-path", "s3://bucket/hpo",
                      "--max-failures", "2", "--dry-run"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "max failures 2" in printed
    assert "trials      s3://bucket/hpo/synthetic/trm/" in printed


def test_tracking_server_command_keeps_sqlite_to_one_writer(tmp_path):
    command = tracking_server.server_command(str(tmp_path / "db" / "mlflow.db"),
                                             str(tmp_path / "art"), "0.0.0.0", 5001)
    assert command[:4] == [sys.executable, "-m", "mlflow", "server"]
    def flag(name):
        return command[command.index(name) + 1]

    assert flag("--backend-store-uri") == f"sqlite:///{tmp_path / 'db' / 'mlflow.db'}"
    assert flag("--workers") == "1" and flag("--port") == "5001" and flag("--host") == "0.0.0.0"
    assert "--serve-artifacts" in command and (tmp_path / "art").is_dir()
    with pytest.raises(ValueError, match="one server worker"):
        tracking_server.server_command(f"sqlite:///{tmp_path}/x.db", str(tmp_path), workers=4)
    postgres = tracking_server.server_command("postgresql://u:p@db/mlflow", "s3://b/a",
                                              allowed_hosts="mlflow:*")
    assert postgres[postgres.index("--workers") + 1] == "4"
    assert postgres[postgres.index("--allowed-hosts") + 1] == "mlflow:*"


def test_tracking_server_print_command(tmp_path, capsys):
    assert tracking_server.main(["--backend-store", str(tmp_path / "m.db"),
                                 "--artifacts-destination", str(tmp_path / "a"),
                                 "--print-command"]) == 0
    assert "mlflow server --backend-store-uri sqlite:///" in capsys.readouterr().out
    assert tracking_server.main(["--backend-store", str(tmp_path / "m.db"),
                                 "--artifacts-destination", str(tmp_path / "a"),
                                 "--workers", "3"]) == 2
    assert "one server worker" in capsys.readouterr().err


def test_logger_tags_the_node_and_continues_a_retried_trial_without_duplicates(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("e", artifact_location=(tmp_path / "a").as_uri())
    parent = client.create_run(experiment).info.run_id
    logger = MLflowTrialLogger(client.tracking_uri, experiment, parent, tags={"stage": "search"})
    error_file = tmp_path / "error.txt"
    error_file.write_text("RayActorError: the actor died unexpectedly (node died)")
    trial = SimpleNamespace(trial_id="t1", config={"lr": 0.1}, num_failures=0,
                            error_file=None, last_result={})

    def report(epoch, node):
        result = {"epoch": epoch, "train_loss": 1.0 / epoch, "node_id": node, "device": "cpu",
                  "gpu_ids": ""}
        trial.last_result = {**result, "finished": int(epoch == 3)}
        logger.on_trial_result(0, [], trial, result)

    logger.on_trial_start(0, [], trial)
    report(1, "node-a")
    report(2, "node-a")
    run_id = logger.run_id(trial)
    assert client.get_run(run_id).data.tags["ray_node_id"] == "node-a"
    assert "ray_gpu_ids" not in client.get_run(run_id).data.tags  # no GPU: no tag

    trial.num_failures, trial.error_file = 1, str(error_file)
    logger.on_trial_recover(0, [], trial)
    report(2, "node-b")  # resumed from the epoch-2 checkpoint: reported again, not logged again
    report(3, "node-b")
    logger.on_trial_complete(0, [], trial)

    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["ray_node_id"] == "node-b" and run.data.tags["device"] == "cpu"
    assert run.data.tags["retries"] == "1" and "node died" in run.data.tags["last_failure"]
    steps = [m.step for m in client.get_metric_history(run_id, "train_loss")]
    assert sorted(steps) == [1, 2, 3]



def test_a_relative_output_dir_in_a_ray_job_is_warned_about(tmp_path, monkeypatch, caplog):
    """A job's working directory is a temporary copy: results under it would vanish."""
    monkeypatch.chdir(tmp_path)
    args = launch.build_parser().parse_args(["--space", "trm.yaml", "--output-dir", "out"])
    make_plans(args, "")
    assert "relative to the Ray job's working directory" not in caplog.text
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR",
                       '{"runtime_env": {}, "metadata": {"job_submission_id": "raysubmit_1"}}')
    make_plans(args, "")
    assert "--output-dir out: relative to the Ray job's working directory" in caplog.text
    caplog.clear()
    make_plans(launch.build_parser().parse_args(
        ["--space", "trm.yaml", "--output-dir", str(tmp_path), "--storage-path", "s3://b/p"]), "")
    assert "relative to the Ray job's working directory" not in caplog.text


def test_resume_needs_the_storage_path_the_search_started_with(tmp_path, tiny_data_dir, capsys):
    common = ["--space", "trm.yaml", "--dataset", "tiny", "--data-dir", str(tiny_data_dir),
              "--output-dir", str(tmp_path)]
    search_dir = tmp_path / "tiny" / "trm" / "20260101-000000"
    search_dir.mkdir(parents=True)
    (search_dir / "search.json").write_text(json.dumps(
        {"parent_run_id": "x", "resources": {"storage_path": "s3://bucket/hpo"}}))
    assert launch.main([*common, "--resume"]) == 2
    assert "pass the same --storage-path (s3://bucket/hpo)" in capsys.readouterr().err
