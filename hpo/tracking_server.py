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
DEFAULT_WORKERS = 4
# The extra that installs each database's drivers: for postgresql://, psycopg2 (SQLAlchemy < 2.1's
# default) and psycopg 3 (SQLAlchemy >= 2.1's), as MLflow's own `db` extra does.
DRIVER_EXTRAS = {"postgresql": "postgres"}
LIBPQ_DRIVERS = ("psycopg2", "psycopg")  # they take libpq's connect_timeout
# Requests one server worker handles at once: MLflow's FastAPI app runs its Flask handlers in
# anyio's worker threads, 40 by default. A request that waits 30 s for a pooled database
# connection is answered 400 Bad Request, which clients do not retry, so its data is lost; with
# SQLAlchemy's default pool (5 + 10 overflow) that happened under 64 concurrent writers
# (benchmarks/bench_tracking.py). A pool as large as the thread limit never makes a request wait;
# a connection PostgreSQL refuses (max_connections) is answered 503, which clients retry.
REQUESTS_PER_WORKER = 40
POOL_ENV = {"MLFLOW_SQLALCHEMYSTORE_POOL_SIZE": "5",
            "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW": str(REQUESTS_PER_WORKER - 5)}


class BackendStoreError(RuntimeError):
    """The backend store database cannot be used; raised before the server starts."""


def backend_store_uri(store: str) -> str:
    """A database URI; a bare path means a SQLite file (absolute, parent created).

    Args:
        store: A SQLite file path, a ``sqlite:///`` URI or another SQLAlchemy database URI
            (``postgresql://user:password@host:port/database``).

    Returns:
        The URI to give ``mlflow server --backend-store-uri``.
    """
    if "://" in store:
        if store.startswith("sqlite:///"):
            Path(store.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        return store
    path = Path(store).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


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
    workers: int | None = None,
    allowed_hosts: str | None = None,
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
    return command


def redact(uri: str) -> str:
    """The URI with its password, if any, replaced by ``***`` (for messages and logs).

    Args:
        uri: A database or server URI.

    Returns:
        The URI safe to print.
    """
    if "://" not in uri or "@" not in uri.split("://", 1)[1].split("/", 1)[0]:
        return uri
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(uri).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        scheme, rest = uri.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"


def check_backend_store(uri: str, timeout_s: float = 10.0, wait_s: float = 0.0) -> None:
    """Connect to a database backend store once, so that a bad URI fails before the server starts.

    SQLite files are not checked (the server creates them). The error names the URI without
    its password and says what is wrong: the driver is not installed, the server does not
    answer, the database does not exist, the credentials are refused.

    Args:
        uri: The backend store URI (see :func:`backend_store_uri`).
        timeout_s: Seconds one connection attempt may take.
        wait_s: Seconds to keep retrying a failed connection (a database server that is still
            starting); 0 tries once. A missing driver or a malformed URI fails at once.

    Raises:
        BackendStoreError: The database cannot be connected to.
    """
    if uri.startswith("sqlite:") or "://" not in uri:
        return
    import sqlalchemy
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

    shown = redact(uri)
    try:
        url = sqlalchemy.engine.make_url(uri)
    except ArgumentError as exc:
        raise BackendStoreError(f"backend store {shown} is not a database URI: {exc}") from exc
    if url.get_backend_name() == "postgres":
        raise BackendStoreError(f"backend store {shown}: SQLAlchemy (and so MLflow) needs the "
                                "scheme postgresql://, not postgres://")
    connect_args = {"connect_timeout": max(1, round(timeout_s))} \
        if url.get_driver_name() in LIBPQ_DRIVERS else {}
    extra = DRIVER_EXTRAS.get(url.get_backend_name())
    install = (f'pip install "core-hpo[{extra}]"' if extra
               else "install the SQLAlchemy driver it names")
    try:
        engine = sqlalchemy.create_engine(url, connect_args=connect_args,
                                          poolclass=sqlalchemy.pool.NullPool)
    except (ImportError, NoSuchModuleError) as exc:
        raise BackendStoreError(f"the database driver for backend store {shown} is not "
                                f"installed ({exc}): {install}") from exc
    deadline = time.monotonic() + wait_s
    try:
        while True:
            try:
                with engine.connect() as connection:
                    connection.execute(sqlalchemy.text("SELECT 1"))
                return
            except SQLAlchemyError as exc:
                if time.monotonic() < deadline:
                    time.sleep(1.0)  # polling interval while the database server starts
                    continue
                reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
                waited = f" (retried for {wait_s:.0f} s)" if wait_s > 0 else ""
                raise BackendStoreError(
                    f"cannot connect to backend store {shown}{waited}: "
                    f"{'; '.join(line.strip() for line in reason if line.strip())}") from exc
    finally:
        engine.dispose()


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
    return parser


def main(argv: list[str] | None = None) -> int:
    """Check the backend store, then replace this process with ``mlflow server``.

    Args:
        argv: Command-line arguments (default: ``sys.argv[1:]``).

    Returns:
        2 for a bad command line or an unusable backend store, 0 after ``--print-command``;
        otherwise it does not return (the server runs in this process).
    """
    args = build_parser().parse_args(argv)
    try:
        command = server_command(args.backend_store, args.artifacts_destination, args.host,
                                 args.port, args.workers, args.allowed_hosts)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    backend = command[command.index("--backend-store-uri") + 1]
    shown = [redact(word) if word == backend else word for word in command]
    print(shlex.join(shown), flush=True)
    if args.print_command:
        return 0
    try:
        check_backend_store(backend, wait_s=args.wait_for_database)
    except BackendStoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    print(f"tracking URI for launch.py --mlflow-uri: http://{host}:{args.port} "
          "(from other nodes: this machine's address)", flush=True)
    added = server_environment(backend)
    os.environ.update(added)
    if "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW" in os.environ:
        print(f"database connections per server worker: up to "
              f"{os.environ.get('MLFLOW_SQLALCHEMYSTORE_POOL_SIZE', '5')} pooled + "
              f"{os.environ['MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW']} overflow", flush=True)
    os.execv(command[0], command)  # the server replaces this process: signals reach it directly
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
