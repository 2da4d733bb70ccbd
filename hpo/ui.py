"""Open the MLflow UI on a project's runs, ready for comparison: `python -m hpo.ui`.

    python -m hpo.ui                                   # outputs/mlflow.db, on 127.0.0.1:5000
    python -m hpo.ui --output-dir /data/outputs --port 5001
    python -m hpo.ui --mlflow-uri http://mlflow-host:5000   # a running tracking server

starts the MLflow UI on the store a search writes (``--output-dir``'s ``mlflow.db``, or
``--mlflow-uri`` / ``MLFLOW_TRACKING_URI``: a server is not started again, only linked to) and
prints the links of the latest search and of the latest test stage, each opening a saved view
of that run's children: the search's trials with their hyperparameters and
``best_valid_*`` (charts: parallel coordinates, learning curves), the test stage's seed runs
grouped by variant and arm with their test metrics (a group's row and chart bar: the mean over
its seeds; its seeds listed under it, the spread), and the test stage's report.

Why links. MLflow 3.17's UI has two views, GenAI (traces, evaluations, an assistant) and model
training (runs table, charts), and chooses between them per browser, not per experiment: the
switch at the top of its sidebar ("GenAI" / "Model training"), kept in the browser's
localStorage (``mlflow.workflowType``; GenAI until switched), which a page's URL overrides with
``?workflowType=machine_learning``. The experiment tag ``mlflow.experimentKind`` is no longer
read for that. So every link printed here carries ``workflowType=machine_learning``, and in a
browser that never switched, clicking "Model training" once makes every experiment open on its
runs table.

Views. The MLflow UI keeps a "saved view" (columns, filter, sort, grouping, charts) as an
experiment tag ``mlflow.sharedViewState.<id>``, listed under "Views" and opened by a link with
``viewStateShareKey=<id>``. One view is saved per search and per test stage (``ensure_views``,
also called by ``launch.py`` when a search or test stage ends), named after the run.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

VIEW_TAG_PREFIX = "mlflow.sharedViewState."  # the MLflow UI's saved views (experiment tags)
VIEW_URL_KEY = "viewStateShareKey"  # the URL parameter that opens one
# The URL parameter that opens MLflow 3's UI on its model-training view (runs, charts).
WORKFLOW = "workflowType=machine_learning"
PARENT_TAG = "mlflow.parentRunId"
DEFAULT_PORT = 5000
START_TIMEOUT_S = 180.0  # the MLflow server imports for a while on a busy machine
TEST_METRICS = ("test_recall_20", "test_mrr_20", "test_ndcg_20")
REPORT_ARTIFACT = "results.md"  # the test stage's report (verdict.report), rendered by the UI
# Parent runs: a search's carries `schedule`, a test stage's `output_dir` (hpo.search,
# hpo.seed_runs); their children carry neither.
PARENT_FILTERS = {"search": "tags.stage = 'search' and tags.schedule LIKE '%'",
                  "test": "tags.stage = 'test' and tags.output_dir LIKE '%'"}
LATEST_PER_EXPERIMENT = 20  # parents per experiment given a view when none is named


class UIError(RuntimeError):
    """Bad input to ``python -m hpo.ui``: reported as one line, exit code 2."""


@dataclass(frozen=True)
class StageRun:
    """The parent run of a search or of a test stage, and the view of its children."""

    kind: str  # "search" or "test"
    experiment_id: str
    experiment_name: str
    run_id: str
    run_name: str
    start_time: int  # ms

    @property
    def view_id(self) -> str:
        """The saved view's id: one per parent run, so saving it again replaces it."""
        return f"core-hpo-{self.run_id[:16]}"

    def artifact_url(self, base: str, path: str) -> str:
        """The UI's link to one of this run's artifacts (Markdown and images are rendered).

        Args:
            base: the UI's address.
            path: the artifact's path in the run.

        Returns:
            The link.
        """
        return (f"{base.rstrip('/')}/#/experiments/{self.experiment_id}/runs/{self.run_id}/"
                f"artifacts/{path}?{WORKFLOW}")

    def url(self, base: str, charts: bool = False) -> str:
        """The UI's link to this run's view, on the model-training side.

        Args:
            base: the UI's address (``http://127.0.0.1:5000``).
            charts: open the view on its charts rather than its table.

        Returns:
            The link.
        """
        mode = "&compareRunsMode=CHART" if charts else ""
        return (f"{base.rstrip('/')}/#/experiments/{self.experiment_id}/runs?"
                f"{VIEW_URL_KEY}={self.view_id}&{WORKFLOW}{mode}")


def column(kind: str, name: str) -> str:
    """A runs-table column key as the MLflow UI writes it (``metrics.`test_mrr_20```).

    Args:
        kind: ``attributes``, ``params``, ``metrics`` or ``tags``.
        name: the attribute, param, metric or tag.

    Returns:
        The key.
    """
    return f"{kind}.`{name}`"


def _section(uuid: str, name: str, columns: int = 3, height: int = 360) -> dict[str, Any]:
    return {"uuid": uuid, "name": name, "display": True, "isReordered": False,
            "deleted": False, "isGenerated": False, "columns": columns, "cardHeight": height}


def _chart(uuid: str, section: str, kind: str, **fields) -> dict[str, Any]:
    return {"uuid": uuid, "type": kind, "runsCountToCompare": 100, "metricSectionId": section,
            "deleted": False, "isGenerated": False, **fields}


def _line(uuid: str, section: str, metric: str) -> dict[str, Any]:
    return _chart(uuid, section, "LINE", displayName=metric, metricKey=metric,
                  selectedMetricKeys=[metric], lineSmoothness=0, xAxisScaleType="linear",
                  scaleType="linear", range={}, xAxisKey="step", selectedXAxisMetricKey="",
                  yAxisKey="metric", yAxisExpressions=[], ignoreOutliers=False,
                  useGlobalXaxisKey=True, useGlobalLineSmoothing=True)


def _state(search_filter: str, order_by: str, columns: list[str], charts: list[dict],
           sections: list[dict], group_by: list[str] | None) -> dict[str, Any]:
    """A saved view's state: the runs page's search facets and UI state (MLflow 3.17)."""
    return {
        "searchFilter": search_filter,
        "orderByKey": order_by,
        "orderByAsc": False,
        "startTime": "ALL",
        "lifecycleFilter": "Active",
        "datasetsFilter": [],
        "modelVersionFilter": "All Runs",
        "selectedColumns": columns,
        "columnOrder": [],
        "columnWidths": {},
        "runsHiddenMode": "SHOW_ALL",  # charts show every child, not the first 10
        "compareRunCharts": charts,
        "compareRunSections": sections,
        "viewMaximized": False,
        "runListHidden": False,
        "isAccordionReordered": True,  # our section first, MLflow's generated ones after it
        "useGroupedValuesInCharts": True,
        "hideEmptyCharts": True,
        "groupBy": {"aggregateFunction": "average",
                    "groupByKeys": [{"mode": "tag", "groupByData": key} for key in group_by]}
        if group_by else None,
        "groupsExpanded": {},
        "globalLineChartConfig": {"xAxisKey": "step", "lineSmoothness": 0,
                                  "selectedXAxisMetricKey": ""},
    }


def search_view_state(parent_run_id: str, parameters: list[str], metric: str) -> dict[str, Any]:
    """The view of a search's trials: best first, their hyperparameters and ``metric`` (the
    score selection reads); charts: parallel coordinates of the hyperparameters against
    ``metric``, and the per-epoch validation and loss curves.

    Args:
        parent_run_id: the search's parent run.
        parameters: the searched hyperparameters.
        metric: the search's metric at each trial's best epoch (``best_valid_mrr_20``).

    Returns:
        The state to save (``save_view``).
    """
    per_epoch = metric.removeprefix("best_")
    columns = [column("metrics", metric), *(column("params", p) for p in parameters),
               column("tags", "status"), column("tags", "epochs_trained")]
    charts = [
        _chart("core-hpo-parallel", "core-hpo-trials", "PARALLEL",
               selectedParams=list(parameters), selectedMetrics=[metric], showAllRuns=True,
               displayName=f"hyperparameters vs {metric}"),
        _line("core-hpo-curve", "core-hpo-curves", per_epoch),
        _line("core-hpo-loss", "core-hpo-curves", "train_loss"),
    ]
    sections = [_section("core-hpo-trials", f"Trials: hyperparameters vs {metric}", columns=1,
                         height=440),
                _section("core-hpo-curves", "Learning curves", columns=2)]
    return _state(f"tags.`{PARENT_TAG}` = '{parent_run_id}'", column("metrics", metric),
                  columns, charts, sections, group_by=None)


def test_view_state(parent_run_id: str, metrics: tuple[str, ...] = TEST_METRICS
                    ) -> dict[str, Any]:
    """The view of a test stage's seed runs, grouped by variant and arm (a group's row: the
    mean over its seeds); charts: each test metric per group, and the validation curves.

    Args:
        parent_run_id: the test stage's parent run.
        metrics: the test metrics shown.

    Returns:
        The state to save (``save_view``).
    """
    columns = [*(column("metrics", m) for m in metrics),
               column("tags", "seed"), column("tags", "epochs_trained")]
    charts = [_chart(f"core-hpo-{m}", "core-hpo-variants", "BAR", displayName=m, metricKey=m)
              for m in metrics]
    charts.append(_line("core-hpo-curve", "core-hpo-curves", "valid_mrr_20"))
    sections = [_section("core-hpo-variants", "Variants: test metrics, mean over seeds",
                         columns=len(metrics)),
                _section("core-hpo-curves", "Learning curves", columns=2)]
    return _state(f"tags.`{PARENT_TAG}` = '{parent_run_id}'", column("metrics", metrics[0]),
                  columns, charts, sections, group_by=["variant", "arm"])


def view_tag(name: str, state: dict[str, Any], now_ms: int | None = None) -> str:
    """A saved view's tag value as the MLflow UI writes it: a JSON envelope whose state is
    compressed (``deflate;`` + base64 of zlib's deflate).

    Args:
        name: the view's name, listed under "Views".
        state: the view's state (``search_view_state``, ``test_view_state``).
        now_ms: its creation time (default: now).

    Returns:
        The tag's value.
    """
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    packed = base64.b64encode(zlib.compress(json.dumps(state).encode())).decode()
    return json.dumps({"name": name, "createdAt": now_ms, "updatedAt": now_ms,
                       "state": f"deflate;{packed}"})


def read_view_state(value: str) -> dict[str, Any]:
    """The state of a saved view's tag value (``view_tag``'s inverse; plain JSON accepted).

    Args:
        value: the tag's value.

    Returns:
        The state.
    """
    state = json.loads(value)["state"]
    if state.startswith("deflate;"):
        state = zlib.decompress(base64.b64decode(state.removeprefix("deflate;"))).decode()
    return json.loads(state)


def stage_runs(client, kind: str, experiment_ids: list[str] | None = None,
               max_results: int = 1) -> list[StageRun]:
    """The latest parent runs of searches or test stages, newest first.

    Args:
        client: an ``MlflowClient``.
        kind: ``search`` or ``test``.
        experiment_ids: where to look (default: every active experiment).
        max_results: how many.

    Returns:
        The runs.
    """
    experiments = {e.experiment_id: e.name for e in client.search_experiments()}
    ids = [i for i in (experiment_ids or experiments) if i in experiments]
    if not ids:
        return []
    runs = client.search_runs(ids, PARENT_FILTERS[kind], order_by=["attributes.start_time DESC"],
                              max_results=max_results)
    return [StageRun(kind, r.info.experiment_id, experiments[r.info.experiment_id],
                     r.info.run_id, r.info.run_name or r.info.run_id, r.info.start_time or 0)
            for r in runs]


def _searched(client, run: StageRun) -> tuple[list[str], str]:
    """A search's hyperparameters and metric: its parent run's tags, or, for a search logged
    before they existed, the params its trials vary and its ``budget.metric``."""
    from hpo.search import METRIC_TAG, SEARCHED_TAG

    parent = client.get_run(run.run_id)
    metric = parent.data.tags.get(METRIC_TAG) or \
        f"best_{parent.data.params.get('budget.metric', 'valid_mrr_20')}"
    if parent.data.tags.get(SEARCHED_TAG):
        return parent.data.tags[SEARCHED_TAG].split(","), metric
    trials = client.search_runs([run.experiment_id], f"tags.`{PARENT_TAG}` = '{run.run_id}'",
                                max_results=1000)
    values: dict[str, set[str]] = {}
    for trial in trials:
        for key, value in trial.data.params.items():
            values.setdefault(key, set()).add(value)
    return sorted(k for k, v in values.items() if len(v) > 1 and k != "seed"), metric


def save_view(client, run: StageRun) -> None:
    """Saves (or replaces) the view of ``run``'s children in its experiment.

    Args:
        client: an ``MlflowClient`` that may tag the experiment.
        run: a search's or test stage's parent run.
    """
    if run.kind == "search":
        parameters, metric = _searched(client, run)
        state = search_view_state(run.run_id, parameters, metric)
        name = f"{run.run_name}: trials"
    else:
        state = test_view_state(run.run_id)
        name = f"{run.run_name}: variants"
    client.set_experiment_tag(run.experiment_id, VIEW_TAG_PREFIX + run.view_id,
                              view_tag(name, state))


def ensure_views(client, experiment_ids: list[str] | None = None,
                 latest: int = LATEST_PER_EXPERIMENT) -> list[StageRun]:
    """Saves the view of every recent search and test stage that has none yet.

    Args:
        client: an ``MlflowClient``.
        experiment_ids: the experiments (default: every active one).
        latest: how many of the newest parent runs of each kind are looked at, per experiment.

    Returns:
        The runs whose view was saved now.
    """
    experiments = {e.experiment_id: e for e in client.search_experiments()}
    saved = []
    for experiment_id in experiment_ids or list(experiments):
        experiment = experiments.get(experiment_id)
        if experiment is None:
            continue
        for kind in PARENT_FILTERS:
            for run in stage_runs(client, kind, [experiment_id], max_results=latest):
                if VIEW_TAG_PREFIX + run.view_id not in experiment.tags:
                    save_view(client, run)
                    saved.append(run)
    return saved


def save_views_quietly(tracking_uri: str, experiment_names: list[str]) -> None:
    """``ensure_views`` for these experiments, after a search or test stage: a store that
    refuses (a server where this user may not tag experiments) is a warning, not a failure.

    Args:
        tracking_uri: the MLflow store.
        experiment_names: the experiments.
    """
    from mlflow.tracking import MlflowClient

    try:
        client = MlflowClient(tracking_uri=tracking_uri)
        ids = [e.experiment_id for name in experiment_names
               if (e := client.get_experiment_by_name(name)) is not None]
        if ids:
            ensure_views(client, ids)
    except Exception as exc:  # views are a convenience; the runs are logged
        log.warning("could not save the MLflow UI's views in %s: %s", tracking_uri, exc)


def port_is_free(host: str, port: int) -> bool:
    """Whether a server could listen on ``host:port`` now.

    Args:
        host: the interface.
        port: the port.

    Returns:
        True when nothing listens there.
    """
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def link_lines(client, base: str, searches: int = 5) -> list[str]:
    """The lines that name the latest searches (the latest of each space, newest first) and
    the latest test stage, with their views' links and the test stage's report.

    Args:
        client: an ``MlflowClient``.
        base: the UI's address.
        searches: how many spaces' searches are listed at most.

    Returns:
        The lines to print.
    """
    latest: dict[str, StageRun] = {}
    for run in stage_runs(client, "search", max_results=200):
        latest.setdefault(run.experiment_id, run)
    lines = ["latest search of each space (trials: hyperparameters vs the search metric):"
             if latest else "searches: none in this store"]
    for run in list(latest.values())[:searches]:
        lines.append(f"  {run.experiment_name} {run.run_name}: {run.url(base, charts=True)}")
    tests = stage_runs(client, "test")
    if tests:
        run = tests[0]
        lines.append(f"latest test stage, {run.experiment_name} {run.run_name} (variants' test "
                     "metrics, seeds grouped):")
        lines.append(f"  {run.url(base)}")
        lines.append(f"  report: {run.artifact_url(base, REPORT_ARTIFACT)}")
    else:
        lines.append("test stages: none in this store")
    lines.append(f"all experiments: {base.rstrip('/')}/#/experiments?{WORKFLOW}")
    return lines


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m hpo.ui``.

    Returns:
        The parser.
    """
    parser = argparse.ArgumentParser(
        prog="python -m hpo.ui", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", type=Path, default=Path("outputs"),
                        help="the searches' --output-dir: its mlflow.db is opened "
                             "(default: outputs)")
    parser.add_argument("--mlflow-uri", default=None,
                        help="a tracking URI instead (default: $MLFLOW_TRACKING_URI, else "
                             "<output-dir>/mlflow.db); for http(s):// no server is started, "
                             "the links point at it")
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface the UI listens on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help=f"port of the UI (default: {DEFAULT_PORT})")
    parser.add_argument("--links-only", action="store_true",
                        help="save the views and print the links for a UI already running on "
                             "--host/--port; start nothing")
    return parser


def _store(args: argparse.Namespace) -> str:
    """The tracking URI, checked: a SQLite file that exists, or a server that answers."""
    from hpo.tracking import TrackingUnavailableError, check_tracking, resolve_tracking_uri

    uri = resolve_tracking_uri(args.mlflow_uri, args.output_dir)
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///"))
        if not path.is_file():
            raise UIError(f"no MLflow store at {path}: run a search first (python launch.py "
                          "--space dahn.yaml), or give its --output-dir or --mlflow-uri")
    try:
        check_tracking(uri)
    except TrackingUnavailableError as exc:
        raise UIError(str(exc)) from exc
    return uri


def _start_server(uri: str, args: argparse.Namespace, log_path: Path) -> subprocess.Popen:
    """``mlflow server`` on the store, on ``--host:--port``, in a child process whose output
    goes to ``log_path``."""
    from hpo.tracking_server import server_command, server_environment

    command = server_command(uri, str(log_path.parent / "mlartifacts"), args.host, args.port,
                             workers=1)
    env = {**os.environ, **server_environment(uri)}
    with open(log_path, "ab") as log_file:
        # Its own process group: the server's workers are stopped with it (``_stop``).
        return subprocess.Popen(command, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _stop(process: subprocess.Popen, grace_s: float = 10.0) -> None:
    """Stops the server and the worker processes it started (its process group)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=grace_s)
            return
        except subprocess.TimeoutExpired:
            continue


def main(argv: list[str] | None = None) -> int:
    """Save the views, start the UI (unless it runs elsewhere), print the links, serve.

    Args:
        argv: Command-line arguments (default: ``sys.argv[1:]``).

    Returns:
        2 for bad input (a missing store, a taken port, a server that refuses), 0 when the UI
        was stopped (Ctrl-C) or with ``--links-only``; the server's exit code if it failed.
    """
    args = build_parser().parse_args(argv)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    remote = (args.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI", "")).startswith(
        ("http://", "https://"))
    if not remote and not args.links_only and not port_is_free(args.host, args.port):
        print(f"error: port {args.port} on {args.host} is taken (another MLflow UI?): pass "
              "--port, or --links-only to link to the UI running there", file=sys.stderr)
        return 2
    try:
        uri = _store(args)
    except UIError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    try:
        ensure_views(client)
    except Exception as exc:  # e.g. a server where this user may not tag experiments
        print(f"warning: could not save the runs' views ({exc}); the links open the runs "
              "tables without them", file=sys.stderr)
    host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    base = uri if remote else f"http://{host}:{args.port}"
    if remote or args.links_only:
        print("\n".join(link_lines(client, base)))
        return 0
    # Beside a SQLite store (artifacts of experiments made in the UI too), else --output-dir.
    folder = Path(uri.removeprefix("sqlite:///")).parent if uri.startswith("sqlite:///") \
        else args.output_dir
    folder.mkdir(parents=True, exist_ok=True)
    log_path = folder / "mlflow-ui.log"
    from hpo.tracking_server import loopback

    if not loopback(args.host):
        print(f"warning: the UI on {args.host} has no login: anyone who reaches port "
              f"{args.port} can read, rewrite or delete every run (for others, run "
              "python -m hpo.tracking_server --auth)", file=sys.stderr)
    print(f"starting the MLflow UI on {uri} (its log: {log_path}) ...", flush=True)
    # SIGTERM stops the server too (below), as Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    process = _start_server(uri, args, log_path)
    from hpo.tracking_server import wait_until_healthy

    try:
        wait_until_healthy(base, START_TIMEOUT_S, process)
        print(f"MLflow UI: {base} (Ctrl-C stops it)")
        print("\n".join(link_lines(client, base)))
        optuna_db = (args.output_dir / "optuna.db").resolve()
        if optuna_db.is_file():
            print(f"Optuna studies: optuna-dashboard sqlite:///{optuna_db}")
        sys.stdout.flush()
        return process.wait()
    except (TimeoutError, RuntimeError) as exc:
        print(f"error: {exc}; see {log_path}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    finally:
        _stop(process)


if __name__ == "__main__":
    sys.exit(main())
