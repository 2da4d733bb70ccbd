"""`python -m hpo.ui` and what it saves: the MLflow UI's views of a search's trials and of a test
stage's variants (experiment tags in the UI's own format), links that open the model-training
side on them, run names that say what a run is, and one-line errors for bad input. On a real
SQLite store whose runs are shaped as a search and a test stage log them; the browser test is
tests/test_ui_browser.py.
"""

from __future__ import annotations

import base64
import json
import shutil
import socket
import zlib
from types import SimpleNamespace

import pytest
from mlflow.tracking import MlflowClient

from hpo import ui
from hpo.outcome import META_KEY
from hpo.search import METRIC_TAG, SEARCHED_TAG, trial_run_name
from hpo.seed_runs import seed_run_name
from hpo.tracking import PARENT_TAG, MLflowTrialLogger

PARAMETERS = ["lr", "temperature"]
METRIC = "best_valid_mrr_20"


def add_search(client, experiment_id: str, name: str, tagged: bool = True) -> str:
    """A search's parent run and two trials, tagged as hpo.search tags them."""
    tags = {"stage": "search", "schedule": "2 trials x <= 2 epochs"}
    if tagged:
        tags.update({SEARCHED_TAG: ",".join(PARAMETERS), METRIC_TAG: METRIC})
    parent = client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
    client.log_param(parent, "budget.metric", "valid_mrr_20")
    for number, lr in enumerate(("0.001", "0.002")):
        trial = client.create_run(experiment_id, run_name=f"ave trial {number}",
                                  tags={"stage": "search", PARENT_TAG: parent}).info.run_id
        for key, value in {"lr": lr, "temperature": "0.07", "seed": "0"}.items():
            client.log_param(trial, key, value)
        client.log_metric(trial, METRIC, 0.1 + number / 100)
        client.set_terminated(trial)
    client.set_terminated(parent)
    return parent


def add_test_stage(client, experiment_id: str) -> str:
    parent = client.create_run(experiment_id, run_name="test-20260101-000000",
                               tags={"stage": "test", "output_dir": "/x"}).info.run_id
    for variant in ("ave", "trm"):
        for seed in (1, 2):
            run = client.create_run(
                experiment_id, run_name=f"{variant} full seed {seed}",
                tags={"stage": "test", PARENT_TAG: parent, "variant": variant, "arm": "full",
                      "seed": str(seed)}).info.run_id
            client.log_metric(run, "test_mrr_20", 0.08)
    return parent


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A store with a search and a test stage, made once (a new store takes seconds)."""
    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    client = MlflowClient(tracking_uri=f"sqlite:///{path}")
    search_experiment = client.create_experiment("tiny/ave")
    test_experiment = client.create_experiment("tiny/test")
    search = add_search(client, search_experiment, "ave-20260101-000000")
    test = add_test_stage(client, test_experiment)
    return path, dict(search=search, test=test, search_experiment=search_experiment,
                      test_experiment=test_experiment)


@pytest.fixture
def store(tmp_path, template):
    """A copy of the template store, for one test."""
    path, ids = template
    shutil.copyfile(path, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return SimpleNamespace(client=MlflowClient(tracking_uri=uri), uri=uri, path=tmp_path, **ids)


def saved_views(client, experiment_id: str) -> dict[str, dict]:
    tags = client.get_experiment(experiment_id).tags
    return {key.removeprefix(ui.VIEW_TAG_PREFIX): json.loads(value)
            for key, value in tags.items() if key.startswith(ui.VIEW_TAG_PREFIX)}


def test_view_tag_is_the_uis_envelope_with_a_deflated_state():
    state = ui.test_view_state("abc")
    envelope = json.loads(ui.view_tag("a view", state, now_ms=123))
    assert envelope["name"] == "a view" and envelope["createdAt"] == envelope["updatedAt"] == 123
    packed = envelope["state"]
    assert packed.startswith("deflate;")
    assert json.loads(zlib.decompress(base64.b64decode(packed[len("deflate;"):]))) == state
    assert ui.read_view_state(ui.view_tag("a view", state)) == state


def test_search_view_lists_the_trials_with_their_hyperparameters_best_first():
    state = ui.search_view_state("p1", PARAMETERS, METRIC)
    assert state["searchFilter"] == f"tags.`{PARENT_TAG}` = 'p1'"
    assert (state["orderByKey"], state["orderByAsc"]) == (f"metrics.`{METRIC}`", False)
    assert state["selectedColumns"][:3] == [f"metrics.`{METRIC}`", "params.`lr`",
                                            "params.`temperature`"]
    [parallel] = [c for c in state["compareRunCharts"] if c["type"] == "PARALLEL"]
    assert parallel["selectedParams"] == PARAMETERS and parallel["selectedMetrics"] == [METRIC]
    lines = {c["metricKey"] for c in state["compareRunCharts"] if c["type"] == "LINE"}
    assert lines == {"valid_mrr_20", "train_loss"}
    sections = {s["uuid"] for s in state["compareRunSections"]}
    assert {c["metricSectionId"] for c in state["compareRunCharts"]} <= sections
    assert state["groupBy"] is None and state["runsHiddenMode"] == "SHOW_ALL"


def test_test_view_groups_the_seeds_by_variant_and_arm():
    state = ui.test_view_state("p2")
    assert state["searchFilter"] == f"tags.`{PARENT_TAG}` = 'p2'"
    keys = [(k["mode"], k["groupByData"]) for k in state["groupBy"]["groupByKeys"]]
    assert keys == [("tag", "variant"), ("tag", "arm")]
    assert state["groupBy"]["aggregateFunction"] == "average"
    metrics = [f"metrics.`{m}`" for m in ui.TEST_METRICS]
    assert state["selectedColumns"][:len(metrics)] == metrics
    bars = [c["metricKey"] for c in state["compareRunCharts"] if c["type"] == "BAR"]
    assert bars == list(ui.TEST_METRICS)


def test_ensure_views_saves_one_view_per_search_and_test_stage_once(store):
    saved = ui.ensure_views(store.client)
    assert sorted((run.kind, run.run_id) for run in saved) == sorted(
        [("search", store.search), ("test", store.test)])
    search_views = saved_views(store.client, store.search_experiment)
    [(view_id, envelope)] = search_views.items()
    assert view_id == f"core-hpo-{store.search[:16]}"
    assert envelope["name"] == "ave-20260101-000000: trials"
    state = ui.read_view_state(json.dumps(envelope))
    assert state["searchFilter"] == f"tags.`{PARENT_TAG}` = '{store.search}'"
    assert state["compareRunCharts"][0]["selectedParams"] == PARAMETERS
    [envelope] = saved_views(store.client, store.test_experiment).values()
    assert envelope["name"] == "test-20260101-000000: variants"
    assert ui.ensure_views(store.client) == []  # nothing new: nothing saved again


def test_a_search_logged_before_its_tags_shows_the_params_its_trials_vary(store):
    old = add_search(store.client, store.search_experiment, "ave-20250101-000000", tagged=False)
    run = next(r for r in ui.stage_runs(store.client, "search", max_results=5)
               if r.run_id == old)
    ui.save_view(store.client, run)
    tags = store.client.get_experiment(store.search_experiment).tags
    state = ui.read_view_state(tags[ui.VIEW_TAG_PREFIX + run.view_id])
    # lr varies; temperature and seed do not (seed is never a hyperparameter of the view).
    assert state["compareRunCharts"][0]["selectedParams"] == ["lr"]
    assert state["orderByKey"] == f"metrics.`{METRIC}`"  # from its budget.metric param


def test_links_open_the_model_training_view_on_the_saved_views(store):
    ui.ensure_views(store.client)
    lines = ui.link_lines(store.client, "http://127.0.0.1:5000")
    text = "\n".join(lines)
    search_view = f"core-hpo-{store.search[:16]}"
    test_view = f"core-hpo-{store.test[:16]}"
    assert (f"http://127.0.0.1:5000/#/experiments/{store.search_experiment}/runs?"
            f"viewStateShareKey={search_view}&workflowType=machine_learning"
            "&compareRunsMode=CHART") in text
    assert (f"http://127.0.0.1:5000/#/experiments/{store.test_experiment}/runs?"
            f"viewStateShareKey={test_view}&workflowType=machine_learning") in text
    assert (f"report: http://127.0.0.1:5000/#/experiments/{store.test_experiment}/runs/"
            f"{store.test}/artifacts/results.md?workflowType=machine_learning") in text
    # Every view a link names exists in its experiment.
    assert search_view in saved_views(store.client, store.search_experiment)
    assert test_view in saved_views(store.client, store.test_experiment)


def test_links_only_prints_the_links_without_a_server(store, capsys):
    assert ui.main(["--mlflow-uri", store.uri, "--links-only", "--port", "5999"]) == 0
    out = capsys.readouterr().out
    assert "latest test stage, tiny/test test-20260101-000000" in out
    assert "http://127.0.0.1:5999/#/experiments?workflowType=machine_learning" in out


def test_bad_input_is_one_line_and_exit_code_2(tmp_path, store, capsys):
    missing = tmp_path / "nothing-here"
    assert ui.main(["--output-dir", str(missing)]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: no MLflow store at {missing.resolve() / 'mlflow.db'}: run a "
                           "search first")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert ui.main(["--mlflow-uri", store.uri, "--port", str(port)]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line == (f"error: port {port} on 127.0.0.1 is taken (another MLflow UI?): pass "
                    "--port, or --links-only to link to the UI running there")
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    assert ui.main(["--mlflow-uri", f"http://127.0.0.1:{port}"]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: MLflow tracking server http://127.0.0.1:{port} is "
                           "unreachable")


def test_run_names_say_the_variant_arm_and_seed():
    assert trial_run_name("dahn", {"lr": 0.001, META_KEY: {"number": 3}}) == "dahn trial 3"
    job = {"space": "da", "arm": "da_gating=false", "seed": 2}
    assert seed_run_name({"job": job}) == "da da_gating=false seed 2"
    assert seed_run_name({"job": {**job, "arm": "full"}}) == "da full seed 2"
    trial = SimpleNamespace(config={"job": job}, trial_id="abc_00001")
    named = MLflowTrialLogger("sqlite://", "1", "p", tags={}, name=seed_run_name)
    assert named.run_name(trial) == "da da_gating=false seed 2"
    # A callback restored from a search started before names existed keeps Tune's name.
    class TuneTrial(SimpleNamespace):
        def __str__(self):
            return "train_trial_abc"

    restored = MLflowTrialLogger("sqlite://", "1", "p", tags={})
    del restored.name
    assert restored.run_name(TuneTrial(config={})) == "train_trial_abc"
