"""The default console of a search: one line per trial event, a periodic status line."""

from __future__ import annotations

import io
import pickle
from types import SimpleNamespace

import pytest

from hpo.console import (
    ConsoleReporter,
    SeedRunReporter,
    estimate_left,
    format_duration,
    format_params,
)
from hpo.outcome import FINISHED_KEY, META_KEY

METRIC = "best_valid_mrr_20"


def trial(trial_id, number, status="RUNNING", last=None, error_file=None, **params):
    config = {"model": "trm", "epochs": 4, **params,
              META_KEY: {"number": number, "source": "TPE"}}
    return SimpleNamespace(trial_id=trial_id, config=config, last_result=last or {},
                           status=status, error_file=error_file)


def reporter(**kwargs):
    stream = io.StringIO()
    console = ConsoleReporter(METRIC, "max", num_samples=4, concurrent=2,
                              parameters=["lr", "n_layers"], stream=stream, **kwargs)
    return console, stream


def lines(stream):
    return [line.split("] ", 1)[1] for line in stream.getvalue().splitlines()]


def test_trial_events_one_line_each(tmp_path):
    console, stream = reporter(status_every_s=1e9)
    a = trial("a", 0, lr=0.00123456, n_layers=2, inner_size=64)
    b = trial("b", 1, lr=0.01, n_layers=1)
    console.on_trial_start(0, [a, b], a)
    console.on_trial_start(0, [a, b], b)
    console.on_trial_result(0, [a, b], a, {METRIC: 0.10, "epoch": 1})
    console.on_trial_result(0, [a, b], b, {METRIC: 0.05, "epoch": 1})  # not an improvement
    console.on_trial_result(0, [a, b], a, {METRIC: 0.12, "epoch": 2})  # the leader improves
    console.on_trial_result(0, [a, b], b, {METRIC: 0.13, "epoch": 2})  # takes the lead
    a.last_result = {METRIC: 0.12, "epoch": 2, FINISHED_KEY: 0}
    console.on_trial_complete(0, [a, b], a)
    error = tmp_path / "error.txt"
    error.write_text("Traceback (most recent call last):\n  ...\nValueError: boom\n")
    b.last_result, b.error_file = {"epoch": 1}, str(error)
    console.on_trial_error(0, [a, b], b)
    assert lines(stream) == [
        "trial 0 started (TPE): lr=0.00123 n_layers=2",
        "trial 1 started (TPE): lr=0.01 n_layers=1",
        f"trial 0 epoch 1: {METRIC} 0.1000 (best so far)",
        f"trial 1 epoch 2: {METRIC} 0.1300 (best so far)",
        f"trial 0 stopped by ASHA at epoch 2: {METRIC} 0.1200",
        "trial 1 failed at epoch 1: ValueError: boom",
    ]


def test_completed_trial_and_status_line():
    console, stream = reporter(status_every_s=0.0)
    a = trial("a", 0, lr=0.1, n_layers=1)
    b = trial("b", 1, lr=0.1, n_layers=1)
    console.on_trial_start(0, [a, b], a)
    console.on_trial_start(0, [a, b], b)
    console.on_trial_result(0, [a, b], a, {METRIC: 0.2, "epoch": 3})
    a.last_result, a.status = {METRIC: 0.2, "epoch": 3, FINISHED_KEY: 1}, "TERMINATED"
    console.on_trial_complete(0, [a, b], a)
    console.on_step_end(0, [a, b])
    out = lines(stream)
    assert out[3] == f"trial 0 completed at epoch 3: {METRIC} 0.2000"
    status = out[4]
    assert status.startswith("status: 1 done (1 completed, 0 stopped, 0 failed), 1 running, "
                             "2 to start; best 0.2000 (trial 0); elapsed 0:00")
    assert "left" in status


def test_status_waits_for_a_quiet_interval():
    console, stream = reporter(status_every_s=1e9)
    console.on_step_end(0, [])
    assert stream.getvalue() == ""
    console.status_every_s = 0.0  # the interval has passed since the last line
    console.on_step_end(0, [])
    assert lines(stream)[0].startswith("status: 0 done")


def test_reporter_pickles_without_its_stream():
    console, _ = reporter()
    restored = pickle.loads(pickle.dumps(console))
    assert restored.metric == METRIC and restored._stream is None


def test_estimate_left():
    assert estimate_left(10.0, [], [], 4, 2) is None
    # Mean trial 60 s; the running one is 20 s in; 3 to start on 2 slots: 2 rounds.
    assert estimate_left(100.0, [60.0, 60.0], [20.0], 3, 2) == pytest.approx(40 + 120)


def test_formatting():
    assert format_duration(75) == "1:15"
    assert format_duration(3725) == "1:02:05"
    assert format_params({"lr": 0.000123456, "flag": True, "k": 8}) == "lr=0.000123 flag=True k=8"


def test_a_trials_device_warning_is_printed_once():
    console, stream = reporter(status_every_s=1e9)
    a = trial("a", 0, lr=0.1, n_layers=1)
    warning = "Ray assigned GPU 0 to this trial but torch sees no CUDA device: falling back"
    for epoch in (1, 2):
        console.on_trial_result(0, [a], a, {"device_warning": warning, "epoch": epoch})
    assert lines(stream) == [f"trial 0: {warning}"]


def seed_run(trial_id, space, seed, arm="full", status="RUNNING"):
    job = {"space": space, "variant": space, "arm": arm, "seed": seed}
    return SimpleNamespace(trial_id=trial_id, config={"job": job}, last_result={},
                           status=status, error_file=None)


def test_the_test_stage_prints_each_seed_run_and_its_test_scores(tmp_path):
    from hpo.test_stage import run_label

    stream = io.StringIO()
    console = SeedRunReporter(3, 2, run_label, [("test_recall_20", "R@20")],
                              status_every_s=1e9, stream=stream)
    a, b = seed_run("a", "trm", 1), seed_run("b", "da", 2, arm="use_gate=false")
    console.on_trial_start(0, [a, b], a)
    console.on_trial_start(0, [a, b], b)
    console.on_trial_result(0, [a, b], a, {"best_valid_mrr_20": 0.2, "epoch": 1})  # no line
    a.last_result = {"epoch": 4, "best_epoch": 3, "test_recall_20": 0.17125, FINISHED_KEY: 1}
    console.on_trial_complete(0, [a, b], a)
    error = tmp_path / "error.txt"
    error.write_text("Traceback (most recent call last):\nRuntimeError: out of memory\n")
    b.last_result, b.error_file = {"epoch": 2}, str(error)
    console.on_trial_error(0, [a, b], b)
    c = seed_run("c", "trm", 2)
    shown = lines(stream)
    assert shown[:3] == ["trm seed 1 started", "da [use_gate=false] seed 2 started",
                         shown[2]]
    assert shown[2].startswith("trm seed 1 done in ") and shown[2].endswith(
        ": 4 epochs, best 3; test R@20 17.12")
    assert shown[3] == "da [use_gate=false] seed 2 failed at epoch 2: RuntimeError: out of memory"
    assert console.status_line([c]).startswith(
        "status: 2 of 3 seed runs done (1 failed), 1 running, 0 to start; elapsed ")
