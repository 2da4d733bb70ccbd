"""The tracking server's login (``python -m hpo.tracking_server --auth``): MLflow's basic-auth
app, set up before the server starts (the admin's password from a file, the user store, the
app's configuration and environment), and ``create-user``, which adds a user through the
server's REST API as its admin.

    python -m hpo.tracking_server create-user --server http://HOST:5000 --username alice \\
        --password-file alice.pw --admin-password-file admin.pw
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import importlib.util
import os
import stat
import sys
import tempfile
from pathlib import Path

from hpo.tracking_store import (
    BackendStoreError,
    backend_store_uri,
    check_backend_store,
    redact,
)

# Login (--auth): MLflow's basic-auth app, its user store, and who may do what by default.
AUTH_APP = "basic-auth"
ADMIN_USERNAME = "admin"
PERMISSIONS = ("READ", "EDIT", "MANAGE", "NO_PERMISSIONS")
DEFAULT_PERMISSION = "EDIT"  # logged-in users read and write; deleting stays with owners
MIN_PASSWORD_CHARS = 12  # MLflow refuses shorter passwords
AUTH_DB_FILE = "basic_auth.db"  # beside a SQLite backend store


class AuthSetupError(RuntimeError):
    """The login cannot be set up (password file, user store, package); before the server."""


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


def login_environment(backend: str, *, password_file: Path, admin: str, auth_db: str | None,
                      default_permission: str, wait_s: float = 0.0) -> dict[str, str]:
    """Set up the login before the server starts: read the admin's password, make it the
    admin's in the user store, write MLflow's basic-auth configuration.

    Args:
        backend: the backend store URI (``hpo.tracking_store.backend_store_uri``).
        password_file: the admin's password file (``read_password_file``); a warning when
            every user of the machine may read it.
        admin: the admin's user name.
        auth_db: where users and permissions live (``auth_database_uri``; None: its default).
        default_permission: what a logged-in user may do where nobody granted more or less.
        wait_s: seconds to keep retrying a user store on a database server that is starting.

    Returns:
        The environment the server needs (``auth_environment``).

    Raises:
        AuthSetupError: the password file, the user store or the login package.
    """
    password = read_password_file(password_file)
    if others_can_read(password_file):
        print(f"warning: every user of this machine may read {password_file}: "
              "chmod 600 it", file=sys.stderr, flush=True)
    try:
        store = auth_database_uri(backend, auth_db)
    except OSError as exc:  # a SQLite file's folder that cannot be made
        raise AuthSetupError(f"cannot open the user store {auth_db}: {exc}") from None
    if store != backend:  # another database server: reachable, or stop here
        try:
            check_backend_store(store, wait_s=wait_s)
        except BackendStoreError as exc:
            raise AuthSetupError(str(exc).replace("backend store", "user store")) from None
    done = sync_admin_password(store, admin, password)
    print(f"login: on (user store {redact(store)}; admin {admin!r}"
          + {"new": ", created from the password file",
             "kept": "",
             "changed": ", password changed to the password file's"}[done]
          + f"; other users: python -m hpo.tracking_server create-user; default permission "
          f"{default_permission})", flush=True)
    config = write_auth_config(auth_config_text(store, admin, default_permission))
    return auth_environment(config, admin, password)


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


def create_user(server: str, username: str, password: str, *, admin: str, admin_password: str,
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
        print(create_user(args.server, args.username, password, admin=args.admin_username,
                          admin_password=admin_password, update=args.update_password))
    except AuthSetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
