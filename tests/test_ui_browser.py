"""The MLflow UI as a researcher uses it, in a real browser: a tiny search of two spaces and a
test stage with 2 seeds, `python -m hpo.ui` on their store, then Chromium (Debian's `chromium`,
driven by Playwright; no browser download) takes the steps of docs/mlflow.md ("Comparing
in the MLflow UI"): the test stage's link opens its seed runs grouped by variant with their test
metrics; two variants' runs are compared; the charts show each variant's test metrics; the
report opens rendered; the search's link opens its trials and the parallel-coordinates chart;
the history plot shows as an image; without a link, "Model training" once in the sidebar makes
an experiment open on its runs table and its saved view is in "Views". Then optuna-dashboard
opens the studies.

Screenshots go to the test's tmp folder (`screenshots/`), and also to $CORE_HPO_SCREENSHOT_DIR
when set (CI keeps them; docs/images/ holds `3-test-stage-charts.png`).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from local_cluster import free_port, kill_tree, wait_for
from mlflow.tracking import MlflowClient

import launch
from hpo.tracking import PARENT_TAG

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
# Chromium as root in a container: no sandbox, no GPU, nothing fetched in the background.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]
TINY = "tiny"
SEEDS = 2
PAGE_TIMEOUT_MS = 90_000  # the UI's pages on a loaded 2-core machine
UI_START_S = 300.0


def small_space(folder: Path, name: str) -> Path:
    raw = yaml.safe_load((ROOT / "search_spaces" / f"{name}.yaml").read_text())
    raw["fixed"] = {"embedding_size": 16, "batch_size": 256,
                    **({"inner_size": 32} if name != "ave" else {})}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def chromium():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent: apt-get install -y chromium (.ci/run does)")
    pytest.importorskip("playwright", reason="pip install -e '.[dev]' installs Playwright")
    return CHROMIUM


@pytest.fixture(scope="module")
def outputs(chromium, tmp_path_factory, tiny_data_dir, ray_local):
    """A finished search of ave and trm and a test stage over 2 seeds, as README runs them."""
    folder = tmp_path_factory.mktemp("ui-browser")
    out = folder / "outputs"
    spaces = [str(small_space(folder, name)) for name in ("ave", "trm")]
    assert launch.main(["--space", *spaces, "--stage", "all", "--dataset", TINY,
                        "--data-dir", str(tiny_data_dir), "--output-dir", str(out),
                        "--num-samples", "2", "--max-epochs", "2", "--grace-period", "2",
                        "--seeds", str(SEEDS), "--retrain-max-epochs", "2",
                        "--max-concurrent", "2"]) == 0
    return out


def parse_links(text: str) -> dict | None:
    """hpo.ui's printed links, once it printed them all."""
    if "all experiments: " not in text:
        return None
    lines = text.splitlines()
    base = re.search(r"^MLflow UI: (\S+)", text, re.M).group(1)
    searches = [re.search(r"(http\S+)", line).group(1) for line in lines
                if line.startswith(f"  {TINY}/") and "http" in line]
    after = lines.index(next(line for line in lines if line.startswith("latest test stage")))
    return {"base": base, "searches": searches, "test": lines[after + 1].strip(),
            "report": lines[after + 2].strip().removeprefix("report: ")}


@pytest.fixture(scope="module")
def ui(outputs, tmp_path_factory):
    """`python -m hpo.ui` on the store, as README starts it; its printed links."""
    log = tmp_path_factory.mktemp("ui-log") / "hpo-ui.log"
    with open(log, "w") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "hpo.ui", "--output-dir", str(outputs), "--port",
             str(free_port())], cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT,
            start_new_session=True)
    try:
        links = wait_for(lambda: parse_links(log.read_text()), UI_START_S, "hpo.ui's links",
                         process)
        yield links
    finally:
        kill_tree(process, grace_s=15)


@pytest.fixture(scope="module")
def context(chromium, tmp_path_factory):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=str(chromium),
            args=CHROMIUM_ARGS, headless=True, viewport={"width": 1600, "height": 1000})
        context.set_default_timeout(PAGE_TIMEOUT_MS)
        yield context
        context.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    """Saves a page's screenshot under the test's tmp folder (and $CORE_HPO_SCREENSHOT_DIR)."""
    folder = tmp_path_factory.mktemp("screenshots")
    keep = os.environ.get("CORE_HPO_SCREENSHOT_DIR")

    def shot(page, name: str) -> Path:
        path = folder / f"{name}.png"
        page.screenshot(path=str(path))
        assert path.stat().st_size > 10_000  # a rendered page, not a blank one
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, Path(keep) / path.name)
        return path

    return shot


def close_assistant(page) -> None:
    """Closes MLflow's assistant panel, which opens by itself on a browser's first visit."""
    close = page.locator("[data-component-id='mlflow.assistant.chat_panel.close']")
    if close.count() and close.first.is_visible():
        close.first.click()


def row_text(page, name: str) -> str:
    """The text of a runs-table row, found by its run's name: the table draws a row in parts
    (pinned columns, scrolled columns) that share its row index."""
    pinned = page.locator(".ag-row", has=page.get_by_role("link", name=name)).first
    index = pinned.get_attribute("row-index")
    return " ".join(page.locator(f".ag-row[row-index='{index}']").all_inner_texts())


def seed_runs(store: Path) -> dict[str, object]:
    """The test stage's seed runs in the store, by name."""
    client = MlflowClient(tracking_uri=f"sqlite:///{store / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(f"{TINY}/test")
    runs = client.search_runs([experiment.experiment_id], f"tags.`{PARENT_TAG}` LIKE '%'")
    return {run.info.run_name: run for run in runs}


def shown(locator) -> None:
    """Assert that ``locator`` is visible, waiting for it as long as a page may take to render
    (``is_visible()`` and ``count()`` look once: a chart drawn a moment after the text waited
    for would fail them on a loaded machine)."""
    from playwright.sync_api import expect

    expect(locator).to_be_visible(timeout=PAGE_TIMEOUT_MS)


def test_the_test_stage_link_opens_its_seed_runs_grouped_by_variant(ui, outputs, context,
                                                                    shots):
    runs = seed_runs(outputs)
    names = sorted(runs)
    assert names == [f"{v} full seed {s}" for v in ("ave", "trm") for s in range(1, SEEDS + 1)]
    page = context.new_page()
    page.goto(ui["test"])
    page.get_by_role("link", name="ave full seed 1").wait_for()
    close_assistant(page)
    assert "/runs" in page.url and "workflowType=machine_learning" in page.url
    for name in names:
        shown(page.get_by_role("link", name=name))
    headers = page.locator(".ag-header-row").all_inner_texts()
    for metric in ("test_recall_20", "test_mrr_20", "test_ndcg_20", "seed"):
        assert any(metric in row for row in headers), (metric, headers)
    # Each group's row: variant and arm; the seeds listed under it with their own scores.
    for variant in ("ave", "trm"):
        shown(page.get_by_text(re.compile(rf"variant: {variant}, arm: full")).first)
    value = runs["trm full seed 2"].data.metrics["test_mrr_20"]
    assert str(value)[:6] in row_text(page, "trm full seed 2")
    shots(page, "1-test-stage-runs-table")

    # Select one run of each variant and compare them.
    for name in ("ave full seed 1", "trm full seed 1"):
        page.locator(".ag-row", has=page.get_by_role("link", name=name)) \
            .locator("input.ag-checkbox-input").first.check()
    page.get_by_role("button", name="Compare").click()
    page.get_by_text("Comparing 2 Runs").wait_for()
    assert "compare-runs" in page.url
    for name in ("ave full seed 1", "trm full seed 1"):
        shown(page.get_by_text(name, exact=True).first)
    assert {runs[n].info.run_id for n in ("ave full seed 1", "trm full seed 1")} <= \
        set(re.findall(r"[0-9a-f]{32}", page.url.replace("%22", " ")))
    shots(page, "2-compare-two-variants")
    page.close()


def test_the_test_stage_charts_show_each_variants_test_metrics(ui, context, shots):
    page = context.new_page()
    page.goto(ui["test"] + "&compareRunsMode=CHART")
    page.get_by_text("Variants: test metrics, mean over seeds").wait_for()
    close_assistant(page)
    for metric in ("test_recall_20", "test_mrr_20", "test_ndcg_20"):
        shown(page.get_by_text(metric, exact=True).first)
    # One bar per group, named in the chart's legend.
    for variant in ("ave", "trm"):
        shown(page.get_by_text(f"variant: {variant}, arm: full").first)
    shots(page, "3-test-stage-charts")
    page.close()


def test_the_report_opens_rendered(ui, context, shots):
    page = context.new_page()
    page.goto(ui["report"])
    heading = page.get_by_role("heading", name="Test results (selection-then-test)")
    heading.wait_for()
    close_assistant(page)
    # Rendered, not shown as text: its sections are headings, no Markdown syntax is left.
    shown(page.get_by_role("heading", name=re.compile("Paired t-tests vs the baseline")).first)
    assert "| Dataset |" not in page.locator("body").inner_text()
    shots(page, "4-test-stage-report")
    page.close()


def test_the_search_link_opens_its_trials_and_parallel_coordinates(ui, outputs, context,
                                                                   shots):
    assert len(ui["searches"]) == 2  # the latest search of each space, newest first
    page = context.new_page()
    page.goto(ui["searches"][0])  # trm's: its search started last
    page.get_by_text("Parallel Coordinates").wait_for()
    close_assistant(page)
    for name in ("trm trial 0", "trm trial 1"):
        shown(page.get_by_role("link", name=name))
    shown(page.locator(".js-plotly-plot, svg.main-svg").first)
    shots(page, "5-search-parallel-coordinates")
    page.locator("label", has=page.locator("input[name=runs-view-mode][value=TABLE]")).click()
    page.locator(".ag-header-row").first.wait_for()
    headers = " ".join(page.locator(".ag-header-row").all_inner_texts())
    for column in ("best_valid_mrr_20", "lr", "temperature", "status"):
        assert column in headers, (column, headers)
    shots(page, "6-search-trials-table")

    # The search's history plot, an artifact of its parent run, shows as an image.
    client = MlflowClient(tracking_uri=f"sqlite:///{outputs / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(f"{TINY}/trm")
    [parent] = client.search_runs([experiment.experiment_id], "tags.schedule LIKE '%'")
    base = ui["base"]
    page.goto(f"{base}/#/experiments/{experiment.experiment_id}/runs/{parent.info.run_id}/"
              "artifacts/optimization_history.png?workflowType=machine_learning")
    image = page.locator("img[src*='optimization_history.png'], img[src^='blob:']").first
    image.wait_for()
    wait_for(lambda: image.evaluate("img => img.naturalWidth") > 100, 60,
             "the history plot to load")
    shots(page, "7-search-history-plot")
    page.close()


def test_model_training_once_then_experiments_open_on_their_runs_and_views(ui, context,
                                                                          shots):
    page = context.new_page()
    page.goto(f"{ui['base']}/#/experiments")  # no link's parameter: the browser's own choice
    page.get_by_role("link", name=f"{TINY}/test").first.wait_for()
    page.get_by_text("Model training", exact=True).first.click()
    page.get_by_role("link", name="Model registry").first.wait_for()  # the switched sidebar
    close_assistant(page)  # it would take the click below
    page.get_by_role("link", name=f"{TINY}/test").first.click()
    page.get_by_role("button", name="Views").wait_for()
    wait_for(lambda: re.search(r"/experiments/\d+/runs", page.url), 60,
             f"the experiment's runs table (at {page.url})")
    assert "/overview" not in page.url and "/traces" not in page.url
    page.get_by_role("button", name="Views").click()
    page.get_by_text(re.compile(r"test-\d{8}-\d{6}: variants")).first.click()
    page.get_by_role("link", name="trm full seed 1").wait_for()
    shown(page.get_by_text(re.compile("variant: trm, arm: full")).first)
    shots(page, "8-model-training-switch-and-views")
    page.close()


def test_optuna_dashboard_opens_the_studies(outputs, context, shots):
    pytest.importorskip("optuna_dashboard", reason="pip install -e '.[dev]' installs it")
    import optuna

    storage = f"sqlite:///{outputs / 'optuna.db'}"
    studies = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    assert len(studies) == 2
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-c", "from optuna_dashboard._cli import main; main()", storage,
         "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}/dashboard"

        def answers() -> bool:
            try:
                with urllib.request.urlopen(url, timeout=5):
                    return True
            except (urllib.error.URLError, OSError):
                return False

        wait_for(answers, 120, "optuna-dashboard", process)
        page = context.new_page()
        page.goto(url)
        for study in studies:
            page.get_by_text(study).first.wait_for()
        shots(page, "9-optuna-dashboard")
        page.close()
    finally:
        kill_tree(process, grace_s=5)
