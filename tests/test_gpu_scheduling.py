"""GPU scheduling: the device a trial picks, and fractional GPUs on a mixed CPU/GPU cluster.

This machine has no GPU, so the cluster test declares a logical one (`ray start --num-gpus 1`) on
one of two nodes: trials asking for 0.5 GPU must all land on that node, two at a time, and - as
torch sees no CUDA device - train on CPU with a warning, or fail when CUDA is required.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from local_cluster import ROOT, LocalCluster, kill_tree, launch_driver, wait_exit, wait_for
from mlflow.tracking import MlflowClient

sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_tracking import peak_overlap  # noqa: E402

import launch  # noqa: E402
from hpo.cluster import Resources, validate_resources
from hpo.tracking import PARENT_TAG
from hpo.trainable import CudaUnavailableError, pick_device

TINY = "tiny"
DEADLINE_S = 240


def test_a_trial_without_a_gpu_trains_on_cpu_even_where_cuda_exists():
    assert pick_device([], cuda_available=True, visible_devices=None,
                       require_cuda=False) == (torch.device("cpu"), None)


def test_a_trial_with_a_gpu_uses_the_one_ray_assigned():
    # Ray narrows CUDA_VISIBLE_DEVICES to the assigned GPU: it is device 0 of the trial.
    assert pick_device(["3"], True, "3", False) == (torch.device("cuda", 0), None)
    # With RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES every GPU is visible: use the id,
    # or its place among the devices the user made visible.
    assert pick_device(["2"], True, None, True) == (torch.device("cuda", 2), None)
    assert pick_device(["3"], True, "2,3", True) == (torch.device("cuda", 1), None)


def test_a_gpu_without_cuda_falls_back_to_cpu_with_a_warning_or_fails_when_required():
    device, warning = pick_device(["0"], False, "0", require_cuda=False)
    assert device == torch.device("cpu")
    assert "Ray assigned GPU 0" in warning and "falling back to CPU" in warning
    with pytest.raises(CudaUnavailableError, match="--require-cuda was given"):
        pick_device(["0"], False, "0", require_cuda=True)


@pytest.mark.parametrize("resources, problem", [
    (Resources(gpus_per_trial=2), "--gpus-per-trial must be in [0, 1]"),
    (Resources(gpus_per_trial=-0.5), "--gpus-per-trial must be in [0, 1]"),
    (Resources(require_cuda=True), "--require-cuda needs --gpus-per-trial > 0"),
    (Resources(cpus_per_trial=0), "--cpus-per-trial must be > 0"),
    (Resources(max_failures=-1), "--max-failures must be >= 0"),
])
def test_resource_options_ray_would_refuse_fail_before_anything_runs(resources, problem):
    with pytest.raises(ValueError) as raised:
        validate_resources(resources)
    assert problem in str(raised.value)


def test_launch_rejects_bad_gpu_options(tmp_path, capsys):
    common = ["--space", "trm.yaml", "--output-dir", str(tmp_path), "--dry-run"]
    assert launch.main([*common, "--gpus-per-trial", "0.25"]) == 0
    assert "1.0 CPU + 0.25 GPU per trial" in capsys.readouterr().out
    assert launch.main([*common, "--require-cuda"]) == 2
    assert "--require-cuda needs --gpus-per-trial > 0" in capsys.readouterr().err


# ---------------------------------------------------------------- a cluster with a logical GPU


@pytest.fixture(scope="module")
def gpu_cluster(tmp_path_factory):
    """A CPU-only head and a worker with one (logical) GPU and 4 CPUs: only the GPU can limit
    how many 1-CPU trials asking for a GPU share run there at once."""
    cluster = LocalCluster(tmp_path_factory.mktemp("gpu_cluster"))
    try:
        cluster.start_head(num_cpus=2, resources={"cpu_node": 1})
        cluster.add_worker("gpu", num_cpus=4, num_gpus=1, resources={"gpu_node": 1})
        cluster.resolve_node_ids()
        yield cluster
    finally:
        cluster.shutdown()
        for path in cluster.temp_dirs:
            shutil.rmtree(path, ignore_errors=True)


def start_driver(cluster: LocalCluster, tmp_path: Path, tiny_data_dir: Path, name: str, *extra,
                 hook: str | None = None) -> tuple[subprocess.Popen, Path, Path]:
    """launch.py as a driver joining the cluster with --address HOST:PORT; output to a log.

    Returns the process, its log and its output directory. ``hook`` sets the test hook
    (``hpo.faultpoints``) with its markers in ``tmp_path / "hooks"``.
    """
    raw = yaml.safe_load((ROOT / "search_spaces" / "trm.yaml").read_text())
    raw["fixed"] = {"embedding_size": 16, "inner_size": 32, "batch_size": 256}
    space = tmp_path / f"{name}.yaml"
    space.write_text(yaml.safe_dump(raw, sort_keys=False))
    out = tmp_path / "out"
    driver, log = launch_driver(
        ["--space", str(space), "--dataset", TINY, "--data-dir", str(tiny_data_dir),
         "--output-dir", str(out), "--address", cluster.address, "--cpus-per-trial", "1",
         "--max-epochs", "2", "--grace-period", "2", *extra],
        tmp_path, cluster.env, hook, tmp_path / "hooks",
    )
    return driver, log, out


def trial_runs(out: Path, name: str) -> tuple[MlflowClient, list]:
    """The MLflow client of a driver's output directory and its search's trial runs."""
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(f"{TINY}/{name}")
    runs = client.search_runs([experiment.experiment_id]) if experiment else []
    return client, [r for r in runs if PARENT_TAG in r.data.tags]


def max_overlap(runs) -> int:
    """Most trials running at once, from the start and end times of their runs."""
    return peak_overlap([(r.info.start_time, r.info.end_time) for r in runs])


@pytest.mark.slow
def test_fractional_gpus_pack_two_trials_per_gpu_on_the_gpu_node(
    gpu_cluster, tmp_path, tiny_data_dir
):
    # --max-concurrent 4 lets Tune start trials together (with a searcher it otherwise keeps
    # one pending trial at a time), so only the GPU limits how many run at once. Every trial
    # waits before its epoch 2 until released: the test releases them once two trials wait
    # together, so two certainly ran at once however fast a tiny trial is.
    driver, log, out = start_driver(gpu_cluster, tmp_path, tiny_data_dir, "trm_gpu",
                                    "--gpus-per-trial", "0.5", "--num-samples", "4",
                                    "--max-concurrent", "4", hook="wait@train::2")

    hooks = tmp_path / "hooks"

    def two_trials_wait():
        # A trial writes the marker when it is held (so the driver's stores exist by then); a
        # trial whose epoch 1 is logged and whose run is still open is held before epoch 2.
        return (hooks / "train.paused").exists() and sum(
            run.info.status == "RUNNING" and "train_loss" in run.data.metrics
            for run in trial_runs(out, "trm_gpu")[1]) >= 2

    try:
        wait_for(two_trials_wait, DEADLINE_S, "two trials held before epoch 2", process=driver)
    except AssertionError as exc:
        kill_tree(driver)
        raise AssertionError(f"{exc}\n{log.read_text()[-4000:]}") from None
    (hooks / "train.release").touch()
    code = wait_exit(driver, log, DEADLINE_S)
    output = log.read_text()
    assert code == 0, output[-4000:]
    assert "Ray assigned GPU 0 to this trial but torch sees no CUDA device" in output
    assert "falling back to CPU for this trial" in output
    _, runs = trial_runs(out, "trm_gpu")
    assert len(runs) == 4
    gpu_node = gpu_cluster.nodes[1].node_id
    for run in runs:
        assert run.info.status == "FINISHED"
        tags = run.data.tags
        assert (tags["ray_node_id"], tags["ray_gpu_ids"], tags["device"]) == (gpu_node, "0", "cpu")
    # The GPU node's 4 CPUs would run all 4 at once; its one GPU at 0.5 per trial allows 2,
    # and two were held together.
    assert max_overlap(runs) == 2


@pytest.mark.slow
def test_required_cuda_fails_every_trial_clearly(gpu_cluster, tmp_path, tiny_data_dir):
    driver, log, out = start_driver(gpu_cluster, tmp_path, tiny_data_dir, "trm_cuda",
                                    "--gpus-per-trial", "0.5", "--num-samples", "2",
                                    "--require-cuda")
    assert wait_exit(driver, log, DEADLINE_S) == 1
    output = log.read_text()
    assert "error: trm_cuda: all 2 trials failed" in output
    assert "CudaUnavailableError" in output and "--require-cuda was given" in output
    client, runs = trial_runs(out, "trm_cuda")
    assert len(runs) == 2
    for run in runs:
        assert run.info.status == "FAILED"
        assert "torch sees no CUDA device" in run.data.tags["error"]
        assert not client.get_metric_history(run.info.run_id, "train_loss")
