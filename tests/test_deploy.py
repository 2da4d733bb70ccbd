"""The deployment files in deploy/ and the README's cluster commands agree with the CLI and each
other: commands parse with launch.py's and the tracking server's parsers, trials fit the GPU
nodes, paths trials write are on volumes every pod mounts, ports and names match."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import ray
import yaml
from mlflow.server.security_utils import is_allowed_host_header

import launch
from hpo import tracking_server
from hpo.cluster import Resources, validate_resources
from hpo.space import load_space

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
RAY_MINOR = ".".join(ray.__version__.split(".")[:2])


def parse_launch(command: str):
    """`python launch.py ARGS` -> launch.py's parsed arguments (and a valid resource set)."""
    words = shlex.split(command)
    assert words[:2] == ["python", "launch.py"], words[:2]
    args = launch.build_parser().parse_args(words[2:])
    resources = Resources(args.cpus_per_trial, args.gpus_per_trial, args.max_concurrent,
                          args.address, args.storage_path, args.max_failures, args.require_cuda)
    validate_resources(resources)
    for space in args.space:
        load_space(space)  # a space file that exists and is valid
    return args


def parse_server(command: str):
    words = shlex.split(command)
    start = words.index("hpo.tracking_server") + 1
    return tracking_server.build_parser().parse_args(words[start:])


def trials_per_node(args, node_cpus: float, node_gpus: float) -> int:
    """How many of the search's trials one node holds."""
    by_cpu = int(node_cpus // args.cpus_per_trial)
    if not args.gpus_per_trial:
        return by_cpu
    return min(by_cpu, int(node_gpus / args.gpus_per_trial + 1e-9))


def shared_mounts(pod_spec: dict) -> dict[str, str]:
    """mount path -> PVC claim of a pod template's volumes."""
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"]
              for v in pod_spec.get("volumes", []) if "persistentVolumeClaim" in v}
    return {m["mountPath"]: claims[m["name"]]
            for c in pod_spec["containers"] for m in c.get("volumeMounts", [])}


def on_mount(path: str, mounts: dict[str, str]) -> str | None:
    return next((claim for mount, claim in mounts.items()
                 if path == mount or path.startswith(mount.rstrip("/") + "/")), None)


@pytest.fixture(scope="module")
def images() -> dict[str, str]:
    """Every image reference in deploy/: file -> image."""
    found = {}
    for path in DEPLOY.glob("*.yaml"):
        for match in re.finditer(r"^\s*(?:- )?image:\s*(\S+)", path.read_text(), re.M):
            found.setdefault(path.name, set()).add(match.group(1))
    return found


def test_dockerfile_is_the_installed_ray_version_and_copies_the_whole_package():
    text = (DEPLOY / "Dockerfile").read_text()
    [base] = re.findall(r"^FROM (\S+)", text, re.M)
    match = re.fullmatch(r"rayproject/ray:(\d+\.\d+)\.\d+-py3(\d+)-gpu", base)
    assert match, base
    assert match.group(1) == RAY_MINOR  # cluster and job client must run the same Ray
    assert int(match.group(2)) >= 10
    copied = {word for line in re.findall(r"^COPY (?:--\S+ )*(.+)$", text, re.M)
              for word in line.split()[:-1]}
    # What pyproject's [tool.setuptools] installs, and the space files searches name.
    pyproject = (ROOT / "pyproject.toml").read_text()
    packages = re.search(r"^packages = \[(.*)\]", pyproject, re.M).group(1)
    modules = re.search(r"^py-modules = \[(.*)\]", pyproject, re.M).group(1)
    # A subpackage (models.persona) is copied with its top-level folder.
    needed = {name.strip(' "').split(".")[0] for name in packages.split(",")}
    needed |= {name.strip(' "') + ".py" for name in modules.split(",")}
    needed |= {"pyproject.toml", "search_spaces"}
    assert needed <= copied, needed - copied
    assert all((ROOT / path).exists() for path in copied), copied


def test_every_deploy_file_runs_the_same_image(images):
    assert set(images) == {"ray-cluster.yaml", "rayjob.yaml", "mlflow.yaml"}
    [image] = set().union(*images.values())
    assert image.endswith(f":{ray.__version__}-gpu") or f":{RAY_MINOR}" in image, image


def test_cluster_launcher_definition():
    config = yaml.safe_load((DEPLOY / "ray-cluster.yaml").read_text())
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}  # no trials on the head
    gpu_types = {name: t for name, t in types.items() if t["resources"].get("GPU", 0) >= 1}
    cpu_types = {name: t for name, t in types.items()
                 if name != config["head_node_type"] and not t["resources"].get("GPU")}
    assert gpu_types and cpu_types  # a mixed CPU/GPU cluster
    workers = [t for name, t in types.items() if name != config["head_node_type"]]
    assert sum(t["min_workers"] for t in workers) <= config["max_workers"]
    assert all(t["min_workers"] <= t["max_workers"] for t in workers)

    head = " ; ".join(config["head_start_ray_commands"])
    worker = " ; ".join(config["worker_start_ray_commands"])
    assert "RAY_AUTH_MODE=token ray start --head" in head and "--dashboard-host=0.0.0.0" in head
    port = re.search(r"ray start --head --port=(\d+)", head).group(1)
    assert f"RAY_AUTH_MODE=token ray start --address=$RAY_HEAD_IP:{port}" in worker
    assert any(dest.endswith("/.ray/auth_token") for dest in config["file_mounts"])

    [server_command] = [c for c in config["head_start_ray_commands"] if "tracking_server" in c]
    server = parse_server(server_command.split(">")[0])
    assert server.host == "0.0.0.0"

    # The submit command documented at the top of the file.
    header = " ".join(" ".join(line.lstrip("#").rstrip("\\ ").split())
                      for line in (DEPLOY / "ray-cluster.yaml").read_text().splitlines()
                      if line.startswith("#"))
    submit = re.search(r"ray job submit (.*?) -- (python launch\.py .*?--max-failures \d+)",
                       header)
    assert submit and "--working-dir ." in submit.group(1)
    args = parse_launch(submit.group(2))
    assert args.mlflow_uri == f"http://127.0.0.1:{server.port}"  # the driver runs on the head
    assert "://" in args.storage_path  # workers cannot write to the head's disk
    assert args.gpus_per_trial > 0 and args.max_failures >= 1
    gpu = next(iter(gpu_types.values()))["resources"]
    per_node = trials_per_node(args, gpu["CPU"], gpu["GPU"])
    assert per_node == round(gpu["GPU"] / args.gpus_per_trial)  # the GPU, not CPUs, limits
    assert args.max_concurrent <= per_node * sum(t["max_workers"] for t in gpu_types.values())


def test_kuberay_rayjob_and_tracking_server():
    job = yaml.safe_load((DEPLOY / "rayjob.yaml").read_text())
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    spec = job["spec"]
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"].rsplit(".", 1)[0] == RAY_MINOR
    assert cluster["authOptions"]["mode"] == "token"
    assert spec["shutdownAfterJobFinishes"] is True
    args = parse_launch(spec["entrypoint"])
    assert yaml.safe_load(spec["runtimeEnvYAML"])["working_dir"] == "/home/ray/core-hpo"
    assert "WORKDIR /home/ray/core-hpo" in (DEPLOY / "Dockerfile").read_text()

    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    [gpu_group] = [g for g in cluster["workerGroupSpecs"]
                   if g["template"]["spec"]["containers"][0]["resources"]["limits"]
                   .get("nvidia.com/gpu")]
    limits = gpu_group["template"]["spec"]["containers"][0]["resources"]["limits"]
    per_node = trials_per_node(args, float(limits["cpu"]), float(limits["nvidia.com/gpu"]))
    assert per_node == round(float(limits["nvidia.com/gpu"]) / args.gpus_per_trial)
    assert args.max_concurrent <= per_node * gpu_group["maxReplicas"]
    assert gpu_group["minReplicas"] <= gpu_group["replicas"] <= gpu_group["maxReplicas"]

    # What the driver (head) reads and writes, and what trials (workers) write, is shared.
    head_mounts = shared_mounts(head["template"]["spec"])
    for path in (str(args.data_dir), str(args.output_dir)):
        assert on_mount(path, head_mounts), path
    storage_claim = on_mount(args.storage_path, head_mounts)
    assert storage_claim
    for group in cluster["workerGroupSpecs"]:
        assert on_mount(args.storage_path, shared_mounts(group["template"]["spec"])) == \
            storage_claim

    manifests = {(d["kind"], d["metadata"]["name"]): d
                 for d in yaml.safe_load_all((DEPLOY / "mlflow.yaml").read_text())}
    claim = manifests[("PersistentVolumeClaim", storage_claim)]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]

    host, port = re.fullmatch(r"http://([\w.-]+):(\d+)", args.mlflow_uri).groups()
    service = manifests[("Service", host)]
    [service_port] = service["spec"]["ports"]
    assert service_port["port"] == int(port)
    deployment = manifests[("Deployment", host)]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    server = parse_server(shlex.join(container["command"]))
    assert server.port == service_port["targetPort"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/health", "port": server.port}
    if "://" not in server.backend_store or server.backend_store.startswith("sqlite"):
        # One writer for a SQLite file: a single pod, never two during a rollout.
        assert deployment["spec"]["replicas"] == 1
        assert deployment["spec"]["strategy"]["type"] == "Recreate"
    store_mounts = shared_mounts(deployment["spec"]["template"]["spec"])
    assert on_mount(server.backend_store, store_mounts)
    # The Host header the driver sends (the Service name) passes MLflow's host check.
    allowed = server.allowed_hosts.split(",")
    assert is_allowed_host_header(allowed, f"{host}:{port}")
    assert is_allowed_host_header(allowed, f"{host}.default.svc.cluster.local:{port}")
    assert not is_allowed_host_header(allowed, f"evil.example:{port}")


def test_readme_cluster_commands_parse():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Run on a Ray cluster", 1)[1]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    commands = [line for block in blocks for line in block.replace("\\\n", " ").splitlines()]
    launches = [c[c.index("python launch.py"):] for c in commands if "python launch.py" in c]
    servers = [c for c in commands if "hpo.tracking_server" in c]
    assert launches and servers
    for command in launches:
        args = parse_launch(command)
        assert args.storage_path and args.max_failures >= 1
    for command in servers:
        assert parse_server(command).host == "0.0.0.0"
    assert any("ray job submit" in c and "--working-dir ." in c for c in commands)
    assert any("RAY_AUTH_MODE=token" in c for c in commands)
