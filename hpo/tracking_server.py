"""Run the MLflow tracking server a cluster search logs to: `python -m hpo.tracking_server`.

    python -m hpo.tracking_server --backend-store /srv/mlflow/mlflow.db \\
        --artifacts-destination /srv/mlflow/artifacts --host 0.0.0.0 --port 5000

then `launch.py --mlflow-uri http://<this host>:5000` (or MLFLOW_TRACKING_URI) on the cluster.
A search writes to MLflow from its driver only, over HTTP: no node ever opens the database file,
which matters because SQLite on a shared filesystem with writers on several machines corrupts or
locks. For the same reason a SQLite backend gets one server worker process; use a database server
(postgresql://...) for more. Artifacts are proxied by the server (`--serve-artifacts`), so clients
need no access to the artifact store either.

This only builds and runs the `mlflow server` command (`--print-command` shows it); `mlflow server
--help` documents every flag.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

DEFAULT_PORT = 5000


def backend_store_uri(store: str) -> str:
    """A database URI; a bare path means a SQLite file (absolute, parent created)."""
    if "://" in store:
        if store.startswith("sqlite:///"):
            Path(store.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        return store
    path = Path(store).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def artifacts_uri(destination: str) -> str:
    """A cloud URI as given; a local path made absolute (the server resolves it, not clients)."""
    if "://" in destination:
        return destination
    path = Path(destination).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


def server_command(
    backend_store: str,
    artifacts_destination: str,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    workers: int | None = None,
    allowed_hosts: str | None = None,
) -> list[str]:
    """The `mlflow server` command line (run with this interpreter's mlflow)."""
    backend = backend_store_uri(backend_store)
    if backend.startswith("sqlite:"):
        if workers not in (None, 1):
            raise ValueError(f"a SQLite backend store takes one server worker, not {workers}: "
                             "concurrent worker processes would contend for the database lock")
        workers = 1
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", backend,
        "--serve-artifacts",
        "--artifacts-destination", artifacts_uri(artifacts_destination),
        "--host", host,
        "--port", str(port),
        "--workers", str(workers or 4),
    ]
    if allowed_hosts:
        command += ["--allowed-hosts", allowed_hosts]
    return command


def wait_until_healthy(uri: str, timeout_s: float, process=None) -> float:
    """Poll `<uri>/health` until it answers; returns the seconds waited.

    Raises TimeoutError at the deadline, or RuntimeError at once if `process` (the server's
    Popen) has exited.
    """
    start = time.monotonic()
    deadline = start + timeout_s
    health = uri.rstrip("/") + "/health"
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"MLflow server exited with code {process.returncode} before "
                               f"{health} answered")
        try:
            with urllib.request.urlopen(health, timeout=2) as response:
                if response.status == 200:
                    return time.monotonic() - start
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{health} did not answer within {timeout_s:.0f} s")
        time.sleep(0.2)  # polling interval


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m hpo.tracking_server",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--backend-store", required=True,
                        help="SQLite file path (or sqlite:///...) or a database URI "
                             "(postgresql://user:pass@host/db)")
    parser.add_argument("--artifacts-destination", required=True,
                        help="where the server stores artifacts: a local directory on the "
                             "server's machine or a cloud URI (s3://bucket/mlflow)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface to bind; 0.0.0.0 so cluster nodes can reach it "
                             "(default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help=f"port (default: {DEFAULT_PORT})")
    parser.add_argument("--workers", type=int, default=None,
                        help="server worker processes (SQLite: always 1; default otherwise: 4)")
    parser.add_argument("--allowed-hosts", default=None,
                        help="Host headers to accept, for nodes that reach the server by a "
                             "name or a public IP (MLflow accepts localhost and private IPs)")
    parser.add_argument("--print-command", action="store_true",
                        help="print the mlflow server command and exit")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        command = server_command(args.backend_store, args.artifacts_destination, args.host,
                                 args.port, args.workers, args.allowed_hosts)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(shlex.join(command), flush=True)
    if args.print_command:
        return 0
    host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    print(f"tracking URI for launch.py --mlflow-uri: http://{host}:{args.port} "
          "(from other nodes: this machine's address)", flush=True)
    # The server's job runner (GenAI evaluation jobs, a pool of worker processes) is unused here.
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    os.execv(command[0], command)  # the server replaces this process: signals reach it directly
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
