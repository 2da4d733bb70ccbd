"""What a search prints while it runs: one line per trial event and a status heartbeat (and,
``SeedRunReporter``, what the test stage prints while it retrains).

Ray Tune's own progress tables, per-trial logs and checkpoint messages are for ``-v``; by default a
search prints only this reporter's lines, so an 8-trial search fits on one screen:

    [0:12] trial 0 started (published defaults): lr=0.001 temperature=0.07 ...
    [0:31] trial 0 epoch 2: best_valid_mrr_20 0.1523 (best so far)
    [0:40] trial 3 stopped by ASHA at epoch 1: best_valid_mrr_20 0.0981
    [1:10] status: 3 done (1 completed, 2 stopped, 0 failed), 2 running, 3 to start; best
           0.1523 (trial 0); elapsed 1:10, about 1:20 left

An epoch result is printed when it makes its trial the search's best and the best was another
trial's (a trial improving its own lead shows in the status line and its end line); the status
line comes after ``status_every_s`` seconds without any line, so a busy search is not flooded.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from ray.tune import Callback

from hpo.outcome import (
    DEVICE_WARNING_KEY,
    TrialOutcome,
    split_meta,
    trial_error_text,
    trial_outcome,
)

STATUS_EVERY_S = 30.0
MAX_ERROR_CHARS = 200


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
    elapsed: float, durations: list[float], running_ages: list[float], to_start: int,
    concurrent: int,
) -> float | None:
    """Seconds a search still needs, from the mean duration of its ended trials.

    Running trials are assumed to need the mean minus what they have run (at least nothing);
    trials still to start share ``concurrent`` slots.

    Args:
        elapsed: seconds since the search started.
        durations: wall-clock seconds of every ended trial.
        running_ages: seconds each running trial has run.
        to_start: trials not started yet.
        concurrent: trials that run at once.

    Returns:
        The estimate, or None before any trial ended.
    """
    if not durations:
        return None
    mean = sum(durations) / len(durations)
    running = max((max(0.0, mean - age) for age in running_ages), default=0.0)
    queued = math.ceil(to_start / max(1, concurrent)) * mean
    return running + queued


class ConsoleReporter(Callback):
    """Prints trial events and a status line every ``status_every_s`` seconds (Tune callback).

    Args:
        metric: the result key the search optimises (best-so-far per trial).
        mode: "max" or "min".
        num_samples: the search's number of trials.
        concurrent: trials that run at once (for the time estimate).
        parameters: names of the searched parameters (printed when a trial starts).
        status_every_s: seconds without any line after which a status line is printed.
        stream: where to print (stdout by default).
    """

    def __init__(self, metric: str, mode: str, num_samples: int, concurrent: int,
                 parameters: list[str], status_every_s: float = STATUS_EVERY_S,
                 stream: TextIO | None = None):
        self.metric = metric
        self.mode = mode
        self.num_samples = num_samples
        self.concurrent = concurrent
        self.parameters = list(parameters)
        self.status_every_s = status_every_s
        self._stream = stream
        self._reset()

    def _reset(self) -> None:
        self._start = time.monotonic()
        self._last_line = self._start
        self._started: dict[str, float] = {}
        self._durations: list[float] = []
        self._outcomes: dict[str, TrialOutcome] = {}
        self._best: tuple[float, str] | None = None
        self._names: dict[str, str] = {}
        self._warned: set[str] = set()

    def __getstate__(self):
        # Pickled into Tune's experiment state: no stream, fresh counters on restore.
        state = self.__dict__.copy()
        state["_stream"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._reset()

    # -- helpers ---------------------------------------------------------------------------

    def _print(self, text: str) -> None:
        stream = self._stream or sys.stdout
        self._last_line = time.monotonic()
        print(f"[{format_duration(self._last_line - self._start)}] {text}", file=stream,
              flush=True)

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
        self._started[trial.trial_id] = time.monotonic()
        source = f" ({meta['source']})" if meta.get("source") else ""
        params = {k: config[k] for k in self.parameters if k in config}
        self._print(f"{self._name(trial)} started{source}: {format_params(params)}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._device_warning(trial, result)
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
        if time.monotonic() - self._last_line >= self.status_every_s:
            self._print(self.status_line(trials))

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
        self._durations.append(time.monotonic() - started)
        return self._durations[-1]

    def _progress(self, trials) -> tuple[int, int, str]:
        """Trials running and to start, and the time part of a status line."""
        running = [t for t in trials if t.status == "RUNNING"]
        to_start = max(0, self.num_samples - len(self._outcomes) - len(running))
        now = time.monotonic()
        ages = [now - self._started.get(t.trial_id, now) for t in running]
        left = estimate_left(now - self._start, self._durations, ages, to_start, self.concurrent)
        return len(running), to_start, (
            f"elapsed {format_duration(now - self._start)}"
            + (f", about {format_duration(left)} left" if left is not None else ""))

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
        running, to_start, timing = self._progress(trials)
        best = (f"best {self._best[0]:.4f} ({self._best[1]})" if self._best else "no result yet")
        return (f"status: {sum(counts.values())} done ({counts[TrialOutcome.COMPLETED]} "
                f"completed, {counts[TrialOutcome.STOPPED]} stopped, "
                f"{counts[TrialOutcome.FAILED]} failed), {running} running, {to_start} to "
                f"start; {best}; {timing}")


class SeedRunReporter(ConsoleReporter):
    """What the test stage prints while it retrains: each seed run's start and end (its best
    epoch by validation and its test scores) and the status heartbeat (Tune callback).

    Args:
        n_runs: seed runs in the grid.
        concurrent: runs at once (for the time estimate).
        label: a run's name from its Tune config (e.g. "trm seed 1").
        scores: ``(result key, label)`` pairs printed when a run ends, e.g.
            ``("test_recall_20", "R@20")``; values in percent.
        status_every_s: seconds without any line after which a status line is printed.
        stream: where to print (stdout by default).
    """

    def __init__(self, n_runs: int, concurrent: int, label: Callable[[dict], str],
                 scores: Sequence[tuple[str, str]] = (), status_every_s: float = STATUS_EVERY_S,
                 stream: TextIO | None = None):
        super().__init__("", "max", n_runs, concurrent, [], status_every_s, stream)
        self.label = label
        self.scores = tuple(scores)

    def _name(self, trial) -> str:
        return self.label(trial.config)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._started[trial.trial_id] = time.monotonic()
        self._print(f"{self._name(trial)} started")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._device_warning(trial, result)

    def _ended(self, trial, error: bool) -> None:
        result = trial.last_result or {}
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
        failed = sum(1 for v in self._outcomes.values() if v is TrialOutcome.FAILED)
        running, to_start, timing = self._progress(trials)
        return (f"status: {len(self._outcomes)} of {self.num_samples} seed runs done ({failed} "
                f"failed), {running} running, {to_start} to start; {timing}")


def _error_line(trial) -> str:
    """The last line of a failed trial's error (the exception), shortened."""
    lines = [line.strip() for line in trial_error_text(trial).splitlines() if line.strip()]
    return (lines[-1] if lines else "error not recorded")[:MAX_ERROR_CHARS]
