"""A tracking server that needs a login (`python -m hpo.tracking_server --auth`): the admin's
password comes from a file and never shows in a command line or output, users are created with
`create-user`, an unauthenticated request is answered 401, a search with the right login logs
every run, and one with a wrong or missing password stops before any trial with exit code 2.
Real servers (MLflow's basic-auth app on a SQLite store) on free loopback ports; the searches run
in this process on the `tiny` dataset.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
from pathlib import Path

import pytest
import requests
import yaml
from local_cluster import kill_tree, start_mlflow_server
from mlflow.tracking import MlflowClient

import launch
from hpo import tracking_auth, tracking_server, tracking_store
from hpo.tracking import PARENT_TAG, TrackingUnavailableError, check_tracking

ROOT = Path(__file__).resolve().parent.parent
TINY = "tiny"
SEARCH = "/api/2.0/mlflow/experiments/search?max_results=1"


def password_file(folder: Path, name: str, password: str | None = None) -> tuple[Path, str]:
    """A private file holding a password (a new random one unless given)."""
    password = password or secrets.token_hex(12)
    path = folder / name
    path.write_text(password + "\n")
    path.chmod(0o600)
    return path, password


def server_args(backend: Path, *extra: str) -> list[str]:
    return ["--backend-store", str(backend / "mlflow.db"),
            "--artifacts-destination", str(backend / "artifacts"), *extra]


# -- without a server ------------------------------------------------------------------------


def test_password_file_is_its_first_line_and_bad_files_are_refused(tmp_path):
    path, password = password_file(tmp_path, "ok.pw")
    path.write_text(password + "\nignored second line\n")
    assert tracking_auth.read_password_file(path) == password
    (tmp_path / "empty.pw").write_text("\n")
    (tmp_path / "short.pw").write_text("tooshort\n")
    for name, message in (("missing.pw", "does not exist"), ("empty.pw", "is empty"),
                          ("short.pw", "has 8 characters; MLflow accepts 12 or more")):
        with pytest.raises(tracking_auth.AuthSetupError, match=message):
            tracking_auth.read_password_file(tmp_path / name)


def test_auth_needs_a_password_file_and_a_file_needs_auth(tmp_path, capsys):
    pw, _ = password_file(tmp_path, "admin.pw")
    for extra, message in ((["--auth"], "--auth needs --admin-password-file PATH"),
                           (["--admin-password-file", str(pw)], "only with --auth")):
        with pytest.raises(SystemExit) as exit_info:
            tracking_server.main(server_args(tmp_path, *extra))
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err


def test_a_password_file_everyone_may_read_is_warned_about(tmp_path, capsys):
    pw, password = password_file(tmp_path, "admin.pw")
    pw.chmod(0o644)
    args = tracking_server.build_parser().parse_args(server_args(
        tmp_path, "--auth", "--admin-password-file", str(pw)))
    backend = tracking_store.backend_store_uri(args.backend_store)
    env = tracking_auth.login_environment(
        backend, password_file=args.admin_password_file, admin=args.admin_username,
        auth_db=args.auth_db, default_permission=args.default_permission)
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD"] == password
    out = capsys.readouterr()
    assert f"warning: every user of this machine may read {pw}: chmod 600 it" in out.err
    assert password not in out.out + out.err


def test_the_admin_password_stays_out_of_the_command_and_the_output(tmp_path, capsys):
    pw, password = password_file(tmp_path, "admin.pw")
    assert tracking_server.main(server_args(tmp_path, "--auth", "--admin-password-file", str(pw),
                                            "--host", "0.0.0.0", "--print-command")) == 0
    out = capsys.readouterr()
    assert "--app-name basic-auth" in out.out
    assert password not in out.out + out.err
    assert "warning" not in out.err  # a login: no warning on a public interface


def test_a_public_interface_without_login_warns(tmp_path, capsys):
    assert tracking_server.main(server_args(tmp_path, "--host", "0.0.0.0",
                                            "--print-command")) == 0
    err = capsys.readouterr().err
    assert "warning: no login (--auth): anyone who reaches port 5000" in err
    assert tracking_server.main(server_args(tmp_path, "--print-command")) == 0  # loopback
    assert "warning" not in capsys.readouterr().err


def test_auth_settings_reach_mlflow_through_its_environment_only(tmp_path):
    backend = tracking_store.backend_store_uri(str(tmp_path / "m" / "mlflow.db"))
    auth_db = tracking_auth.auth_database_uri(backend)
    assert auth_db == f"sqlite:///{tmp_path / 'm' / 'basic_auth.db'}"
    postgres = "postgresql://mlflow@db:5432/mlflow"
    assert tracking_auth.auth_database_uri(postgres) == postgres
    assert tracking_auth.auth_database_uri(postgres, str(tmp_path / "u.db")) == \
        f"sqlite:///{tmp_path / 'u.db'}"
    text = tracking_auth.auth_config_text(auth_db, "root", "READ")
    assert "default_permission = READ" in text and "admin_username = root" in text
    config = tracking_auth.write_auth_config(text)
    assert config.read_text() == text and config.parent.stat().st_mode & 0o077 == 0
    password = secrets.token_hex(12)
    env = tracking_auth.auth_environment(config, "root", password, environ={})
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD"] == password
    assert env["MLFLOW_AUTH_CONFIG_PATH"] == str(config)
    # The forms' key: the same for every replica started with the same file, not the password.
    again = tracking_auth.auth_environment(config, "root", password, environ={})
    other = tracking_auth.auth_environment(config, "root", password + "x", environ={})
    key = env["MLFLOW_FLASK_SERVER_SECRET_KEY"]
    assert key == again["MLFLOW_FLASK_SERVER_SECRET_KEY"] != other["MLFLOW_FLASK_SERVER_SECRET_KEY"]
    assert password not in key
    kept = tracking_auth.auth_environment(
        config, "root", password, environ={"MLFLOW_FLASK_SERVER_SECRET_KEY": "set"})
    assert kept["MLFLOW_FLASK_SERVER_SECRET_KEY"] == "set"


def test_the_admin_password_follows_the_file(tmp_path):
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    auth_db = f"sqlite:///{tmp_path / 'basic_auth.db'}"
    first, second = secrets.token_hex(12), secrets.token_hex(12)
    assert tracking_auth.sync_admin_password(auth_db, "admin", first) == "new"
    store = SqlAlchemyStore()
    store.init_db(auth_db)
    store.create_user("admin", first, is_admin=True)  # as the server does on its first start
    assert tracking_auth.sync_admin_password(auth_db, "admin", first) == "kept"
    assert tracking_auth.sync_admin_password(auth_db, "admin", second) == "changed"
    assert store.authenticate_user("admin", second)
    assert not store.authenticate_user("admin", first)
    store.engine.dispose()


def test_create_user_bad_input_is_one_line_and_exit_code_2(tmp_path, capsys):
    import socket

    pw, _ = password_file(tmp_path, "user.pw")
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        server = f"http://127.0.0.1:{closed.getsockname()[1]}"  # nothing listens there
    for files, message in (((tmp_path / "none.pw", pw), f"error: password file "
                                                        f"{tmp_path / 'none.pw'} does not exist"),
                           ((pw, pw), f"error: tracking server {server} did not answer")):
        code = tracking_server.main(["create-user", "--server", server, "--username", "bob",
                                     "--password-file", str(files[0]),
                                     "--admin-password-file", str(files[1])])
        assert code == 2
        [line] = capsys.readouterr().err.strip().splitlines()
        assert line.startswith(message), line


def test_an_unusable_user_store_stops_the_server_with_a_message(tmp_path, capsys):
    pw, _ = password_file(tmp_path, "admin.pw")
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    code = tracking_server.main(server_args(
        tmp_path, "--auth", "--admin-password-file", str(pw),
        "--auth-db", f"sqlite:///{blocker}/basic_auth.db"))
    assert code == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: cannot open the user store sqlite:///{blocker}/")


# -- a real server ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    """A `--auth` tracking server, its admin's password file, and a user `alice` created with
    `create-user` (the command's own checks are asserted in a test below)."""
    root = tmp_path_factory.mktemp("auth-server")
    admin_file, admin_password = password_file(root, "admin.pw")
    process, uri = start_mlflow_server(root, extra_args=(
        "--auth", "--admin-password-file", str(admin_file)))
    try:
        tracking_server.wait_until_healthy(uri, 240, process)
        alice_file, alice_password = password_file(root, "alice.pw")
        created = create_user(uri, "alice", alice_file, admin_file)
        assert created.returncode == 0, created.stderr
        yield {"uri": uri, "root": root, "admin": ("admin", admin_password),
               "admin_file": admin_file, "alice": ("alice", alice_password),
               "alice_file": alice_file, "create_output": created.stdout}
    finally:
        kill_tree(process, grace_s=10)
    log = (root / "mlflow-server.log").read_text()
    assert admin_password not in log and alice_password not in log


def create_user(uri: str, username: str, password_path: Path, admin_path: Path,
                *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hpo.tracking_server", "create-user", "--server", uri,
         "--username", username, "--password-file", str(password_path),
         "--admin-password-file", str(admin_path), *extra],
        cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_unauthenticated_requests_are_answered_401(auth_server):
    uri = auth_server["uri"]
    assert requests.get(uri + "/health", timeout=30).status_code == 200  # probes need no login
    assert requests.get(uri + SEARCH, timeout=30).status_code == 401
    assert requests.get(uri + SEARCH, auth=("admin", "x" * 12), timeout=30).status_code == 401
    assert requests.get(uri + SEARCH, auth=auth_server["admin"], timeout=30).status_code == 200
    assert requests.get(uri + SEARCH, auth=auth_server["alice"], timeout=30).status_code == 200


@pytest.mark.slow
def test_create_user_command(auth_server, tmp_path):
    uri = auth_server["uri"]
    assert f"created user 'alice' on {uri}" in auth_server["create_output"]
    again = create_user(uri, "alice", auth_server["alice_file"], auth_server["admin_file"])
    assert again.returncode == 2
    assert again.stderr.strip() == (f"error: user 'alice' exists on {uri}: pass "
                                    "--update-password to set its password")
    wrong_admin, _ = password_file(tmp_path, "wrong.pw")
    refused = create_user(uri, "bob", auth_server["alice_file"], wrong_admin)
    assert refused.returncode == 2 and "refused the login of 'admin' (401)" in refused.stderr
    assert "Traceback" not in again.stderr + refused.stderr
    # --update-password: a new user is created, an existing one gets the file's password.
    bob_file, first = password_file(tmp_path, "bob.pw")
    created = create_user(uri, "bob", bob_file, auth_server["admin_file"], "--update-password")
    assert created.returncode == 0 and "created user 'bob'" in created.stdout
    _, second = password_file(tmp_path, "bob.pw")
    updated = create_user(uri, "bob", bob_file, auth_server["admin_file"], "--update-password")
    assert updated.returncode == 0, updated.stderr
    assert requests.get(uri + SEARCH, auth=("bob", second), timeout=30).status_code == 200
    assert requests.get(uri + SEARCH, auth=("bob", first), timeout=30).status_code == 401


def small_space(folder: Path) -> Path:
    raw = yaml.safe_load((ROOT / "search_spaces" / "ave.yaml").read_text())
    raw["fixed"] = {"embedding_size": 16, "batch_size": 256}
    path = folder / "ave.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def search_args(folder: Path, uri: str, data_dir: Path) -> list[str]:
    return ["--space", str(small_space(folder)), "--dataset", TINY, "--data-dir", str(data_dir),
            "--output-dir", str(folder / "outputs"), "--mlflow-uri", uri, "--num-samples", "2",
            "--max-epochs", "2", "--grace-period", "2", "--max-concurrent", "2"]


def login(monkeypatch, username: str | None, password: str | None) -> None:
    for name, value in (("MLFLOW_TRACKING_USERNAME", username),
                        ("MLFLOW_TRACKING_PASSWORD", password)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)


def as_admin(monkeypatch, server: dict) -> tuple[MlflowClient, list]:
    """A client logged in as the server's admin (until the test ends), and every run."""
    login(monkeypatch, *server["admin"])
    client = MlflowClient(tracking_uri=server["uri"])
    ids = [e.experiment_id for e in client.search_experiments()]
    return client, client.search_runs(ids) if ids else []


@pytest.mark.slow
def test_a_wrong_or_missing_login_stops_the_search_before_any_trial(
        auth_server, tmp_path, tiny_data_dir, monkeypatch, capsys):
    uri = auth_server["uri"]
    _, before = as_admin(monkeypatch, auth_server)
    cases = [(("alice", "not-her-password"),
              f"error: MLflow tracking server {uri} refused the login of user 'alice' (401 "
              "Unauthorized)"),
             ((None, None), f"error: MLflow tracking server {uri} needs a login (401 "
                            "Unauthorized): set MLFLOW_TRACKING_USERNAME and "
                            "MLFLOW_TRACKING_PASSWORD")]
    for (username, password), message in cases:
        login(monkeypatch, username, password)
        with pytest.raises(TrackingUnavailableError):
            check_tracking(uri)
        assert launch.main(search_args(tmp_path, uri, tiny_data_dir)) == 2
        out = capsys.readouterr()
        [line] = out.err.strip().splitlines()
        assert line.startswith(message), line
        assert "trial 0" not in out.out  # no trial started
    _, after = as_admin(monkeypatch, auth_server)
    assert len(after) == len(before)  # nothing was logged


@pytest.mark.slow
def test_a_search_with_the_right_login_logs_every_run(
        auth_server, tmp_path, tiny_data_dir, ray_local, monkeypatch):
    uri = auth_server["uri"]
    login(monkeypatch, *auth_server["alice"])
    assert launch.main(search_args(tmp_path, uri, tiny_data_dir)) == 0
    client, _ = as_admin(monkeypatch, auth_server)  # read back as the admin
    experiment = client.get_experiment_by_name(f"{TINY}/ave")
    runs = client.search_runs([experiment.experiment_id])
    [parent] = [r for r in runs if PARENT_TAG not in r.data.tags]
    trials = [r for r in runs if r.data.tags.get(PARENT_TAG) == parent.info.run_id]
    assert parent.info.status == "FINISHED"
    assert sorted(r.info.run_name for r in trials) == ["ave trial 0", "ave trial 1"]
    for trial in trials:
        assert trial.info.status == "FINISHED"
        epochs = int(trial.data.tags["epochs_trained"])
        history = client.get_metric_history(trial.info.run_id, "valid_mrr_20")
        assert [m.step for m in history] == list(range(1, epochs + 1))
    # Alice may tag the experiment (the default permission, EDIT): the UI's view was saved.
    assert any(key.startswith("mlflow.sharedViewState.") for key in experiment.tags)
