"""Distributed operation on a real 2-node Ray cluster (loopback) with a real MLflow server.

Searches are submitted with `ray job submit` (token authentication on) against the head's
dashboard; the driver logs every trial to the tracking server over HTTP; trial checkpoints go to a
storage path both nodes see. Node ids are matched to the nodes through their custom resources.
Tests run in file order: the last one kills the worker node.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import yaml
from local_cluster import ROOT, LocalCluster, free_port, kill_tree, start_mlflow_server, wait_for
from mlflow.tracking import MlflowClient

from hpo.outcome import RESUMED_KEY
from hpo.tracking import PARENT_TAG, TRIAL_TAG
from hpo.tracking_server import wait_until_healthy

pytestmark = pytest.mark.slow

TINY = "tiny"  # written by the tiny_data_dir fixture
JOB_TIMEOUT_S = 300


def space_file(tmp_path: Path, name: str, **fixed) -> Path:
    raw = yaml.safe_load((ROOT / "search_spaces" / "trm.yaml").read_text())
    raw["fixed"] = {"embedding_size": 16, "inner_size": 32, "batch_size": 256, **fixed}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """The MLflow server and the cluster, started side by side; torn down by pid."""
    root = tmp_path_factory.mktemp("cluster")
    cluster = LocalCluster(root)
    mlflow_process = None
    try:
        start = time.monotonic()
        mlflow_process, uri = start_mlflow_server(root)
        cluster.start_head(num_cpus=1, resources={"node_head": 1})
        cluster.add_worker("worker", num_cpus=1, resources={"node_worker": 1})
        cluster.resolve_node_ids()
        cluster_s = time.monotonic() - start
        wait_until_healthy(uri, 120, mlflow_process)
        print(f"\n[figures] 2-node cluster up in {cluster_s:.1f} s (head "
              f"{cluster.nodes[0].started_s:.1f} s, then worker {cluster.nodes[1].started_s:.1f} s)"
              f", MLflow server (started alongside) healthy after {time.monotonic() - start:.1f} s")
        yield cluster, uri, root
    finally:
        cluster.shutdown()
        if mlflow_process is not None:
            kill_tree(mlflow_process, grace_s=10)
        for path in cluster.temp_dirs:
            shutil.rmtree(path, ignore_errors=True)


def launch_args(space: Path, data_dir: Path, out: Path, storage: Path, uri: str, *extra):
    return ["python", "launch.py", "--space", str(space), "--dataset", TINY,
            "--data-dir", str(data_dir), "--output-dir", str(out), "--storage-path",
            str(storage), "--mlflow-uri", uri, "--cpus-per-trial", "1", *extra]


def run_job(cluster: LocalCluster, entrypoint: list[str], submission_id: str) -> tuple[int, str]:
    process = cluster.submit_job(entrypoint, submission_id)
    try:
        process.wait(timeout=JOB_TIMEOUT_S)
    finally:
        if process.poll() is None:
            kill_tree(process)
    return process.returncode, (cluster.root / f"job-{submission_id}.log").read_text()


def search_runs(client: MlflowClient, experiment: str):
    """(parent run, child runs by trial id) of the one search in `experiment`."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None, {}
    runs = client.search_runs([exp.experiment_id], filter_string="tags.stage = 'search'")
    parents = [r for r in runs if PARENT_TAG not in r.data.tags]
    children = {r.data.tags[TRIAL_TAG]: r for r in runs if PARENT_TAG in r.data.tags}
    return (parents[0] if parents else None), children


def history(client: MlflowClient, run, key: str = "train_loss") -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))


def test_tracking_server_down_fails_the_job_before_any_trial(servers, tiny_data_dir, tmp_path):
    cluster, _, _ = servers
    dead_uri = f"http://127.0.0.1:{free_port()}"
    out, storage = tmp_path / "out", tmp_path / "shared"
    start = time.monotonic()
    rc, log = run_job(cluster, launch_args(space_file(tmp_path, "trm_down"), tiny_data_dir, out,
                                           storage, dead_uri), "tracking-down")
    print(f"\n[figures] job with the tracking server down failed in "
          f"{time.monotonic() - start:.1f} s")
    assert rc != 0
    assert cluster.job_status("tracking-down") == "FAILED"
    assert f"MLflow tracking server {dead_uri} is unreachable" in cluster.job_logs("tracking-down")
    assert "train_trial" not in log and "Trial status" not in log
    assert not out.exists() and not storage.exists()


def test_search_job_runs_trials_on_both_nodes_and_logs_them_to_the_server(
    servers, tiny_data_dir, tmp_path
):
    cluster, uri, _ = servers
    assert all(node.process.poll() is None for node in cluster.nodes), "a node is down"
    out, storage = tmp_path / "out", tmp_path / "shared"
    space = space_file(tmp_path, "trm_cluster")
    start = time.monotonic()
    rc, log = run_job(cluster, launch_args(
        space, tiny_data_dir, out, storage, uri, "--num-samples", "4", "--max-epochs", "3",
        "--grace-period", "3", "--max-concurrent", "2", "--max-failures", "1"), "search")
    print(f"\n[figures] 2-node search job (4 trials x 3 epochs): {time.monotonic() - start:.1f} s")
    assert rc == 0, log[-4000:]
    assert cluster.job_status("search") == "SUCCEEDED"
    assert "connected to a Ray cluster of 2 node(s)" in log

    client = MlflowClient(uri)  # over HTTP, as every node would
    parent, children = search_runs(client, f"{TINY}/trm_cluster")
    assert parent.info.status == "FINISHED"
    assert parent.data.params["resources.storage_path"] == str(storage)
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {
        "trials.csv", "best_config.json", "search_space"}
    assert len(children) == 4
    node_of = {node.node_id: node.name for node in cluster.nodes}
    ran_on = {}
    for trial_id, run in children.items():
        assert run.info.status == "FINISHED", run.data.tags
        assert run.data.tags["device"] == "cpu"
        ran_on[trial_id] = node_of[run.data.tags["ray_node_id"]]
        for key in ("train_loss", "valid_mrr_20", "epoch_time"):
            assert [step for step, _ in history(client, run, key)] == [1, 2, 3], (trial_id, key)
    assert set(ran_on.values()) == {"head", "worker"}, ran_on

    # Checkpoints live in the storage path, not under the output directory.
    trials_dirs = list((storage / TINY / "trm_cluster").glob("*/trials-*"))
    assert len(trials_dirs) == 1
    for trial_id in children:
        [trial_dir] = trials_dirs[0].glob(f"train_trial_{trial_id}_*")
        assert list(trial_dir.glob("checkpoint_*/trainer.pt")), trial_dir
    [search_dir] = (out / TINY / "trm_cluster").iterdir()
    assert (search_dir / "trials.csv").is_file() and not list(search_dir.glob("trials-*"))


def test_worker_node_dies_mid_search(servers, tiny_data_dir, tmp_path):
    """SIGKILL the worker node while one of its trials trains: that trial is retried from its
    checkpoint on the head (--max-failures 1), the search completes, and nothing logged is lost
    or duplicated."""
    cluster, uri, _ = servers
    head, worker = cluster.nodes
    assert worker.process.poll() is None, "the worker node is already down"
    out, storage = tmp_path / "out", tmp_path / "shared"
    space = space_file(tmp_path, "trm_kill", patience=100)
    args = launch_args(space, tiny_data_dir, out, storage, uri, "--num-samples", "3",
                       "--max-epochs", "15", "--grace-period", "15", "--max-concurrent", "2",
                       "--max-failures", "1")
    client = MlflowClient(uri)
    experiment = f"{TINY}/trm_kill"
    start = time.monotonic()
    job = cluster.submit_job(args, "kill")
    try:
        def training_on_worker():
            _, children = search_runs(client, experiment)
            for run in children.values():
                if (run.info.status == "RUNNING"
                        and run.data.tags.get("ray_node_id") == worker.node_id
                        and len(history(client, run)) >= 2):
                    return run
            return None

        victim = wait_for(training_on_worker, JOB_TIMEOUT_S, "a trial training on the worker",
                          job)
        before = {t: history(client, r) for t, r in search_runs(client, experiment)[1].items()}
        cluster.kill_node(worker)
        killed_at = time.monotonic()

        def retried():
            run = client.get_run(victim.info.run_id)
            return run if "retries" in run.data.tags else None

        recovered = wait_for(retried, JOB_TIMEOUT_S, "the killed trial's retry", job)
        detected_s = time.monotonic() - killed_at
        job.wait(timeout=JOB_TIMEOUT_S)
        total_s = time.monotonic() - start
    finally:
        if job.poll() is None:
            kill_tree(job)
    log = (cluster.root / "job-kill.log").read_text()
    print(f"\n[figures] worker killed after {killed_at - start:.1f} s of the job; failure "
          f"recorded (retry scheduled) {detected_s:.1f} s after the kill; job finished "
          f"{total_s:.1f} s after submission; victim had {len(before[victim.data.tags[TRIAL_TAG]])}"
          f" epochs logged; last_failure: "
          f"{recovered.data.tags['last_failure'].strip().splitlines()[-1][:200]}")
    assert job.returncode == 0, log[-4000:]
    assert cluster.job_status("kill") == "SUCCEEDED"

    parent, children = search_runs(client, experiment)
    assert parent.info.status == "FINISHED"
    assert len(children) == 3
    victim_id = victim.data.tags[TRIAL_TAG]
    for trial_id, run in children.items():
        assert run.info.status == "FINISHED", (trial_id, run.data.tags)
        points = history(client, run)
        assert [step for step, _ in points] == list(range(1, 16)), (trial_id, points)
        assert set(before.get(trial_id, [])) <= set(points), "a logged point changed or vanished"
    victim_after = children[victim_id]
    assert victim_after.data.tags["retries"] == "1"
    assert victim_after.data.tags["ray_node_id"] == head.node_id  # the only node left

    # Tune's own record (the results the driver received): the retry resumed on the head from
    # the trial's last resume file in the storage path (hpo.trainable) - at least every epoch
    # MLflow held before the kill, and an epoch the worker saved but the driver never received
    # - not from scratch; it first reports that epoch again (logged once).
    [result_file] = storage.glob(
        f"{TINY}/trm_kill/*/trials-*/train_trial_{victim_id}_*/result.json")
    results = [json.loads(line) for line in result_file.read_text().splitlines()]
    reports = [(r["epoch"], r["node_id"]) for r in results]
    on_worker = [epoch for epoch, node in reports if node == worker.node_id]
    on_head = [epoch for epoch, node in reports if node == head.node_id]
    assert len(on_worker) + len(on_head) == len(reports)
    assert on_worker == list(range(1, len(on_worker) + 1))
    resumed_at = on_head[0]
    assert results[len(on_worker)][RESUMED_KEY] == resumed_at
    assert on_head == list(range(resumed_at, 16))
    assert len(before[victim_id]) <= resumed_at <= len(on_worker) + 1
    print(f"[figures] the victim resumed at epoch {resumed_at} on the head (MLflow held "
          f"{len(before[victim_id])} epochs before the kill, the worker had reported "
          f"{len(on_worker)})")
