"""What a search prints while it runs: one line per trial event and a status line (and,
``SeedRunReporter``, what the test stage prints while it retrains).

Ray Tune's own progress tables, per-trial logs and checkpoint messages are for ``-v``; by default a
search prints only this reporter's lines, so an 8-trial search fits on one screen:

    [0:12] trial 0 started (published defaults): lr=0.001 temperature=0.07 ...
    [0:31] trial 0 epoch 2: best_valid_mrr_20 0.1523 (best so far)
    [0:40] trial 3 stopped by ASHA at epoch 1: best_valid_mrr_20 0.0981
    [1:10] status: 3 done (1 completed, 2 stopped, 0 failed), 2 running, 3 to start; best
           0.1523 (trial 0); elapsed 1:10, about 1:20 left

The time left of a search is counted in trial-epochs (``estimate_search_left``): those expected
under ASHA for the whole search, less those run, at the seconds per trial-epoch measured so far;
the test stage's seed runs in epochs per arm (``estimate_seed_runs_left``): each run's length its
arm's mean over the ended runs but at least its best epoch plus the patience, at its own seconds
per epoch, the waiting runs taking the first slot to free up.

An epoch result is printed when it makes its trial the search's best and the best was another
trial's (a trial improving its own lead shows in the status line and its end line). Event lines
are printed at once. The status line depends on where the output goes:

- a terminal (the stream's ``isatty()``): one live line at the bottom, rewritten in place every
  second (``LiveLine``), cleared before each event line and drawn again below it, and left on
  screen with a newline when the run ends;
- a log file, a pipe, a Ray job's output: a plain status line after a stretch without any line
  that grows as the run goes on (``StatusSchedule``: 30 s, then 1, 2, 5 and 10 minutes, then
  every 10 minutes; an event restarts the wait, not the backoff) and at least every 30 minutes
  however busy the run, so a run of any length prints a bounded number of them (15 at most in
  two hours, 27 in four) and a busy search is not flooded.
"""

from __future__ import annotations

import heapq
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import Any, TextIO

from ray.tune import Callback

from hpo.cost import asha_trial_epochs
from hpo.options import DEFAULT_RETRAIN_MAX_EPOCHS
from hpo.outcome import (
    DEVICE_WARNING_KEY,
    TrialOutcome,
    split_meta,
    trial_error_text,
    trial_outcome,
)
from hpo.space import Budget
from models.core_variants import CORE_KEYS
from models.registry import fits_once

STATUS_INTERVALS_S = (30.0, 60.0, 120.0, 300.0, 600.0)
STATUS_AT_LEAST_EVERY_S = 1800.0
LIVE_EVERY_S = 1.0
MAX_ERROR_CHARS = 200
CLEAR_LINE = "\r\x1b[K"  # carriage return, then erase to the end of the line (ANSI)


def format_duration(seconds: float) -> str:
    """``h:mm:ss`` or ``m:ss``.

    Args:
        seconds: a duration (negative values print as 0:00).
    """
    seconds = int(max(0.0, seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def format_params(params: dict[str, Any]) -> str:
    """``key=value`` pairs, floats to 3 significant digits.

    Args:
        params: the sampled parameters of a trial.
    """
    def text(value: Any) -> str:
        return f"{value:.3g}" if isinstance(value, float) else str(value)

    return " ".join(f"{k}={text(v)}" for k, v in params.items())


def estimate_left(
    elapsed: float, durations: list[float], *, running_ages: list[float], to_start: int,
    concurrent: int,
) -> float | None:
    """Seconds runs of similar length still need, from the mean duration of the ended ones
    (the test stage's seed runs; a search under ASHA uses ``estimate_search_left``).

    Running runs are assumed to need the mean minus what they have run (at least nothing);
    runs still to start share ``concurrent`` slots.

    Args:
        elapsed: seconds since the stage started.
        durations: wall-clock seconds of every ended run.
        running_ages: seconds each running run has run.
        to_start: runs not started yet.
        concurrent: runs that go at once.

    Returns:
        The estimate, or None before any run ended.
    """
    if not durations:
        return None
    mean = sum(durations) / len(durations)
    running = max((max(0.0, mean - age) for age in running_ages), default=0.0)
    queued = math.ceil(to_start / max(1, concurrent)) * mean
    return running + queued


@dataclass(frozen=True)
class SeedRunProgress:
    """One seed run as the test stage's time estimate sees it (``estimate_seed_runs_left``).

    Attributes:
        group: runs expected to be alike in length and epoch time: one arm of one space
            (``"trm/full"``).
        epochs: the last epoch it reported (0: none yet).
        best_epoch: its best epoch by validation so far.
        timed_epochs: epochs it ran since it (re)started, and ``timed_s`` the seconds from its
            (re)start to the last of them: its seconds per epoch.
        timed_s: see ``timed_epochs``.
        age_s: seconds since it (re)started (a running run; ended runs need none).
        max_epochs: its epoch cap (1 for a model fitted once).
        patience: epochs without improvement that stop it (0 for a model fitted once).
    """

    group: str
    epochs: int = 0
    best_epoch: int = 0
    timed_epochs: int = 0
    timed_s: float = 0.0
    age_s: float = 0.0
    max_epochs: int = 1
    patience: int = 0

    @property
    def epoch_s(self) -> float | None:
        """Its seconds per epoch (None before its first epoch ended)."""
        return self.timed_s / self.timed_epochs if self.timed_epochs else None

    @property
    def certain_epochs(self) -> int:
        """The epochs it runs at least: its best epoch plus the patience, capped."""
        return min(self.max_epochs, max(max(self.best_epoch, 1) + self.patience, self.epochs))


def estimate_seed_runs_left(
    *, ended: Sequence[SeedRunProgress], running: Sequence[SeedRunProgress],
    waiting: Sequence[SeedRunProgress], concurrent: int,
) -> float | None:
    """Seconds the test stage's seed runs still need, counted in epochs per arm.

    A mean of the ended runs' durations misleads when a grid mixes arms (a kNN fit ends in
    seconds, a DiffAug run takes an hour) and says nothing before the first run ends, hours into
    the stage. Here each run's length in epochs is its arm's mean over the ended runs (else over
    every ended run, else what is certain: best epoch plus patience), but at least what is
    certain for it, and capped; its seconds per epoch are its own, else its arm's, else every
    timed run's. Running runs keep their slots; waiting runs take the first slot to free up,
    ``concurrent`` at once (a greedy schedule), and the estimate is when the last one ends.

    Args:
        ended: the ended runs.
        running: the running runs (``age_s`` set).
        waiting: the runs not started yet (their group, cap and patience).
        concurrent: runs that go at once.

    Returns:
        The estimate, or None before any run timed an epoch.
    """
    timed = [r for r in (*ended, *running) if r.timed_epochs]
    if not timed:
        return None

    def rate(runs) -> float | None:
        epochs = sum(r.timed_epochs for r in runs)
        return sum(r.timed_s for r in runs) / epochs if epochs else None

    overall_rate = rate(timed)
    overall_length = (sum(r.epochs for r in ended) / len(ended)) if ended else None

    def length(run: SeedRunProgress) -> float:
        alike = [r.epochs for r in ended if r.group == run.group]
        mean = sum(alike) / len(alike) if alike else overall_length
        if mean is None:  # nothing ended: the certain length of the arm's running runs
            mean = max((r.certain_epochs for r in running if r.group == run.group),
                       default=run.certain_epochs)
        return min(run.max_epochs, max(mean, run.certain_epochs))

    def epoch_s(run: SeedRunProgress) -> float:
        return (run.epoch_s or rate([r for r in timed if r.group == run.group])
                or overall_rate)

    slots = []
    for run in running:
        seconds_left = (length(run) - run.epochs) * epoch_s(run)
        into_epoch = max(0.0, run.age_s - run.timed_s)  # the epoch under way
        slots.append(max(0.0, seconds_left - into_epoch) if seconds_left > 0 else 0.0)
    slots += [0.0] * max(0, concurrent - len(slots))
    heapq.heapify(slots)
    for run in waiting:
        heapq.heappush(slots, heapq.heappop(slots) + length(run) * epoch_s(run))
    return max(slots, default=0.0)


def next_rung(budget: Budget, epochs: int) -> int:
    """The first epoch after ``epochs`` at which ASHA decides on a trial, or the last epoch.

    Args:
        budget: the search's budget (grace period, reduction factor, epoch cap).
        epochs: epochs a trial has run.
    """
    rung = budget.grace_period
    while rung <= epochs and rung < budget.max_epochs:
        rung *= budget.reduction_factor
    return min(rung, budget.max_epochs)


def estimate_search_left(
    *, budget: Budget, expected_epochs: float, epochs_done: dict[str, int],
    running: list[str], to_start: int, epoch_s: float | None, concurrent: int,
) -> float | None:
    """Seconds an ASHA search still needs, counted in trial-epochs.

    An average of the ended trials' durations misleads early in a search under ASHA: the first
    trials to end are the ones stopped at the grace period, so it promises a fraction of what
    is left. Here the epochs left are the search's expected trial-epochs under ASHA
    (``hpo.cost.asha_trial_epochs``) less those already run, but at least what is certain: each
    trial to start runs its grace period and each running trial reaches its next rung. They
    take the seconds per trial-epoch measured so far, ``concurrent`` at once.

    Args:
        budget: the search's budget.
        expected_epochs: trial-epochs the whole search is expected to take.
        epochs_done: epochs run so far by each trial that reported.
        running: ids of the trials running now.
        to_start: trials not started yet.
        epoch_s: seconds of one trial-epoch so far (None before the first epoch ended).
        concurrent: trials that run at once.

    Returns:
        The estimate, or None before any epoch ended.
    """
    if epoch_s is None:
        return None
    certain = to_start * min(budget.grace_period, budget.max_epochs) + sum(
        next_rung(budget, epochs_done.get(t, 0)) - epochs_done.get(t, 0) for t in running)
    left = max(expected_epochs - sum(epochs_done.values()), certain)
    return left * epoch_s / max(1, concurrent)


class StatusSchedule:
    """When a status line is due: after a stretch without any line that grows with each status
    line printed (``STATUS_INTERVALS_S``: 30 s, then 1, 2, 5 and 10 minutes, the last repeating),
    and at the latest ``at_least_every_s`` (30 minutes) after the last status line.

    The n-th status line of a run comes after ``intervals[n]`` seconds without a line, so a run
    of ``T`` seconds prints at most ``max_lines(T)`` of them whatever its events: 2 in a 3-minute
    run, 15 in two hours, 27 in four (``len(intervals) - 1`` plus one per ``intervals[-1]``). An
    event (any other line) restarts the quiet stretch but keeps the interval reached: were it to
    go back to 30 s, a run with an event every few minutes would print a status line after each,
    the chatter the backoff removes (an event line says what changed anyway). A run whose events
    never leave it quiet that long still gets a status line (its estimate of the time left) every
    ``at_least_every_s``; that stays within the bound, being longer than every interval.
    ``start`` goes back to the first interval, e.g. for another piece of work.

    Usage (``now`` defaults to the clock)::

        schedule = StatusSchedule()
        ...
        print(event_line); schedule.event()
        ...
        if schedule.due():  # polled, e.g. at each step of a loop
            print(status_line); schedule.printed()

    Args:
        intervals: seconds without a line before each status line, the last one repeating
            (at least one, none negative).
        clock: seconds from any origin (``time.monotonic``; a fake one in tests).
        at_least_every_s: seconds after the last status line (or the start) when the next one
            is due, however busy the run (None, or less than the longest interval: only after
            quiet stretches).
    """

    def __init__(self, intervals: Sequence[float] = STATUS_INTERVALS_S,
                 clock: Callable[[], float] = time.monotonic,
                 at_least_every_s: float | None = STATUS_AT_LEAST_EVERY_S):
        if not intervals or any(i < 0 for i in intervals):
            raise ValueError(f"status intervals must be >= 0 and at least one: {intervals!r}")
        self.intervals = tuple(float(i) for i in intervals)
        if at_least_every_s is not None and at_least_every_s < max(self.intervals):
            at_least_every_s = None  # e.g. intervals that mean "never": they win
        self.at_least_every_s = at_least_every_s
        self.clock = clock
        self.start()

    def _now(self, now: float | None) -> float:
        return self.clock() if now is None else now

    def start(self, now: float | None = None) -> None:
        """Starts over: the first interval, quiet from ``now``.

        Args:
            now: the clock's time (read from it by default).
        """
        self.count = 0  # status lines printed since the start
        self.quiet_since = self.last_status = self._now(now)

    @property
    def interval(self) -> float:
        """Seconds without a line before the next status line."""
        return self.intervals[min(self.count, len(self.intervals) - 1)]

    def due(self, now: float | None = None) -> bool:
        """Whether a status line is due (nothing changes: call ``printed`` once it is printed).

        Args:
            now: the clock's time (read from it by default).

        Returns:
            True when ``interval`` seconds have passed without a line, or ``at_least_every_s``
            since the last status line.
        """
        now = self._now(now)
        return (now - self.quiet_since >= self.interval
                or (self.at_least_every_s is not None
                    and now - self.last_status >= self.at_least_every_s))

    def event(self, now: float | None = None) -> None:
        """Books a line that is not a status line: the quiet stretch restarts, the interval
        stays.

        Args:
            now: the clock's time (read from it by default).
        """
        self.quiet_since = self._now(now)

    def printed(self, now: float | None = None) -> None:
        """Books a status line: the quiet stretch restarts and the interval moves to the next.

        Args:
            now: the clock's time (read from it by default).
        """
        self.quiet_since = self.last_status = self._now(now)
        self.count += 1

    def max_lines(self, seconds: float) -> int:
        """The most status lines a run of ``seconds`` can print, whatever its events (each comes
        at least its interval after the one before).

        Args:
            seconds: the run's length.

        Returns:
            The bound.

        Raises:
            ValueError: when the last interval is 0 (no bound).
        """
        last = self.intervals[-1]
        if last <= 0:
            raise ValueError("a last status interval of 0 s puts no bound on the status lines")
        fixed = [t for t in accumulate(self.intervals[:-1]) if t <= seconds]
        spent = fixed[-1] if fixed else 0.0
        if len(fixed) < len(self.intervals) - 1:
            return len(fixed)
        return len(fixed) + int((seconds - spent) // last)


def is_terminal(stream: TextIO) -> bool:
    """Whether a stream is a terminal that can rewrite a line in place.

    Args:
        stream: where lines go.

    Returns:
        True for a TTY (``isatty()``), unless ``TERM`` is "dumb"; False for files and pipes.
    """
    try:
        tty = bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed file
        return False
    return tty and os.environ.get("TERM") != "dumb"


class LiveLine:
    """One line rewritten in place at the bottom of a terminal, with other lines printed above
    it.

    ``show`` draws the line after a carriage return, erasing what was there; ``print`` erases
    it, prints a line in its place and draws it again below; ``end`` leaves it on screen, ended
    by a newline, so that what follows starts on a line of its own. The text is cut to the
    terminal's width: a line that wrapped could no longer be rewritten.

    Args:
        stream: the terminal (stdout, looked up at each write, by default).
        width: its columns (the terminal's, looked up at each write, by default).
    """

    def __init__(self, stream: TextIO | None = None, width: int | None = None):
        self._stream = stream
        self.width = width
        self.text: str | None = None  # what the line shows, None when not drawn

    @property
    def stream(self) -> TextIO:
        """Where the line is drawn."""
        return self._stream or sys.stdout

    def _fit(self, text: str) -> str:
        width = self.width or shutil.get_terminal_size().columns
        room = max(4, width - 1)  # the last column would wrap on some terminals
        return text if len(text) <= room else text[:room - 3] + "..."

    def _draw(self) -> None:
        if self.text is not None:
            self.stream.write(CLEAR_LINE + self._fit(self.text))

    def show(self, text: str) -> None:
        """Draws the line, or rewrites it.

        Args:
            text: its new text (one line).
        """
        self.text = text
        self._draw()
        self.stream.flush()

    def clear(self) -> None:
        """Erases the line (the cursor stays on it; ``show`` draws it again)."""
        if self.text is not None:
            self.stream.write(CLEAR_LINE)
            self.stream.flush()
            self.text = None

    def print(self, line: str) -> None:
        """Prints a line above the live line (which is drawn again below it).

        Args:
            line: the line, without its newline.
        """
        if self.text is not None:
            self.stream.write(CLEAR_LINE)
        self.stream.write(line + "\n")
        self._draw()
        self.stream.flush()

    def end(self) -> None:
        """Ends the live line with a newline, leaving it on screen (nothing if not drawn)."""
        if self.text is not None:
            self.stream.write("\n")
            self.stream.flush()
            self.text = None


class ConsoleReporter(Callback):
    """Prints trial events at once and a status line: live on a terminal, at backed-off
    intervals elsewhere (Tune callback; see the module's description).

    Args:
        metric: the result key the search optimises (best-so-far per trial).
        mode: "max" or "min".
        num_samples: the search's number of trials.
        concurrent: trials that run at once (for the time estimate).
        parameters: names of the searched parameters (printed when a trial starts).
        status_intervals_s: seconds without any line before each plain status line, the last
            one repeating (``StatusSchedule``).
        stream: where to print (stdout by default).
        live: whether the status is one line rewritten in place (by default when the stream is
            a terminal).
        clock: seconds from any origin (``time.monotonic``; a fake one in tests).
        budget: the search's budget: the time left is then counted in trial-epochs under ASHA
            (``estimate_search_left``); without it, from the mean duration of ended runs
            (``estimate_left``, for runs of similar length such as seed runs).
        fits_once: the searched model fits once per trial (a kNN model: one "epoch" each).
    """

    # Defaults of attributes added after a reporter may have been pickled into a Tune experiment
    # (Tuner.restore brings back the callbacks it was started with).
    budget: Budget | None = None
    expected_epochs: float | None = None

    def __init__(self, metric: str, mode: str, num_samples: int, concurrent: int,
                 parameters: list[str],
                 status_intervals_s: Sequence[float] = STATUS_INTERVALS_S,
                 stream: TextIO | None = None, live: bool | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 budget: Budget | None = None, fits_once: bool = False):
        self.budget = budget
        self.expected_epochs = (asha_trial_epochs(budget, fits_once, concurrent)[1]
                                if budget is not None else None)
        self.metric = metric
        self.mode = mode
        self.num_samples = num_samples
        self.concurrent = concurrent
        self.parameters = list(parameters)
        self.status_intervals_s = tuple(status_intervals_s)
        self.live = live
        self.clock = clock
        self._stream = stream
        self._reset()

    def _reset(self) -> None:
        self._start = self.clock()
        self._schedule = StatusSchedule(self.status_intervals_s, self.clock)
        self._live_line = LiveLine(self._stream)
        self._live_at: float | None = None  # when the live line was last drawn
        self._started: dict[str, float] = {}
        self._durations: list[float] = []
        self._epochs: dict[str, int] = {}  # the last epoch each trial reported
        self._timed: dict[str, tuple[int, float]] = {}  # epochs and seconds run since started
        self._outcomes: dict[str, TrialOutcome] = {}
        self._best: tuple[float, str] | None = None
        self._names: dict[str, str] = {}
        self._warned: set[str] = set()

    def __getstate__(self):
        # Pickled into Tune's experiment state: no stream, fresh counters on restore.
        state = self.__dict__.copy()
        state.update(_stream=None, _schedule=None, _live_line=None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._reset()

    # -- helpers ---------------------------------------------------------------------------

    def _is_live(self) -> bool:
        return self.live if self.live is not None else is_terminal(self._live_line.stream)

    def _write(self, text: str, now: float) -> None:
        line = f"[{format_duration(now - self._start)}] {text}"
        if self._is_live():
            self._live_line.print(line)
            self._live_at = None  # its counts changed: drawn again at the next step
        else:
            print(line, file=self._live_line.stream, flush=True)

    def _print(self, text: str) -> None:
        """Prints an event line at once."""
        now = self.clock()
        self._schedule.event(now)
        self._write(text, now)

    def _name(self, trial) -> str:
        if trial.trial_id not in self._names:
            _, meta = split_meta(trial.config)
            number = meta.get("number")
            self._names[trial.trial_id] = (f"trial {number}" if number is not None
                                           else f"trial {trial.trial_id}")
        return self._names[trial.trial_id]

    def _better(self, value: float, than: float) -> bool:
        return value > than if self.mode == "max" else value < than

    # -- Tune callback hooks ---------------------------------------------------------------

    def on_trial_start(self, iteration, trials, trial, **info):
        config, meta = split_meta(trial.config)
        self._started[trial.trial_id] = self.clock()
        source = f" ({meta['source']})" if meta.get("source") else ""
        params = {k: config[k] for k in self.parameters if k in config}
        self._print(f"{self._name(trial)} started{source}: {format_params(params)}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._device_warning(trial, result)
        self._count_epoch(trial, result)
        value = result.get(self.metric)
        if value is None or not math.isfinite(value):
            return
        if self._best is None or self._better(value, self._best[0]):
            new_leader = self._best is None or self._best[1] != self._name(trial)
            self._best = (float(value), self._name(trial))
            if new_leader:
                self._print(f"{self._name(trial)} epoch {result.get('epoch')}: {self.metric} "
                            f"{value:.4f} (best so far)")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._ended(trial, error=False)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._ended(trial, error=True)

    def on_step_end(self, iteration, trials, **info):
        now = self.clock()
        if self._is_live():
            if self._live_at is None or now - self._live_at >= LIVE_EVERY_S:
                self._show_live(trials, now)
        elif self._schedule.due(now):
            self._write(self.status_line(trials), now)
            self._schedule.printed(now)

    def on_experiment_end(self, trials, **info):
        if self._live_line.text is not None:  # the final counts stay on screen
            self._show_live(trials, self.clock())
            self._live_line.end()

    def _show_live(self, trials, now: float) -> None:
        self._live_line.show(f"[{format_duration(now - self._start)}] {self.live_text(trials)}")
        self._live_at = now

    # -- lines -----------------------------------------------------------------------------

    def _device_warning(self, trial, result: dict) -> None:
        """A trial's fallback-to-CPU warning, once per trial (the trials' logs are off)."""
        warning = result.get(DEVICE_WARNING_KEY)
        if warning and trial.trial_id not in self._warned:
            self._warned.add(trial.trial_id)
            self._print(f"{self._name(trial)}: {warning}")

    def _record_end(self, trial, outcome: TrialOutcome) -> float | None:
        """Books a trial's outcome and duration (for the estimate); returns the duration."""
        self._outcomes[trial.trial_id] = outcome
        started = self._started.pop(trial.trial_id, None)
        if started is None:
            return None
        self._durations.append(self.clock() - started)
        return self._durations[-1]

    def _count_epoch(self, trial, result: dict) -> None:
        """Books a trial's epoch and its time (for the estimate). Each result is one epoch
        more: a trial restored from its checkpoint counts from the epoch it resumed at."""
        epoch = result.get("epoch")
        if not isinstance(epoch, int) or trial.trial_id not in self._started:
            return
        self._epochs[trial.trial_id] = epoch
        epochs, _ = self._timed.get(trial.trial_id, (0, 0.0))
        self._timed[trial.trial_id] = (epochs + 1, self.clock() - self._started[trial.trial_id])

    def _epoch_s(self) -> float | None:
        """Seconds of one trial-epoch so far (None before the first epoch ended)."""
        epochs = sum(e for e, _ in self._timed.values())
        return sum(s for _, s in self._timed.values()) / epochs if epochs else None

    def _progress(self, trials) -> tuple[int, int, float, float | None]:
        """Trials running and to start, seconds elapsed and the estimate of those left."""
        running = [t for t in trials if t.status == "RUNNING"]
        to_start = max(0, self.num_samples - len(self._outcomes) - len(running))
        now = self.clock()
        if self.budget is not None:
            left = estimate_search_left(
                budget=self.budget, expected_epochs=self.expected_epochs,
                epochs_done=self._epochs, running=[t.trial_id for t in running],
                to_start=to_start, epoch_s=self._epoch_s(), concurrent=self.concurrent)
        else:
            ages = [now - self._started.get(t.trial_id, now) for t in running]
            left = estimate_left(now - self._start, self._durations, running_ages=ages,
                                 to_start=to_start, concurrent=self.concurrent)
        return len(running), to_start, now - self._start, left

    @staticmethod
    def _timing(elapsed: float | None, left: float | None) -> str:
        """The time part of a status line: elapsed (unless None), about how long is left."""
        parts = [f"elapsed {format_duration(elapsed)}"] if elapsed is not None else []
        parts += [f"about {format_duration(left)} left"] if left is not None else []
        return ", ".join(parts)

    def _ended(self, trial, error: bool) -> None:
        result = trial.last_result or {}
        outcome = trial_outcome(result, error)
        self._record_end(trial, outcome)
        epoch = result.get("epoch", 0)
        value = result.get(self.metric)
        score = f": {self.metric} {value:.4f}" if isinstance(value, float) else ""
        if outcome is TrialOutcome.COMPLETED:
            self._print(f"{self._name(trial)} completed at epoch {epoch}{score}")
        elif outcome is TrialOutcome.STOPPED:
            self._print(f"{self._name(trial)} stopped by ASHA at epoch {epoch}{score}")
        else:
            self._print(f"{self._name(trial)} failed at epoch {epoch}: {_error_line(trial)}")

    def status_line(self, trials) -> str:
        """The one-line status: trials done/running/to start, best so far, time.

        Args:
            trials: Tune's list of trials (created so far).
        """
        counts = {o: sum(1 for v in self._outcomes.values() if v is o) for o in TrialOutcome}
        running, to_start, elapsed, left = self._progress(trials)
        return (f"status: {sum(counts.values())} done ({counts[TrialOutcome.COMPLETED]} "
                f"completed, {counts[TrialOutcome.STOPPED]} stopped, "
                f"{counts[TrialOutcome.FAILED]} failed), {running} running, {to_start} to "
                f"start; {self._best_text()}; {self._timing(elapsed, left)}")

    def _best_text(self) -> str:
        return f"best {self._best[0]:.4f} ({self._best[1]})" if self._best else "no result yet"

    def live_text(self, trials) -> str:
        """The live status line's text (short, to fit a terminal; the elapsed time is its
        prefix): trials done / running / to start, best so far, time left.

        Args:
            trials: Tune's list of trials (created so far).
        """
        running, to_start, _, left = self._progress(trials)
        return "; ".join(filter(None, (
            f"{len(self._outcomes)} done, {running} running, {to_start} to start",
            self._best_text(), self._timing(None, left))))


class SeedRunReporter(ConsoleReporter):
    """What the test stage prints while it retrains: each seed run's start and end (its best
    epoch by validation and its test scores) and the status line, live on a terminal and at
    backed-off intervals elsewhere (Tune callback).

    Args:
        n_runs: seed runs in the grid.
        concurrent: runs at once (for the time estimate).
        label: a run's name from its Tune config (e.g. "trm seed 1").
        scores: ``(result key, label)`` pairs printed when a run ends, e.g.
            ``("test_recall_20", "R@20")``; values in percent.
        progress: ``(result key, label)`` of the validation score that early stopping follows,
            e.g. ``("best_valid_mrr_20", "valid M@20")``: the plain status line then gives each
            running run's epoch and its best epoch with that score (a seed run can train for
            hours between its start and end lines). None: not shown.
        status_intervals_s: seconds without any line before each plain status line, the last
            one repeating (``StatusSchedule``).
        stream: where to print (stdout by default).
        live: whether the status is one line rewritten in place (by default when the stream is
            a terminal).
        clock: seconds from any origin (``time.monotonic``; a fake one in tests).
    """

    def __init__(self, n_runs: int, concurrent: int, label: Callable[[dict], str],
                 scores: Sequence[tuple[str, str]] = (),
                 progress: tuple[str, str] | None = None,
                 status_intervals_s: Sequence[float] = STATUS_INTERVALS_S,
                 stream: TextIO | None = None, live: bool | None = None,
                 clock: Callable[[], float] = time.monotonic):
        super().__init__("", "max", n_runs, concurrent, [], status_intervals_s, stream, live,
                         clock)
        self.label = label
        self.scores = tuple(scores)
        self.progress = progress

    def _name(self, trial) -> str:
        return self.label(trial.config)

    def _reset(self) -> None:
        super()._reset()
        self._ended_runs: list[SeedRunProgress] = []  # the completed runs (for the estimate)

    def _run_state(self, trial, now: float) -> SeedRunProgress:
        """A run's arm, epochs, timing, cap and patience from its Tune config and last result."""
        job = (trial.config or {}).get("job") or {}
        config = job.get("config") or {}
        once = fits_once(str(config.get("model", job.get("variant", ""))))
        result = trial.last_result or {}
        epochs, best = result.get("epoch"), result.get("best_epoch")
        timed_epochs, timed_s = self._timed.get(trial.trial_id, (0, 0.0))
        started = self._started.get(trial.trial_id)
        return SeedRunProgress(
            group=f"{job.get('space', '?')}/{job.get('arm', 'full')}",
            epochs=epochs if isinstance(epochs, int) else 0,
            best_epoch=best if isinstance(best, int) else 0,
            timed_epochs=timed_epochs, timed_s=timed_s,
            age_s=now - started if started is not None else 0.0,
            max_epochs=1 if once else int(config.get("epochs", DEFAULT_RETRAIN_MAX_EPOCHS)),
            patience=0 if once else int(config.get("patience", CORE_KEYS.defaults["patience"])),
        )

    def _progress(self, trials) -> tuple[int, int, float, float | None]:
        """Runs running and to start, seconds elapsed and the estimate of those left
        (``estimate_seed_runs_left``: epochs per arm, not a mean of ended durations)."""
        now = self.clock()
        running = [t for t in trials if t.status == "RUNNING"]
        to_start = max(0, self.num_samples - len(self._outcomes) - len(running))
        waiting = [self._run_state(t, now) for t in trials if t.status == "PENDING"][:to_start]
        # Runs Tune has not created yet: the last known run's arm, cap and patience, not started.
        known = waiting or [self._run_state(t, now) for t in trials] or [SeedRunProgress("?")]
        last = known[-1]
        waiting += [SeedRunProgress(last.group, max_epochs=last.max_epochs,
                                    patience=last.patience)] * (to_start - len(waiting))
        left = estimate_seed_runs_left(
            # A reporter restored with an experiment that older code saved lacks the list.
            ended=getattr(self, "_ended_runs", []),
            running=[self._run_state(t, now) for t in running], waiting=waiting,
            concurrent=self.concurrent)
        return len(running), to_start, now - self._start, left

    def on_trial_start(self, iteration, trials, trial, **info):
        self._started[trial.trial_id] = self.clock()
        self._print(f"{self._name(trial)} started")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._device_warning(trial, result)
        self._count_epoch(trial, result)

    def _ended(self, trial, error: bool) -> None:
        result = trial.last_result or {}
        if not error:
            if not hasattr(self, "_ended_runs"):
                self._ended_runs = []
            self._ended_runs.append(self._run_state(trial, self.clock()))
        took = self._record_end(trial, TrialOutcome.FAILED if error else TrialOutcome.COMPLETED)
        took = f" in {format_duration(took)}" if took is not None else ""
        if error:
            self._print(f"{self._name(trial)} failed at epoch {result.get('epoch', 0)}: "
                        f"{_error_line(trial)}")
            return
        scores = ", ".join(f"{label} {100 * result[key]:.2f}" for key, label in self.scores
                           if isinstance(result.get(key), float))
        self._print(f"{self._name(trial)} done{took}: {result.get('epoch', 0)} epochs, best "
                    f"{result.get('best_epoch', '?')}" + (f"; test {scores}" if scores else ""))

    def status_line(self, trials) -> str:
        """The one-line status: runs done / failed / running / to start, time.

        Args:
            trials: Tune's list of trials (created so far).
        """
        running, to_start, elapsed, left = self._progress(trials)
        line = f"status: {self._runs_text(running, to_start)}; {self._timing(elapsed, left)}"
        return "; ".join([line, *self._run_progress(trials)])

    def _run_progress(self, trials) -> list[str]:
        """Each running run that reported an epoch: "trm seed 1 at epoch 13, best 9 (valid
        M@20 16.12)"."""
        # A reporter restored with an experiment that older code saved lacks the attribute.
        progress = getattr(self, "progress", None)
        if progress is None:
            return []
        key, label = progress
        parts = []
        for trial in trials:
            result = trial.last_result or {}
            if trial.status != "RUNNING" or not isinstance(result.get("epoch"), int):
                continue
            value = result.get(key)
            score = f" ({label} {100 * value:.2f})" if isinstance(value, float) else ""
            parts.append(f"{self._name(trial)} at epoch {result['epoch']}, best "
                         f"{result.get('best_epoch', '?')}{score}")
        return parts

    def _runs_text(self, running: int, to_start: int) -> str:
        failed = sum(1 for v in self._outcomes.values() if v is TrialOutcome.FAILED)
        return (f"{len(self._outcomes)} of {self.num_samples} seed runs done ({failed} failed), "
                f"{running} running, {to_start} to start")

    def live_text(self, trials) -> str:
        """The live status line's text (the elapsed time is its prefix): runs done / failed /
        running / to start, time left.

        Args:
            trials: Tune's list of trials (created so far).
        """
        running, to_start, _, left = self._progress(trials)
        return "; ".join(filter(None, (self._runs_text(running, to_start),
                                       self._timing(None, left))))


def _error_line(trial) -> str:
    """The last line of a failed trial's error (the exception), shortened."""
    lines = [line.strip() for line in trial_error_text(trial).splitlines() if line.strip()]
    return (lines[-1] if lines else "error not recorded")[:MAX_ERROR_CHARS]
