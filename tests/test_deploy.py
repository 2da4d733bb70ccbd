"""The deployment files in deploy/ and the README's cluster commands agree with the CLI and each
other: commands parse with launch.py's and the tracking server's parsers, trials fit the GPU
nodes, paths trials write are on volumes every pod mounts, ports and names match, and the tracking
server's PostgreSQL is the one deployed beside it (address, database, user, password, connection
budget)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import ray
import yaml
from mlflow.server.security_utils import is_allowed_host_header
from sqlalchemy.engine import make_url

import launch
from hpo import tracking_auth, tracking_server
from hpo.cluster import Resources, validate_resources
from hpo.space import load_space

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
RAY_MINOR = ".".join(ray.__version__.split(".")[:2])
POSTGRES_IMAGE = re.compile(r"postgres:(\d+)")
# PostgreSQL keeps superuser_reserved_connections (3) of max_connections (default 100) for itself.
POSTGRES_RESERVED = 3


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


def postgres_store(server):
    """The server's backend store as a PostgreSQL URL, checked: no password in the command line
    (it would show in `ps` and logs), several workers."""
    url = make_url(server.backend_store)
    assert url.get_backend_name() == "postgresql", server.backend_store
    assert url.password is None, "the password belongs in PGPASSWORD or ~/.pgpass"
    assert url.username and url.database
    assert (server.workers or tracking_server.DEFAULT_WORKERS) > 1
    return url


def postgres_flags(args: list[str]) -> dict[str, str]:
    """`-c name=value` settings of a postgres command line."""
    return dict(args[i + 1].split("=", 1) for i, word in enumerate(args) if word == "-c")


def connection_budget(servers: int, workers: int, env: dict[str, str]) -> int:
    """The most database connections `servers` tracking servers of `workers` workers open: per
    worker, its tracking store's pool in full (pool + overflow, what hpo.tracking_server sets
    unless the environment does) and the model-registry store's idle pool."""
    pool = {**tracking_server.POOL_ENV, **env}
    size = int(pool["MLFLOW_SQLALCHEMYSTORE_POOL_SIZE"])
    overflow = int(pool["MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW"])
    return servers * workers * (size + overflow + size)


def container_env(container: dict) -> dict[str, object]:
    """name -> value, or ("secret", name, key) for a value taken from a Secret."""
    found = {}
    for item in container.get("env", []):
        if "value" in item:
            found[item["name"]] = item["value"]
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            found[item["name"]] = ("secret", ref["name"], ref["key"])
    return found


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
            for c in pod_spec["containers"] for m in c.get("volumeMounts", [])
            if m["name"] in claims}


def on_mount(path: str, mounts: dict[str, str]) -> str | None:
    return next((claim for mount, claim in mounts.items()
                 if path == mount or path.startswith(mount.rstrip("/") + "/")), None)


@pytest.fixture(scope="module")
def images() -> dict[str, set[str]]:
    """Every image reference in deploy/: file -> images."""
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
    # The tracking server's PostgreSQL driver: pyproject's postgres extra, installed.
    assert re.search(r"^postgres = \[.*psycopg", pyproject, re.M)
    [install] = re.findall(r"^RUN pip install .*$", text, re.M)
    assert re.search(r"""["']?\.\[(?:\w+,)*postgres(?:,\w+)*\]["']?""", install), install


def test_every_deploy_file_runs_the_same_image(images):
    assert set(images) == {"ray-cluster.yaml", "rayjob.yaml", "mlflow.yaml"}
    everything = set().union(*images.values())
    databases = {image for image in everything if POSTGRES_IMAGE.fullmatch(image)}
    [image] = everything - databases  # the project's, everywhere
    assert image.endswith(f":{ray.__version__}-gpu") or f":{RAY_MINOR}" in image, image
    # The one other image: PostgreSQL, the same major version on the Ray head's host.
    [database] = databases
    head = (DEPLOY / "ray-cluster.yaml").read_text()
    assert re.findall(r"\bpostgres:\d+\b", head) == [database]


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

    [server_command] = [c for c in config["head_start_ray_commands"]
                        if "hpo.tracking_server --backend-store" in c]
    server = parse_server(server_command.split(">")[0])
    assert server.host == "0.0.0.0"
    check_login(config, server, head)

    # PostgreSQL in a container on the head's host, started before Ray's container: the server
    # reaches it on the head's loopback, with the password from the file mounted as ~/.pgpass.
    store = postgres_store(server)
    assert store.host == "127.0.0.1" and server.wait_for_database > 0
    init = types[config["head_node_type"]]["initialization_commands"]
    [run] = [shlex.split(c.split("||")[-1]) for c in init if "docker run" in c]
    image = next(word for word in run if POSTGRES_IMAGE.fullmatch(word))
    settings = postgres_flags(run[run.index(image) + 1:])
    assert settings["listen_addresses"] == "127.0.0.1" and "--network" in run
    assert int(settings["port"]) == store.port
    env = dict(run[i + 1].split("=", 1) for i, word in enumerate(run) if word == "-e")
    assert (env["POSTGRES_USER"], env["POSTGRES_DB"]) == (store.username, store.database)
    assert "--restart" in run and any(v.endswith(":/var/lib/postgresql/data")
                                      for i, v in enumerate(run) if run[i - 1] == "-v")
    [pgpass] = [c for c in init if ".pgpass" in c and "echo" in c]
    line = re.search(r'echo "([^"]+)"', pgpass).group(1)
    assert line.split(":")[:4] == [store.host, str(store.port), store.database, store.username]
    written = re.search(r"> ~/([^\s)]+)", pgpass).group(1)  # under the ssh user's home
    assert "umask 077" in pgpass  # libpq ignores a .pgpass others can read
    home = f"/home/{config['auth']['ssh_user']}"
    head_options = " ".join(config["docker"]["head_run_options"])
    assert f"{home}/{written}:/home/ray/.pgpass:ro" in head_options
    assert env["POSTGRES_PASSWORD"] == f"$(cut -d: -f5 ~/{written})"
    budget = connection_budget(1, server.workers or tracking_server.DEFAULT_WORKERS, {})
    assert budget <= int(settings["max_connections"]) - POSTGRES_RESERVED

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


def check_login(config: dict, server, head_start: str) -> None:
    """The head's tracking server needs a login: the admin's password file is made on the
    host, mounted into Ray's container, and named by the server; the user the drivers log in as
    is created with the same files, and `ray start` hands its login to the drivers."""
    assert server.auth and server.admin_password_file
    init = " ".join(config["available_node_types"][config["head_node_type"]]
                    ["initialization_commands"])
    head_options = " ".join(config["docker"]["head_run_options"])
    mounts = dict(re.findall(r"--volume /home/ubuntu/(\S+):(\S+):ro", head_options))
    made = re.search(r"for who in ([\w ]+); do test -s ~/(\S+)\$who", init)
    assert made and "umask 077" in init  # private files, made once
    files = {f"{made.group(2)}{who}": mounts.get(f"{made.group(2)}{who}")
             for who in made.group(1).split()}
    assert str(server.admin_password_file) in files.values()
    [create] = [c for c in config["head_start_ray_commands"] if " create-user " in c]
    words = shlex.split(create[create.index("python -m hpo.tracking_server"):])
    user = tracking_auth.build_create_user_parser().parse_args(words[4:])
    assert user.admin_password_file == server.admin_password_file
    assert str(user.password_file) in files.values() and user.update_password
    assert f"MLFLOW_TRACKING_USERNAME={user.username}" in head_start
    assert f'MLFLOW_TRACKING_PASSWORD="$(cat ~/{Path(user.password_file).name})"' in head_start


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
    store_mounts = shared_mounts(deployment["spec"]["template"]["spec"])
    if "://" not in server.backend_store or server.backend_store.startswith("sqlite"):
        # One writer for a SQLite file: a single pod, never two during a rollout.
        assert deployment["spec"]["replicas"] == 1
        assert deployment["spec"]["strategy"]["type"] == "Recreate"
        assert on_mount(server.backend_store, store_mounts)
    else:
        check_postgres_deployment(manifests, deployment, container, server)
    # Artifacts: on a volume every replica mounts (ReadWriteMany once there are several).
    artifacts_claim = on_mount(server.artifacts_destination, store_mounts)
    assert artifacts_claim or "://" in server.artifacts_destination
    if artifacts_claim and deployment["spec"]["replicas"] > 1:
        claim = manifests[("PersistentVolumeClaim", artifacts_claim)]
        assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    check_k8s_login(head["template"]["spec"]["containers"][0], deployment, container, server)
    # The Host header the driver sends (the Service name) passes MLflow's host check.
    allowed = server.allowed_hosts.split(",")
    assert is_allowed_host_header(allowed, f"{host}:{port}")
    assert is_allowed_host_header(allowed, f"{host}.default.svc.cluster.local:{port}")
    assert not is_allowed_host_header(allowed, f"evil.example:{port}")


def check_k8s_login(head: dict, deployment: dict, container: dict, server) -> None:
    """The tracking server needs a login, its admin's password a file from a mounted Secret;
    the head (where the job's driver runs) logs in with a user's Secret, which the server's pod
    mounts too, for `create-user` (the command at the top of mlflow.yaml)."""
    assert server.auth and server.admin_password_file
    pod = deployment["spec"]["template"]["spec"]
    secrets = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    mounted = {m["mountPath"]: secrets[m["name"]] for m in container["volumeMounts"]
               if m["name"] in secrets}
    admin_secret = mounted[str(Path(server.admin_password_file).parent)]
    assert Path(server.admin_password_file).name == "password"
    env = container_env(head)
    user_secret = env["MLFLOW_TRACKING_USERNAME"][1]
    assert env["MLFLOW_TRACKING_USERNAME"] == ("secret", user_secret, "username")
    assert env["MLFLOW_TRACKING_PASSWORD"] == ("secret", user_secret, "password")
    assert user_secret in mounted.values() and user_secret != admin_secret
    header = " ".join(line.lstrip("#").rstrip("\\ ") for line in
                      (DEPLOY / "mlflow.yaml").read_text().splitlines() if line.startswith("#"))
    create = re.search(r"python -m hpo\.tracking_server create-user (.*?--update-password)",
                       " ".join(header.split()))
    user = tracking_auth.build_create_user_parser().parse_args(shlex.split(create.group(1)))
    assert user.admin_password_file == server.admin_password_file
    assert mounted[str(Path(user.password_file).parent)] == user_secret
    for secret in (admin_secret, user_secret):
        assert f"kubectl create secret generic {secret} " in " ".join(header.split())


def check_postgres_deployment(manifests: dict, deployment: dict, container: dict, server) -> None:
    """The tracking server's PostgreSQL URL names the Service, database and user of the
    StatefulSet in mlflow.yaml; the password is the same Secret key on both sides; the connection
    pools of every replica's workers fit in max_connections."""
    store = postgres_store(server)
    service = manifests[("Service", store.host)]
    [port] = service["spec"]["ports"]
    assert port["port"] == store.port
    [database] = [d for d in manifests.values() if d["kind"] == "StatefulSet"
                  and d["spec"]["template"]["metadata"]["labels"] == service["spec"]["selector"]]
    assert database["spec"]["serviceName"] == store.host and database["spec"]["replicas"] == 1
    [postgres] = database["spec"]["template"]["spec"]["containers"]
    assert POSTGRES_IMAGE.fullmatch(postgres["image"])
    assert {p["containerPort"] for p in postgres["ports"]} == {port["targetPort"]}
    env = container_env(postgres)
    assert (env["POSTGRES_USER"], env["POSTGRES_DB"]) == (store.username, store.database)
    password = env["POSTGRES_PASSWORD"]
    assert password[0] == "secret"
    server_env = container_env(container)
    assert server_env["PGPASSWORD"] == password  # libpq reads it; the URL has none
    assert server.wait_for_database > 0  # the database may start after the server's pod
    # The data directory on the StatefulSet's own volume, one per replica.
    [claim] = database["spec"]["volumeClaimTemplates"]
    [mount] = postgres["volumeMounts"]
    assert mount["name"] == claim["metadata"]["name"]
    assert env["PGDATA"].startswith(mount["mountPath"].rstrip("/") + "/")
    probe = postgres["readinessProbe"]["exec"]["command"]
    assert probe[0] == "pg_isready" and store.database in probe and store.username in probe
    # Connections: every replica's workers' pools.
    settings = postgres_flags(postgres.get("args", []))
    max_connections = int(settings.get("max_connections", 100))
    budget = connection_budget(deployment["spec"]["replicas"],
                               server.workers or tracking_server.DEFAULT_WORKERS,
                               {k: v for k, v in server_env.items() if isinstance(v, str)})
    assert budget <= max_connections - POSTGRES_RESERVED, (budget, max_connections)


def readme_commands(heading: str) -> list[str]:
    """The commands in the bash blocks of the cluster page's section `heading` (docs/cluster.md,
    to the next `## `), with continuation lines joined."""
    readme = (ROOT / "docs" / "cluster.md").read_text()
    section = re.split(r"^## ", readme.split(f"\n{heading}\n", 1)[1], flags=re.M)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    return [line for block in blocks for line in block.replace("\\\n", " ").splitlines()]


def test_readme_cluster_commands_parse():
    commands = readme_commands("## Run on a Ray cluster")
    launches = [c[c.index("python launch.py"):] for c in commands if "python launch.py" in c]
    servers = [c for c in commands if "hpo.tracking_server" in c and " create-user " not in c]
    users = [c for c in commands if "hpo.tracking_server create-user " in c]
    assert launches and servers and users
    for command in users:  # the user the searches log in as, created with the server's admin
        words = shlex.split(command)
        user = tracking_auth.build_create_user_parser().parse_args(
            words[words.index("create-user") + 1:])
        assert any(user.admin_password_file == parse_server(c).admin_password_file
                   for c in servers)
    for command in launches:
        args = parse_launch(command)
        assert args.storage_path and args.max_failures >= 1
    for command in servers:
        server = parse_server(command)
        assert server.host == "0.0.0.0" and server.auth  # reachable by the nodes: a login
    assert any("ray job submit" in c and "--working-dir ." in c for c in commands)
    assert any("MLFLOW_TRACKING_PASSWORD" in c for c in commands)
    assert any("RAY_AUTH_MODE=token" in c for c in commands)


def test_readme_postgres_commands_parse():
    commands = readme_commands("## Tracking on PostgreSQL")
    installs = [c for c in commands if c.startswith("pip install")]
    servers = [c.split("#")[0] for c in commands if "hpo.tracking_server" in c]
    assert installs and servers
    pyproject = (ROOT / "pyproject.toml").read_text()
    for command in installs:
        extras = re.search(r"\.\[([\w,]+)\]", command).group(1).split(",")
        assert "postgres" in extras
        assert all(re.search(rf"^{extra} = \[", pyproject, re.M) for extra in extras), extras
    for command in servers:
        server = parse_server(command)
        postgres_store(server)  # a PostgreSQL URL, no password in it, several workers
        assert server.host == "0.0.0.0"
