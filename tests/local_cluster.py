"""Real Ray clusters and MLflow servers on loopback for tests, torn down by process id.

Every node is one `ray start --block` process in its own session, with its own ports (picked
free), so tests never touch another Ray instance on the machine (no `ray stop`, which stops every
cluster). Token authentication is on, with a token made for the cluster. Nothing here sleeps to
make timing work: waits poll a condition against a deadline.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
POLL_S = 0.2


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def descendants(pid: int) -> list[int]:
    """All live descendants of `pid` (from /proc), children first."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, queue = [], [pid]
    while queue:
        for child in children.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


def kill_tree(process: subprocess.Popen, grace_s: float = 0.0) -> None:
    """End `process` (started with start_new_session=True) and everything it started.

    With a grace period, SIGTERM first (a `ray start --block` then stops its node's processes);
    whatever is left is SIGKILLed: the process group, and descendants that left the group.
    """
    tree = [process.pid, *descendants(process.pid)]
    if grace_s > 0 and process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
    tree += [p for p in descendants(process.pid) if p not in tree]
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for pid in tree:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait()


def wait_for(condition, timeout_s: float, what: str, process: subprocess.Popen | None = None):
    """Poll `condition()` until it returns something truthy; fail at the deadline."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if process is not None and process.poll() is not None:
            raise AssertionError(f"{what}: process exited with {process.returncode}")
        time.sleep(POLL_S)  # polling interval
    raise AssertionError(f"{what}: not within {timeout_s:.0f} s")


def launch_driver(args: list[str], workdir: Path, env: dict[str, str], hook: str | None = None,
                  hook_dir: Path | None = None) -> tuple[subprocess.Popen, Path]:
    """``launch.py ARGS`` in its own session with ``env``, output to a log file in `workdir`;
    ``hook`` sets the test hook (``hpo.faultpoints``), its markers in `hook_dir`."""
    from hpo.faultpoints import DIR_ENV, ENV

    environment = {k: v for k, v in env.items() if k not in (ENV, DIR_ENV)}
    if hook:
        environment.update({ENV: hook, DIR_ENV: str(hook_dir)})
    log = workdir / f"driver-{secrets.token_hex(3)}.log"
    with open(log, "w") as handle:
        process = subprocess.Popen([sys.executable, str(ROOT / "launch.py"), *args], cwd=workdir,
                                   env=environment, stdout=handle, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    return process, log


def wait_exit(process: subprocess.Popen, log: Path, timeout_s: float) -> int:
    """The exit code of `process`; past the deadline it is killed and the test fails with the
    end of its `log`."""
    try:
        return process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        kill_tree(process)
        raise AssertionError(f"still running after {timeout_s:.0f} s:\n"
                             f"{log.read_text()[-3000:]}") from None


@dataclass
class Node:
    name: str
    process: subprocess.Popen
    log_path: Path
    resources: dict
    started_s: float = 0.0  # seconds from `ray start` to the node serving
    node_id: str = ""

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@dataclass
class LocalCluster:
    """A head (dashboard on 127.0.0.1) and any number of worker nodes, on this machine."""

    root: Path
    token: str = field(default_factory=lambda: secrets.token_hex(32))
    nodes: list[Node] = field(default_factory=list)
    gcs_port: int = 0
    dashboard_port: int = 0

    def __post_init__(self):
        self.temp_dirs: list[Path] = []

    def _temp_dir(self) -> Path:
        """One per node, as on separate machines (nodes sharing one would share, and delete,
        each other's unpacked job packages). Short: socket paths must stay < 107 characters."""
        path = Path(tempfile.mkdtemp(prefix="hpo-ray-", dir="/tmp"))
        self.temp_dirs.append(path)
        return path

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("RAY_", "MLFLOW_")) and k != "CUDA_VISIBLE_DEVICES"}
        env.update(
            RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token, RAY_USAGE_STATS_ENABLED="0",
            RAY_DEDUP_LOGS="0", PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT),
        )
        return env

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def start_head(self, num_cpus: int, resources: dict | None = None, num_gpus: int = 0,
                   timeout_s: float = 120) -> Node:
        self.gcs_port, self.dashboard_port = free_port(), free_port()
        args = ["--head", "--port", str(self.gcs_port), "--dashboard-host", "127.0.0.1",
                "--dashboard-port", str(self.dashboard_port),
                "--ray-client-server-port", str(free_port())]
        return self._start("head", args, num_cpus, num_gpus, resources or {}, timeout_s)

    def add_worker(self, name: str, num_cpus: int, resources: dict | None = None,
                   num_gpus: int = 0, timeout_s: float = 120) -> Node:
        return self._start(name, ["--address", self.address], num_cpus, num_gpus,
                           resources or {}, timeout_s)

    def _start(self, name, args, num_cpus, num_gpus, resources, timeout_s) -> Node:
        command = [
            sys.executable, "-m", "ray.scripts.scripts", "start", *args, "--block",
            "--node-ip-address", "127.0.0.1", "--num-cpus", str(num_cpus),
            "--num-gpus", str(num_gpus), "--resources", json.dumps(resources),
            "--node-manager-port", str(free_port()), "--object-manager-port", str(free_port()),
            "--dashboard-agent-listen-port", str(free_port()),
            "--dashboard-agent-grpc-port", str(free_port()),
            "--runtime-env-agent-port", str(free_port()),
            "--metrics-export-port", str(free_port()),
            "--object-store-memory", str(200 * 1024 * 1024), "--disable-usage-stats",
            "--temp-dir", str(self._temp_dir()),
        ]
        log_path = self.root / f"ray-{name}.log"
        start = time.monotonic()
        with open(log_path, "w") as log:
            process = subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True, cwd=self.root)
        node = Node(name, process, log_path, resources)
        self.nodes.append(node)
        wait_for(lambda: "Ray runtime started" in node.log(), timeout_s,
                 f"ray node {name} start (log {log_path})", process)
        node.started_s = time.monotonic() - start
        return node

    def api(self, path: str, timeout_s: float = 30):
        """GET a dashboard REST endpoint (job and state APIs), with the cluster's token."""
        request = urllib.request.Request(self.dashboard_url + path,
                                         headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return json.loads(response.read())

    def alive_nodes(self) -> list[dict]:
        """The cluster's live nodes from the state API: node_id, resources_total, ..."""
        reply = self.api("/api/v0/nodes?detail=1&limit=100")
        return [n for n in reply["data"]["result"]["result"] if n["state"] == "ALIVE"]

    def resolve_node_ids(self) -> dict[str, str]:
        """name -> Ray node id, matched through each node's custom resources."""
        alive = self.alive_nodes()
        for node in self.nodes:
            if node.process.poll() is not None:
                continue
            matches = [n["node_id"] for n in alive
                       if all(n["resources_total"].get(k) == v for k, v in node.resources.items())]
            assert len(matches) == 1, (node.name, node.resources, alive)
            node.node_id = matches[0]
        return {node.name: node.node_id for node in self.nodes if node.node_id}

    def submit_job(self, entrypoint: list[str], submission_id: str) -> subprocess.Popen:
        """`ray job submit --working-dir <repository>` (blocks, tailing the job's logs)."""
        excludes = {"excludes": ["tests", "datasets", "outputs", "benchmarks"]}
        command = [sys.executable, "-m", "ray.scripts.scripts", "job", "submit",
                   "--address", self.dashboard_url, "--submission-id", submission_id,
                   "--working-dir", str(ROOT), "--runtime-env-json", json.dumps(excludes),
                   "--", *entrypoint]
        log_path = self.root / f"job-{submission_id}.log"
        with open(log_path, "w") as log:
            return subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True, cwd=self.root)

    def job_status(self, submission_id: str) -> str:
        return self.api(f"/api/jobs/{submission_id}")["status"]

    def job_logs(self, submission_id: str) -> str:
        return self.api(f"/api/jobs/{submission_id}/logs")["logs"]

    def kill_node(self, node: Node) -> None:
        """A node crash: SIGKILL its raylet, workers and agents at once."""
        kill_tree(node.process, grace_s=0)

    def shutdown(self) -> None:
        """Workers first, then the head; SIGTERM, then SIGKILL whatever is left."""
        for node in reversed(self.nodes):
            if node.process.poll() is None or descendants(node.process.pid):
                kill_tree(node.process, grace_s=10)


def start_mlflow_server(root: Path, port: int | None = None,
                        extra_args: tuple[str, ...] = ()) -> tuple[subprocess.Popen, str]:
    """`python -m hpo.tracking_server` on `port` (default: a free one) of the loopback, SQLite
    backend and artifacts under `root/mlflow` (a server started again on the same root and port
    serves the same store), with `extra_args` (`--auth ...`); returns it and its URI at once
    (wait with `hpo.tracking_server.wait_until_healthy`). Its output is appended to
    `root/mlflow-server.log`."""
    port = port or free_port()
    command = [sys.executable, "-m", "hpo.tracking_server",
               "--backend-store", str(root / "mlflow" / "mlflow.db"),
               "--artifacts-destination", str(root / "mlflow" / "artifacts"),
               "--host", "127.0.0.1", "--port", str(port), *extra_args]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PYTHONPATH"] = str(ROOT)
    with open(root / "mlflow-server.log", "a") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True, cwd=root)
    return process, f"http://127.0.0.1:{port}"
