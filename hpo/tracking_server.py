"""Run the MLflow tracking server a cluster search logs to: `python -m hpo.tracking_server`.

    python -m hpo.tracking_server --backend-store /srv/mlflow/mlflow.db \\
        --artifacts-destination /srv/mlflow/artifacts --host 0.0.0.0 --port 5000

    python -m hpo.tracking_server --backend-store postgresql://mlflow@db-host:5432/mlflow \\
        --artifacts-destination s3://bucket/mlflow --host 0.0.0.0 --port 5000 --workers 4

then `launch.py --mlflow-uri http://<this host>:5000` (or MLFLOW_TRACKING_URI) on the cluster.
A search writes to MLflow from its driver only, over HTTP: no node ever opens the database file,
which matters because SQLite on a shared filesystem with writers on several machines corrupts or
locks. For the same reason a SQLite backend gets one server worker process; a database server
(postgresql://..., driver: `pip install "core-hpo[postgres]"`) takes several (`--workers`, default
4). A database URI is connected to before the server starts: an unreachable server, a missing
database, wrong credentials or a missing driver stop it with a message naming the URI (password
hidden). The password can stay out of the URI: libpq reads PGPASSWORD. Artifacts are proxied by
the server (`--serve-artifacts`), so clients need no access to the artifact store either.

Login (`--auth --admin-password-file PATH`): MLflow's basic-auth app answers 401 to any request
without a known user's password (except `/health`). The admin's password is read from PATH
(never the command line, never printed; a file only its owner can read), passed to MLflow in
its environment, and made the admin's password at every start. Users are created with

    python -m hpo.tracking_server create-user --server http://HOST:5000 --username alice \
        --password-file alice.pw --admin-password-file admin.pw

and clients log in with MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (launch.py stops
with exit code 2 before any trial when they are missing or wrong). Basic auth sends the password
with every request: put HTTPS (a reverse proxy, an ingress) in front of a server others reach.
Logged-in users may read and write every experiment (`--default-permission EDIT`; deleting
and permissions stay with an experiment's creator and the admin). Without `--auth` on an
interface other than the loopback, the server warns: anyone who reaches it can read, rewrite or
delete every run.

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

from hpo.tracking_auth import (
    ADMIN_USERNAME,
    AUTH_APP,
    AUTH_DB_FILE,
    DEFAULT_PERMISSION,
    PERMISSIONS,
    AuthSetupError,
    create_user_main,
    login_environment,
)
from hpo.tracking_store import (
    BackendStoreError,
    backend_store_uri,
    check_backend_store,
    redact,
)

DEFAULT_PORT = 5000
DEFAULT_WORKERS = 4
# Requests one server worker handles at once: MLflow's FastAPI app runs its Flask handlers in
# anyio's worker threads, 40 by default. A request that waits 30 s for a pooled database
# connection is answered 400 Bad Request, which clients do not retry, so its data is lost; with
# SQLAlchemy's default pool (5 + 10 overflow) that happened under 64 concurrent writers
# (benchmarks/bench_tracking.py). A pool as large as the thread limit never makes a request wait;
# a connection PostgreSQL refuses (max_connections) is answered 503, which clients retry.
REQUESTS_PER_WORKER = 40
POOL_ENV = {"MLFLOW_SQLALCHEMYSTORE_POOL_SIZE": "5",
            "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW": str(REQUESTS_PER_WORKER - 5)}

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def artifacts_uri(destination: str) -> str:
    """A cloud URI as given; a local path made absolute (the server resolves it, not clients).

    Args:
        destination: A local directory (created) or a cloud URI such as ``s3://bucket/prefix``.

    Returns:
        The URI to give ``mlflow server --artifacts-destination``.
    """
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
    *,
    workers: int | None = None,
    allowed_hosts: str | None = None,
    auth: bool = False,
) -> list[str]:
    """The `mlflow server` command line (run with this interpreter's mlflow).

    Args:
        backend_store: See :func:`backend_store_uri`.
        artifacts_destination: See :func:`artifacts_uri`.
        host: Interface to bind.
        port: Port to listen on.
        workers: Server worker processes: 1 for SQLite (any other number is refused), default
            ``DEFAULT_WORKERS`` for a database server.
        allowed_hosts: MLflow's ``--allowed-hosts`` (Host headers to accept), if given.
        auth: run MLflow's basic-auth app (a login for every request; ``auth_environment``
            gives it its settings).

    Returns:
        The command as a list of words; it does not connect to the database (see
        :func:`check_backend_store`).

    Raises:
        ValueError: More than one worker for a SQLite backend store.
    """
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
        "--workers", str(workers or DEFAULT_WORKERS),
    ]
    if allowed_hosts:
        command += ["--allowed-hosts", allowed_hosts]
    if auth:
        command += ["--app-name", AUTH_APP]
    return command


def loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only.

    Args:
        host: the interface the server binds.

    Returns:
        True for the loopback.
    """
    return host in LOOPBACK_HOSTS or host.startswith("127.")


def server_environment(backend: str, environ: dict[str, str] | None = None) -> dict[str, str]:
    """Environment variables ``mlflow server`` gets on top of this process's.

    For a database server the connection pool of each worker is sized to the requests it runs
    at once (see ``REQUESTS_PER_WORKER``), unless the caller set MLflow's pool variables.

    Args:
        backend: The backend store URI (see :func:`backend_store_uri`).
        environ: The environment the server inherits (default: ``os.environ``).

    Returns:
        The variables to add.
    """
    environ = os.environ if environ is None else environ
    added = {}
    # The server's job runner (GenAI evaluation jobs, a pool of worker processes) is unused here.
    if "MLFLOW_SERVER_ENABLE_JOB_EXECUTION" not in environ:
        added["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    if not backend.startswith("sqlite:"):
        added.update({k: v for k, v in POOL_ENV.items() if k not in environ})
    return added


def wait_until_healthy(uri: str, timeout_s: float, process=None) -> float:
    """Poll `<uri>/health` until it answers; returns the seconds waited.

    Args:
        uri: The server's URI (``http://host:port``).
        timeout_s: Seconds to wait at most.
        process: The server's ``subprocess.Popen``, if this process started it.

    Returns:
        The seconds waited.

    Raises:
        TimeoutError: Nothing answered by the deadline.
        RuntimeError: ``process`` exited first.
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
    """The command line of ``python -m hpo.tracking_server``.

    Returns:
        The parser.
    """
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
                        help="server worker processes (SQLite: always 1; default otherwise: "
                             f"{DEFAULT_WORKERS})")
    parser.add_argument("--allowed-hosts", default=None,
                        help="Host headers to accept, for nodes that reach the server by a "
                             "name or a public IP (MLflow accepts localhost and private IPs)")
    parser.add_argument("--wait-for-database", type=float, default=0.0, metavar="SECONDS",
                        help="keep retrying to connect to a database backend store for this "
                             "long before giving up, for a database server that is starting "
                             "alongside (default: 0, one attempt)")
    parser.add_argument("--print-command", action="store_true",
                        help="print the mlflow server command and exit (the database is not "
                             "connected to)")
    login = parser.add_argument_group("login (MLflow's basic auth)")
    login.add_argument("--auth", action="store_true",
                       help="every request needs a user's password (401 otherwise); needs "
                            "--admin-password-file")
    login.add_argument("--admin-password-file", type=Path, default=None, metavar="PATH",
                       help="file whose first line is the admin's password (12 characters or "
                            "more; only its owner should read it); the admin's password is set "
                            "from it at every start")
    login.add_argument("--admin-username", default=ADMIN_USERNAME,
                       help=f"the admin's user name (default: {ADMIN_USERNAME})")
    login.add_argument("--auth-db", default=None, metavar="URI",
                       help=f"where users and permissions live (default: {AUTH_DB_FILE} beside "
                            "a SQLite backend store, else the backend store's database)")
    login.add_argument("--default-permission", choices=PERMISSIONS, default=DEFAULT_PERMISSION,
                       help="what a logged-in user may do on experiments nobody granted them "
                            f"(default: {DEFAULT_PERMISSION}: read and write, not delete)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Check the backend store (and, with ``--auth``, the login), then replace this process
    with ``mlflow server``; or ``create-user`` (``create_user_main``).

    Args:
        argv: Command-line arguments (default: ``sys.argv[1:]``).

    Returns:
        2 for a bad command line, an unusable backend store or login, 0 after
        ``--print-command``; otherwise it does not return (the server runs in this process).
    """
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["create-user"]:
        return create_user_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.auth and args.admin_password_file is None:
        parser.error("--auth needs --admin-password-file PATH (a file holding the admin's "
                     "password; never the command line)")
    if args.admin_password_file is not None and not args.auth:
        parser.error("--admin-password-file: only with --auth")
    try:
        command = server_command(args.backend_store, args.artifacts_destination, args.host,
                                 args.port, workers=args.workers,
                                 allowed_hosts=args.allowed_hosts, auth=args.auth)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    backend = command[command.index("--backend-store-uri") + 1]
    shown = [redact(word) if word == backend else word for word in command]
    print(shlex.join(shown), flush=True)
    if not args.auth and not loopback(args.host):
        print(f"warning: no login (--auth): anyone who reaches port {args.port} of this "
              "machine can read, rewrite or delete every run; start it with --auth "
              "--admin-password-file PATH (README, 'Run on a Ray cluster')", file=sys.stderr,
              flush=True)
    if args.print_command:
        return 0
    try:
        check_backend_store(backend, wait_s=args.wait_for_database)
        auth_env = login_environment(
            backend, password_file=args.admin_password_file, admin=args.admin_username,
            auth_db=args.auth_db, default_permission=args.default_permission,
            wait_s=args.wait_for_database) if args.auth else {}
    except (BackendStoreError, AuthSetupError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    print(f"tracking URI for launch.py --mlflow-uri: http://{host}:{args.port} "
          "(from other nodes: this machine's address)", flush=True)
    added = server_environment(backend)
    os.environ.update(added)
    os.environ.update(auth_env)
    if "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW" in os.environ:
        print(f"database connections per server worker: up to "
              f"{os.environ.get('MLFLOW_SQLALCHEMYSTORE_POOL_SIZE', '5')} pooled + "
              f"{os.environ['MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW']} overflow", flush=True)
    os.execv(command[0], command)  # the server replaces this process: signals reach it directly
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
