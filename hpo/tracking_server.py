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
import hashlib
import hmac
import importlib.util
import os
import shlex
import stat
import sys
import tempfile
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


# Login (--auth): MLflow's basic-auth app, its user store, and who may do what by default.
AUTH_APP = "basic-auth"
ADMIN_USERNAME = "admin"
PERMISSIONS = ("READ", "EDIT", "MANAGE", "NO_PERMISSIONS")
DEFAULT_PERMISSION = "EDIT"  # logged-in users read and write; deleting stays with owners
MIN_PASSWORD_CHARS = 12  # MLflow refuses shorter passwords
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
AUTH_DB_FILE = "basic_auth.db"  # beside a SQLite backend store


class BackendStoreError(RuntimeError):
    """The backend store database cannot be used; raised before the server starts."""


class AuthSetupError(RuntimeError):
    """The login cannot be set up (password file, user store, package); before the server."""


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


def read_password_file(path: Path) -> str:
    """The password in ``path``: its first line, without the line break.

    Args:
        path: a file holding the password.

    Returns:
        The password.

    Raises:
        AuthSetupError: the file is missing, unreadable, empty, or the password is shorter
            than MLflow accepts.
    """
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise AuthSetupError(f"password file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise AuthSetupError(f"cannot read password file {path}: {exc}") from None
    lines = text.splitlines()
    password = lines[0] if lines else ""
    if not password.strip():
        raise AuthSetupError(f"password file {path} is empty")
    if len(password) < MIN_PASSWORD_CHARS:
        raise AuthSetupError(f"the password in {path} has {len(password)} characters; MLflow "
                             f"accepts {MIN_PASSWORD_CHARS} or more")
    return password


def others_can_read(path: Path) -> bool:
    """Whether any user of the machine may read the file (its "others" bits; a group's are
    allowed: a Kubernetes Secret mounted for a pod's fsGroup is group-readable).

    Args:
        path: a file.

    Returns:
        True when its mode lets them.
    """
    return bool(Path(path).stat().st_mode & stat.S_IRWXO)


def auth_database_uri(backend: str, auth_db: str | None = None) -> str:
    """Where MLflow keeps users and permissions: ``auth_db``; by default a SQLite file beside a
    SQLite backend store, or the backend store's own database (its tables, ``users`` and
    ``*_permissions`` with the version table ``alembic_version_auth``, do not collide with the
    tracking store's).

    Args:
        backend: the backend store URI (``backend_store_uri``).
        auth_db: a SQLite file path or database URI, if given.

    Returns:
        The URI.
    """
    if auth_db:
        return backend_store_uri(auth_db)
    if backend.startswith("sqlite:///"):
        return f"sqlite:///{Path(backend.removeprefix('sqlite:///')).parent / AUTH_DB_FILE}"
    return backend


def auth_config_text(auth_db: str, admin: str, default_permission: str) -> str:
    """MLflow's basic-auth configuration (``MLFLOW_AUTH_CONFIG_PATH``), without the password.

    Args:
        auth_db: the user store (``auth_database_uri``).
        admin: the admin's user name.
        default_permission: what a user may do where nobody granted it more or less.

    Returns:
        The file's text (INI).
    """
    return "\n".join([
        "[mlflow]",
        f"default_permission = {default_permission}",
        f"database_uri = {auth_db.replace('%', '%%')}",
        f"admin_username = {admin}",
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth",
        "",
    ])


def write_auth_config(text: str) -> Path:
    """Writes the basic-auth configuration where only this user can write, named by its
    content (a restart with the same settings reuses the file).

    Args:
        text: ``auth_config_text``'s result.

    Returns:
        The file.
    """
    folder = Path(tempfile.gettempdir()) / f"core-hpo-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    if folder.stat().st_uid != os.getuid() or folder.stat().st_mode & 0o022:
        raise AuthSetupError(f"{folder} belongs to another user or others may write in it")
    path = folder / f"mlflow-auth-{hashlib.sha256(text.encode()).hexdigest()[:16]}.ini"
    partial = path.with_suffix(".partial")
    partial.write_text(text)
    partial.replace(path)
    return path


def auth_environment(config_path: Path, admin: str, password: str,
                     environ: dict[str, str] | None = None) -> dict[str, str]:
    """The variables MLflow's basic-auth app reads: its configuration, the admin, the admin's
    password (the environment, not the command line, so ``ps`` does not show it) and the secret
    key of its forms (``MLFLOW_FLASK_SERVER_SECRET_KEY``, unless set: derived from the admin's
    password, so that every replica of a server started with the same file has the same one).

    Args:
        config_path: ``write_auth_config``'s file.
        admin: the admin's user name.
        password: the admin's password.
        environ: the environment the server inherits (default: ``os.environ``).

    Returns:
        The variables to add.
    """
    environ = os.environ if environ is None else environ
    secret = environ.get("MLFLOW_FLASK_SERVER_SECRET_KEY") or hmac.new(
        password.encode(), b"core-hpo mlflow basic-auth form key", hashlib.sha256).hexdigest()
    return {"MLFLOW_AUTH_CONFIG_PATH": str(config_path), "MLFLOW_AUTH_ADMIN_USERNAME": admin,
            "MLFLOW_AUTH_ADMIN_PASSWORD": password, "MLFLOW_FLASK_SERVER_SECRET_KEY": secret}


def sync_admin_password(auth_db: str, admin: str, password: str) -> str:
    """Makes the admin's password the file's: MLflow reads the configured password only when
    it creates the admin, so a changed file would otherwise be ignored.

    Args:
        auth_db: the user store (``auth_database_uri``).
        admin: the admin's user name.
        password: the password from the file.

    Returns:
        What was done: "new" (the server creates the admin), "kept" or "changed".

    Raises:
        AuthSetupError: the user store cannot be opened, or the login package is missing.
    """
    if importlib.util.find_spec("flask_wtf") is None:
        raise AuthSetupError("the tracking server's login needs Flask-WTF: "
                             "pip install 'mlflow[auth]' (or pip install -e .)")
    try:
        from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

        store = SqlAlchemyStore()
        store.init_db(auth_db)
        try:
            if not store.has_user(admin, use_primary=True):
                return "new"
            if store.authenticate_user(admin, password, use_primary=True):
                return "kept"
            store.update_user(admin, password=password)
            return "changed"
        finally:
            store.engine.dispose()
    except AuthSetupError:
        raise
    except Exception as exc:  # the store's driver, connection and schema errors
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AuthSetupError(f"cannot open the user store {redact(auth_db)}: {reason}") from exc


def loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only.

    Args:
        host: the interface the server binds.

    Returns:
        True for the loopback.
    """
    return host in LOOPBACK_HOSTS or host.startswith("127.")


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


def build_create_user_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m hpo.tracking_server create-user``.

    Returns:
        The parser.
    """
    parser = argparse.ArgumentParser(
        prog="python -m hpo.tracking_server create-user",
        description="Create a user of a tracking server started with --auth, as its admin "
                    "(with --update-password, a user that exists gets the password).")
    parser.add_argument("--server", required=True, metavar="URI",
                        help="the tracking server (http://HOST:5000)")
    parser.add_argument("--username", required=True, help="the new user's name")
    parser.add_argument("--password-file", required=True, type=Path, metavar="PATH",
                        help="file whose first line is the new user's password")
    parser.add_argument("--admin-password-file", required=True, type=Path, metavar="PATH",
                        help="the admin's password file (the server's)")
    parser.add_argument("--admin-username", default=ADMIN_USERNAME,
                        help=f"the admin's user name (default: {ADMIN_USERNAME})")
    parser.add_argument("--update-password", action="store_true",
                        help="a user that exists gets this password (without it, that is an "
                             "error); for scripts that run at every start")
    return parser


def create_user(server: str, username: str, password: str, admin: str, admin_password: str,
                update: bool = False, timeout_s: float = 30.0) -> str:
    """Creates a user of a ``--auth`` server through its REST API, as its admin.

    Args:
        server: the server's URI.
        username: the user.
        password: the user's password.
        admin: the admin's user name.
        admin_password: the admin's password.
        update: a user that exists gets this password (else that is an error).
        timeout_s: seconds a request may take.

    Returns:
        What was done, in words.

    Raises:
        AuthSetupError: the server does not answer or refuses the admin's login, or the user
            exists (without ``update``).
    """
    import requests

    base = server.rstrip("/") + "/api/2.0/mlflow/users/"
    body = {"username": username, "password": password}

    def send(method: str, path: str):
        try:
            response = requests.request(method, base + path, json=body,
                                        auth=(admin, admin_password), timeout=timeout_s)
        except requests.exceptions.RequestException as exc:
            raise AuthSetupError(f"tracking server {server} did not answer ({exc})") from exc
        if response.status_code == 401:
            raise AuthSetupError(f"tracking server {server} refused the login of {admin!r} "
                                 "(401): wrong admin password, or a server started without "
                                 "--auth")
        if response.status_code == 403:
            raise AuthSetupError(f"{admin!r} is not an admin of {server} (403)")
        if response.status_code == 404:
            raise AuthSetupError(f"{server} has no user API (404): was it started with --auth?")
        return response

    response = send("POST", "create")
    if response.status_code == 200:
        return f"created user {username!r} on {server}"
    text = response.text.strip()
    if "RESOURCE_ALREADY_EXISTS" not in text and "already exists" not in text:
        raise AuthSetupError(f"{server} answered {response.status_code}: {text[:300]}")
    if not update:
        raise AuthSetupError(f"user {username!r} exists on {server}: pass --update-password "
                             "to set its password")
    response = send("PATCH", "update-password")
    if response.status_code != 200:
        raise AuthSetupError(f"{server} answered {response.status_code}: "
                             f"{response.text.strip()[:300]}")
    return f"user {username!r} exists on {server}: its password is set"


def create_user_main(argv: list[str]) -> int:
    """``python -m hpo.tracking_server create-user ...``.

    Args:
        argv: its arguments.

    Returns:
        0, or 2 with a one-line error.
    """
    args = build_create_user_parser().parse_args(argv)
    try:
        password = read_password_file(args.password_file)
        admin_password = read_password_file(args.admin_password_file)
        print(create_user(args.server, args.username, password, args.admin_username,
                          admin_password, update=args.update_password))
    except AuthSetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


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
                                 args.port, args.workers, args.allowed_hosts, auth=args.auth)
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
        auth_env = _auth_setup(args, backend) if args.auth else {}
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


def _auth_setup(args: argparse.Namespace, backend: str) -> dict[str, str]:
    """Reads the admin's password, sets it in the user store, writes MLflow's basic-auth
    configuration; returns the environment the server needs (``auth_environment``)."""
    password = read_password_file(args.admin_password_file)
    if others_can_read(args.admin_password_file):
        print(f"warning: every user of this machine may read {args.admin_password_file}: "
              "chmod 600 it", file=sys.stderr, flush=True)
    try:
        auth_db = auth_database_uri(backend, args.auth_db)
    except OSError as exc:  # a SQLite file's folder that cannot be made
        raise AuthSetupError(f"cannot open the user store {args.auth_db}: {exc}") from None
    if auth_db != backend:  # another database server: reachable, or stop here
        try:
            check_backend_store(auth_db, wait_s=args.wait_for_database)
        except BackendStoreError as exc:
            raise AuthSetupError(str(exc).replace("backend store", "user store")) from None
    done = sync_admin_password(auth_db, args.admin_username, password)
    print(f"login: on (user store {redact(auth_db)}; admin {args.admin_username!r}"
          + {"new": ", created from the password file",
             "kept": "",
             "changed": ", password changed to the password file's"}[done]
          + f"; other users: python -m hpo.tracking_server create-user; default permission "
          f"{args.default_permission})", flush=True)
    config = write_auth_config(auth_config_text(auth_db, args.admin_username,
                                                args.default_permission))
    return auth_environment(config, args.admin_username, password)


if __name__ == "__main__":
    sys.exit(main())
