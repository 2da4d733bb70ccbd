"""The default console of a search: one line per trial event, a status line that backs off
(or is rewritten in place on a terminal)."""

from __future__ import annotations

import io
import pickle
import sys
from types import SimpleNamespace

import pytest

from hpo.console import (
    CLEAR_LINE,
    ConsoleReporter,
    LiveLine,
    SeedRunProgress,
    SeedRunReporter,
    StatusSchedule,
    estimate_left,
    estimate_search_left,
    estimate_seed_runs_left,
    format_duration,
    format_params,
    next_rung,
)
from hpo.outcome import FINISHED_KEY, META_KEY
from hpo.space import Budget

METRIC = "best_valid_mrr_20"
NEVER = (1e9,)  # status intervals: no status line
HOURS_4 = 4 * 3600


class Clock:
    """A fake clock: seconds that pass only when a test moves them on."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class Terminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self):
        return True


def screen(raw):
    """The rows a terminal shows after ``raw``: a carriage return goes to column 0, an erase
    (``ESC [K``) clears to the end of the row, a newline starts the next row."""
    rows, col = [""], 0
    i = 0
    while i < len(raw):
        if raw.startswith("\x1b[K", i):
            rows[-1] = rows[-1][:col]
            i += 3
            continue
        char = raw[i]
        if char == "\r":
            col = 0
        elif char == "\n":
            rows.append("")
            col = 0
        else:
            rows[-1] = rows[-1][:col] + char + rows[-1][col + 1:]
            col += 1
        i += 1
    return rows


def trial(trial_id, number, status="RUNNING", last=None, error_file=None, **params):
    config = {"model": "trm", "epochs": 4, **params,
              META_KEY: {"number": number, "source": "TPE"}}
    return SimpleNamespace(trial_id=trial_id, config=config, last_result=last or {},
                           status=status, error_file=error_file)


def reporter(stream=None, **kwargs):
    stream = io.StringIO() if stream is None else stream
    console = ConsoleReporter(METRIC, "max", num_samples=4, concurrent=2,
                              parameters=["lr", "n_layers"], stream=stream, **kwargs)
    return console, stream


def lines(stream):
    return [line.split("] ", 1)[1] for line in stream.getvalue().splitlines()]


def test_trial_events_one_line_each(tmp_path):
    console, stream = reporter(status_intervals_s=NEVER)
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
    console, stream = reporter(status_intervals_s=(0.0,))
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
    clock = Clock()
    console, stream = reporter(clock=clock)
    clock.now = 29.0
    console.on_step_end(0, [])
    assert stream.getvalue() == ""
    clock.now = 30.0  # the first interval has passed since the start
    console.on_step_end(0, [])
    assert stream.getvalue().splitlines() == [
        "[0:30] status: 0 done (0 completed, 0 stopped, 0 failed), 0 running, 4 to start; "
        "no result yet; elapsed 0:30"]


def test_reporter_pickles_without_its_stream():
    console, _ = reporter()
    restored = pickle.loads(pickle.dumps(console))
    assert restored.metric == METRIC and restored._stream is None
    assert restored._live_line.stream is sys.stdout and restored._schedule.count == 0


def test_a_reporter_pickled_before_the_budget_existed_still_reports():
    """Tuner.restore brings back the callbacks an experiment started with, pickled by an
    earlier version of the code: attributes added since must have defaults."""
    console, _ = reporter()
    state = console.__getstate__()
    for added in ("budget", "expected_epochs"):
        state.pop(added)
    restored = ConsoleReporter.__new__(ConsoleReporter)
    restored.__setstate__(state)
    assert restored.budget is None
    assert restored.status_line([]).startswith("status: 0 done")


def test_estimate_left():
    assert estimate_left(10.0, [], running_ages=[], to_start=4, concurrent=2) is None
    # Mean trial 60 s; the running one is 20 s in; 3 to start on 2 slots: 2 rounds.
    assert estimate_left(100.0, [60.0, 60.0], running_ages=[20.0], to_start=3,
                         concurrent=2) == pytest.approx(40 + 120)


def neural(group, epochs=0, best=0, seconds=0.0, age=0.0):
    return SeedRunProgress(group, epochs=epochs, best_epoch=best, timed_epochs=epochs,
                           timed_s=seconds, age_s=age, max_epochs=30, patience=5)


def test_the_seed_run_estimate_counts_each_arms_epochs():
    # Nothing timed yet: nothing to go by.
    assert estimate_seed_runs_left(ended=[], running=[neural("trm/full", age=50.0)],
                                   waiting=[neural("trm/full")], concurrent=2) is None
    # A kNN fit ended in 10 s; a trm run is at epoch 3 (its best), 100 s an epoch, 20 s into
    # the 4th. The mean of ended durations would promise ~10 s; by epochs the trm run has at
    # least 5 more (patience) and the waiting trm run at least 6 (1 + patience) on the free slot.
    knn = SeedRunProgress("sknn/full", epochs=1, timed_epochs=1, timed_s=10.0)
    running = neural("trm/full", 3, 3, 300.0, age=320.0)
    left = estimate_seed_runs_left(ended=[knn], running=[running],
                                   waiting=[neural("trm/full")], concurrent=2)
    assert left == pytest.approx(6 * 100.0)
    assert estimate_left(320.0, [10.0], running_ages=[320.0], to_start=1,
                         concurrent=2) < left / 10
    # Once trm runs ended (12 epochs on average), that is its length; one slot: the waiting
    # runs follow the running one, each at the arm's 100 s an epoch.
    ended = [neural("trm/full", 10, 5, 1000.0), neural("trm/full", 14, 9, 1400.0), knn]
    left = estimate_seed_runs_left(ended=ended, running=[running],
                                   waiting=[neural("trm/full"), neural("trm/full")],
                                   concurrent=1)
    assert left == pytest.approx((12 - 3) * 100.0 - 20.0 + 2 * 12 * 100.0)
    # A run past its arm's mean still runs its patience out; none runs past its cap.
    late = neural("trm/full", 20, 19, 2000.0, age=2000.0)
    assert estimate_seed_runs_left(ended=ended, running=[late], waiting=[],
                                   concurrent=1) == pytest.approx(4 * 100.0)
    capped = neural("trm/full", 29, 29, 2900.0, age=2900.0)
    assert estimate_seed_runs_left(ended=ended, running=[capped], waiting=[],
                                   concurrent=1) == pytest.approx(100.0)
    # Another arm's waiting run, untimed and with no run of its own ended, takes every timed
    # run's seconds per epoch (2,410 s over 25 epochs) and every ended run's mean length,
    # (10 + 14 + 1) / 3 epochs, above its certain 6.
    other = estimate_seed_runs_left(ended=ended, running=[], waiting=[neural("da/full")],
                                    concurrent=1)
    assert other == pytest.approx(25 / 3 * (2410.0 / 25))


def test_the_test_stage_estimates_from_its_runs_epochs():
    """The reporter reads each run's arm, cap and patience from its Tune config and its epochs
    from its results; a kNN fit's seconds do not set a neural run's time."""
    from hpo.seed_runs import run_label

    clock = Clock()
    console = SeedRunReporter(3, 1, run_label, stream=io.StringIO(), clock=clock)

    def job_trial(trial_id, space, model, status="PENDING"):
        job = {"space": space, "variant": space, "arm": "full", "seed": 1,
               "config": {"model": model, "epochs": 30, "patience": 5}}
        return SimpleNamespace(trial_id=trial_id, config={"job": job}, last_result={},
                               status=status, error_file=None)

    knn, a, b = job_trial("k", "sknn", "sknn"), job_trial("a", "trm", "trm"), job_trial(
        "b", "trm", "trm")
    trials = [knn, a, b]
    knn.status = "RUNNING"
    console.on_trial_start(0, trials, knn)
    clock.now = 10.0
    knn.last_result = {"epoch": 1, "best_epoch": 1, FINISHED_KEY: 1}
    console.on_trial_result(0, trials, knn, knn.last_result)
    knn.status = "TERMINATED"
    console.on_trial_complete(0, trials, knn)
    a.status = "RUNNING"
    console.on_trial_start(0, trials, a)
    clock.now = 110.0
    a.last_result = {"epoch": 1, "best_epoch": 1}
    console.on_trial_result(0, trials, a, a.last_result)
    # a: 5 more epochs at least at 100 s; b then 6 epochs at trm's 100 s (not the kNN's 10 s).
    assert console._progress(trials)[3] == pytest.approx(5 * 100.0 + 6 * 100.0)
    assert console.status_line(trials).endswith("about 18:20 left")
    # a at epoch 4, its best: 5 epochs at least are left; Tune has not created b yet, which is
    # a run of the last known run's arm not started (6 epochs), not a copy of a's progress
    for epoch in (2, 3, 4):
        clock.now = 10.0 + 100.0 * epoch
        a.last_result = {"epoch": epoch, "best_epoch": epoch}
        console.on_trial_result(0, trials, a, a.last_result)
    assert console._progress([knn, a])[3] == pytest.approx(5 * 100.0 + 6 * 100.0)


def test_next_rung_follows_the_asha_ladder():
    budget = Budget(num_samples=8, max_epochs=8, grace_period=1, reduction_factor=3)
    assert [next_rung(budget, e) for e in range(8)] == [1, 3, 3, 8, 8, 8, 8, 8]


def test_the_search_estimate_counts_trial_epochs_under_asha():
    budget = Budget(num_samples=8, max_epochs=8, grace_period=1, reduction_factor=3)
    # Before any epoch: nothing to go by.
    assert estimate_search_left(budget=budget, expected_epochs=30.0, epochs_done={},
                                running=["a"], to_start=7, epoch_s=None, concurrent=2) is None
    # 10 of 30 expected trial-epochs run, 60 s each, 2 at once: 20 x 60 / 2.
    done = {"a": 8, "b": 1, "c": 1}
    assert estimate_search_left(budget=budget, expected_epochs=30.0, epochs_done=done,
                                running=["c"], to_start=3, epoch_s=60.0,
                                concurrent=2) == pytest.approx(20 * 60 / 2)
    # More run than expected: what is certain is left (3 grace epochs, c up to rung 3).
    done = {"a": 8, "b": 8, "c": 1}
    assert estimate_search_left(budget=budget, expected_epochs=10.0, epochs_done=done,
                                running=["c"], to_start=3, epoch_s=60.0,
                                concurrent=2) == pytest.approx((3 + 2) * 60 / 2)


def test_an_early_asha_search_is_not_promised_its_stopped_trials_length():
    """The first trials to end are the ones ASHA stops at the grace period: the mean of their
    durations (``estimate_left``) promises far less than the search's expected epochs."""
    budget = Budget(num_samples=8, max_epochs=8, grace_period=1, reduction_factor=3)
    now = [0.0]
    console = ConsoleReporter(METRIC, "max", num_samples=8, concurrent=2, parameters=["lr"],
                              stream=io.StringIO(), clock=lambda: now[0], budget=budget)
    a, b = trial("a", 0, lr=0.1), trial("b", 1, lr=0.2)
    console.on_trial_start(0, [a, b], a)
    console.on_trial_start(0, [a, b], b)
    now[0] = 60.0
    console.on_trial_result(0, [a, b], a, {METRIC: 0.2, "epoch": 1})
    console.on_trial_result(0, [a, b], b, {METRIC: 0.1, "epoch": 1})
    b.status, b.last_result = "TERMINATED", {METRIC: 0.1, "epoch": 1}
    console.on_trial_complete(0, [a, b], b)
    running, to_start, _, left = console._progress([a, b])
    assert (running, to_start) == (1, 6)
    expected = console.expected_epochs
    assert expected > 8  # ASHA promotes some trials past the grace period
    assert left == pytest.approx((expected - 2) * 60.0 / 2)
    naive = estimate_left(60.0, [60.0], running_ages=[60.0], to_start=6, concurrent=2)
    assert left > 2 * naive


def test_formatting():
    assert format_duration(75) == "1:15"
    assert format_duration(3725) == "1:02:05"
    assert format_params({"lr": 0.000123456, "flag": True, "k": 8}) == "lr=0.000123 flag=True k=8"


def test_a_trials_device_warning_is_printed_once():
    console, stream = reporter(status_intervals_s=NEVER)
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
    from hpo.seed_runs import run_label

    stream = io.StringIO()
    console = SeedRunReporter(3, 2, run_label, [("test_recall_20", "R@20")],
                              progress=("best_valid_mrr_20", "valid M@20"),
                              status_intervals_s=NEVER, stream=stream)
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
    # A running run's progress, once it reported an epoch (a seed run trains for hours).
    assert "trm seed 2" not in console.status_line([c])
    c.last_result = {"epoch": 13, "best_epoch": 9, "best_valid_mrr_20": 0.161171}
    assert console.status_line([c]).endswith("; trm seed 2 at epoch 13, best 9 (valid M@20 16.12)")
    # Restored with an experiment that code without the option saved (Tune pickles callbacks).
    del console.progress
    assert "trm seed 2" not in console.status_line([c])


# -- status lines that back off, and the live line on a terminal ---------------------------------


def test_the_status_schedule_backs_off_and_an_event_keeps_the_interval():
    clock = Clock()
    schedule = StatusSchedule(clock=clock, at_least_every_s=None)
    printed = []
    for second in range(3601):  # an hour with no event: poll every second
        clock.now = float(second)
        if schedule.due():
            schedule.printed()
            printed.append(second)
    # 30 s, 1, 2, 5 minutes, then every 10 minutes after the line before.
    assert printed == [30, 90, 210, 510, 1110, 1710, 2310, 2910, 3510]
    assert len(printed) == schedule.max_lines(3600)
    schedule.event(4000.0)  # an event restarts the quiet stretch but keeps the 10 minutes
    assert not schedule.due(4030.0) and not schedule.due(4599.0) and schedule.due(4600.0)
    schedule.start(5000.0)  # starting over goes back to 30 s
    assert not schedule.due(5029.0) and schedule.due(5030.0)


def test_a_busy_run_still_gets_a_status_line_every_30_minutes():
    schedule = StatusSchedule(clock=Clock())
    printed = []
    for second in range(0, 3 * 3600 + 1):
        if second % 20 == 10:  # an event every 20 s: never 30 s of quiet
            schedule.event(float(second))
        elif schedule.due(float(second)):
            schedule.printed(float(second))
            printed.append(second)
    assert printed == [1800, 3600, 5400, 7200, 9000, 10800]


def test_the_status_schedules_bound():
    schedule = StatusSchedule()
    assert schedule.max_lines(180) == 2  # a 3-minute demo: 0:30, 1:30
    assert schedule.max_lines(2 * 3600) == 15
    assert schedule.max_lines(HOURS_4) == 27
    assert StatusSchedule((30.0,)).max_lines(HOURS_4) == 480  # the fixed 30 s it replaces
    with pytest.raises(ValueError):
        StatusSchedule((0.0,)).max_lines(60)
    for bad in ((), (30.0, -1.0)):
        with pytest.raises(ValueError):
            StatusSchedule(bad)


def drive(console, clock, make, n_trials, every_s, run_s, step_s=1.0, score=True):
    """A run of ``run_s`` seconds: trial i starts at ``60 + i * every_s``, reports a new best
    (if ``score``) 5 minutes later and completes 15 minutes later; Tune's loop steps every
    ``step_s``. Returns the lines each event printed, with the clock's time when it printed."""
    trials, printed = [], []

    def event(hook, *args):
        before = console._live_line.stream.getvalue()
        hook(0, trials, *args)
        printed.append((clock.now, console._live_line.stream.getvalue()[len(before):]))

    plan = {}
    for i in range(n_trials):
        start = 60.0 + i * every_s
        plan.setdefault(start, []).append(("start", i))
        plan.setdefault(start + 300.0, []).append(("result", i))
        plan.setdefault(start + 900.0, []).append(("end", i))
    steps = int(run_s / step_s)
    for n in range(steps + 1):
        clock.now = n * step_s
        for kind, i in plan.pop(clock.now, []):
            if kind == "start":
                trials.append(make(i))
                event(console.on_trial_start, trials[i])
            elif kind == "result" and score:
                event(console.on_trial_result, trials[i], {METRIC: 0.1 + 0.01 * i, "epoch": 1})
            elif kind == "end":
                trials[i].status = "TERMINATED"
                trials[i].last_result = {METRIC: 0.1 + 0.01 * i, "epoch": 3, FINISHED_KEY: 1,
                                         "best_epoch": 3}
                event(console.on_trial_complete, trials[i])
        console.on_step_end(0, trials)
    console.on_experiment_end(trials)
    return printed


def search_reporter(stream, clock):
    return ConsoleReporter(METRIC, "max", num_samples=12, concurrent=1, parameters=["lr"],
                           stream=stream, clock=clock)


def seed_reporter(stream, clock):
    from hpo.seed_runs import run_label

    return SeedRunReporter(6, 1, run_label, [("test_recall_20", "R@20")], stream=stream,
                           clock=clock)


@pytest.mark.parametrize("make_reporter, make_trial, n_trials, score", [
    (search_reporter, lambda i: trial(str(i), i, lr=0.01), 12, True),
    (seed_reporter, lambda i: seed_run(str(i), "trm", i + 1), 6, False),
])
def test_a_four_hour_run_with_sparse_events_prints_a_bounded_number_of_status_lines(
        make_reporter, make_trial, n_trials, score):
    clock, stream = Clock(), io.StringIO()  # a log file: not a terminal
    console = make_reporter(stream, clock)
    printed = drive(console, clock, make_trial, n_trials, HOURS_4 / n_trials, HOURS_4,
                    score=score)
    raw = stream.getvalue()
    assert "\r" not in raw and raw.endswith("\n")  # plain lines
    shown = raw.splitlines()
    status = [line for line in shown if "] status: " in line]
    events = [line for line in shown if "] status: " not in line]
    assert len(events) == len(printed) == n_trials * (3 if score else 2)
    # Every event printed one line at once, stamped with the time it happened.
    for now, text in printed:
        assert text.count("\n") == 1 and text.startswith(f"[{format_duration(now)}] ")
    # A bounded number of status lines: every 30 s it would have been ~470.
    assert len(status) <= StatusSchedule().max_lines(HOURS_4) <= 40
    # They come more rarely as the run goes on (each at least 30 s, 1, 2, 5, 10, 10 ... minutes
    # after the one before, events or not), but at least every 30 minutes, so a log shows the
    # estimate of the time left now and then.
    times = [0] + [stamp(line) for line in status]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    floors = [30, 60, 120, 300] + [600] * len(gaps)
    assert gaps[0] == 30 and all(gap >= floor for gap, floor in zip(gaps, floors, strict=False))
    assert max(gaps + [HOURS_4 - times[-1]]) <= 1800


def stamp(line):
    """The seconds in a line's ``[h:mm:ss]`` or ``[m:ss]`` stamp."""
    seconds = 0
    for part in line[1:line.index("]")].split(":"):
        seconds = 60 * seconds + int(part)
    return seconds


def test_a_terminal_gets_one_live_status_line_rewritten_in_place(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    clock, stream = Clock(), Terminal()
    console, _ = reporter(stream=stream, clock=clock)
    a = trial("a", 0, lr=0.1, n_layers=1)
    console.on_step_end(0, [])
    assert screen(stream.getvalue()) == [
        "[0:00] 0 done, 0 running, 4 to start; no result yet"]
    for tick in range(1, 241):  # two minutes, Tune's loop stepping every half second
        clock.now = tick / 2
        if clock.now == 10.0:
            console.on_trial_start(0, [a], a)
        if clock.now == 40.0:
            console.on_trial_result(0, [a], a, {METRIC: 0.2, "epoch": 1})
        if clock.now == 100.0:
            a.status, a.last_result = "TERMINATED", {METRIC: 0.2, "epoch": 3, FINISHED_KEY: 1}
            console.on_trial_complete(0, [a], a)
        console.on_step_end(0, [a])
        if clock.now == 60.0:  # mid-run: the events above, the live line below them
            assert screen(stream.getvalue()) == [
                "[0:10] trial 0 started (TPE): lr=0.1 n_layers=1",
                f"[0:40] trial 0 epoch 1: {METRIC} 0.2000 (best so far)",
                "[1:00] 0 done, 1 running, 3 to start; best 0.2000 (trial 0)"]
    console.on_experiment_end([a])
    raw = stream.getvalue()
    events = ["[0:10] trial 0 started (TPE): lr=0.1 n_layers=1",
              f"[0:40] trial 0 epoch 1: {METRIC} 0.2000 (best so far)",
              f"[1:40] trial 0 completed at epoch 3: {METRIC} 0.2000"]
    # The live line was cleared before each event line was printed ...
    for line in events:
        assert CLEAR_LINE + line + "\n" in raw
    # ... rewritten about once a second, never piling up: one newline per event and one at the
    # end, which leaves the final status on screen and the cursor on a fresh line.
    assert raw.count(CLEAR_LINE) > 100 and raw.count("\n") == len(events) + 1
    assert "status:" not in raw
    assert screen(raw) == events + [
        "[2:00] 1 done, 0 running, 3 to start; best 0.2000 (trial 0); about 3:00 left", ""]


def test_the_test_stages_live_line(monkeypatch):
    from hpo.seed_runs import run_label

    monkeypatch.setenv("COLUMNS", "200")
    clock, stream = Clock(), Terminal()
    console = SeedRunReporter(2, 1, run_label, stream=stream, clock=clock)
    a = seed_run("a", "trm", 1)
    console.on_trial_start(0, [a], a)
    clock.now = 5.0
    console.on_step_end(0, [a])
    assert screen(stream.getvalue()) == [
        "[0:00] trm seed 1 started",
        "[0:05] 0 of 2 seed runs done (0 failed), 1 running, 1 to start"]
    for epoch in range(1, 7):  # 6 epochs of 10 s after 5 s of start-up
        clock.now = 5.0 + 10.0 * epoch
        a.last_result = {"epoch": epoch, "best_epoch": 1}
        console.on_trial_result(0, [a], a, a.last_result)
    a.status, a.last_result = "TERMINATED", {"epoch": 6, "best_epoch": 1, FINISHED_KEY: 1}
    console.on_trial_complete(0, [a], a)
    console.on_experiment_end([a])
    assert screen(stream.getvalue()) == [
        "[0:00] trm seed 1 started",
        "[1:05] trm seed 1 done in 1:05: 6 epochs, best 1",
        "[1:05] 1 of 2 seed runs done (0 failed), 0 running, 1 to start; about 1:05 left", ""]


def test_the_live_line_fits_the_terminal_and_ends_only_when_drawn():
    stream = Terminal()
    live = LiveLine(stream, width=20)
    live.end()
    live.print("an event")  # nothing drawn yet: a plain line
    assert stream.getvalue() == "an event\n"
    live.show("x" * 50)
    assert screen(stream.getvalue())[-1] == "x" * 16 + "..."  # 19 columns: no wrap
    live.clear()
    live.end()  # cleared: nothing to end
    assert screen(stream.getvalue()) == ["an event", ""]


def test_a_dumb_terminal_or_a_pipe_gets_plain_status_lines(monkeypatch):
    monkeypatch.setenv("TERM", "dumb")
    clock = Clock()
    console, stream = reporter(stream=Terminal(), clock=clock)
    clock.now = 30.0
    console.on_step_end(0, [])
    assert "\r" not in stream.getvalue() and lines(stream)[0].startswith("status: 0 done")
