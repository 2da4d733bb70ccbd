"""Test hook: make a fault happen at a named point of a search, so the fault suite
(``tests/test_faults.py``) can kill, fail or pause a search at a known moment instead of guessing
one with timers.

Off unless the environment variable ``CORE_HPO_TEST_HOOK`` is set; nothing in normal use sets it.
Its value is a comma-separated list of ``ACTION@POINT[:TRIAL[:EPOCH]]``, e.g.
``pause@checkpoint:1:2`` (trial 1 pauses halfway through writing its resume file of epoch 2).

Points (where the hook fires):

- ``stores``: the driver, before it opens the MLflow store and the Optuna storage;
- ``train``: a trial, before it trains epoch EPOCH;
- ``checkpoint``: a trial, halfway through writing its resume file of epoch EPOCH;
- ``log``: the driver, before it logs epoch EPOCH of a trial to MLflow.

Actions:

- ``pause``: write ``<CORE_HPO_TEST_HOOK_DIR>/<point>.paused`` (JSON: pid, trial, epoch, and
  the file being written at ``checkpoint``) and block, for the test to kill the driver then;
- ``wait``: write the same marker, then block until ``<dir>/<point>.release`` exists (a
  barrier: several drivers released at once);
- ``nan`` (``train``): fill the model's weights with NaN, so that epoch's loss really is NaN;
- ``memory_error`` (``train``): raise ``MemoryError``.

TRIAL is the Optuna trial number and EPOCH the epoch; left out, any matches. The driver reads the
variable when it starts and hands the trial-side hooks to the trainable (Ray workers need not
inherit the driver's environment); the driver-side points read it when they fire, so a resumed
driver started without it never fires a hook recorded by the one it replaces.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

ENV = "CORE_HPO_TEST_HOOK"
DIR_ENV = "CORE_HPO_TEST_HOOK_DIR"
POINTS = ("stores", "train", "checkpoint", "log")
ACTIONS = ("pause", "wait", "nan", "memory_error")
BLOCK_S = 900.0  # a paused process nobody kills gives up (and fails) after this long
POLL_S = 0.2


@dataclass(frozen=True)
class FaultPoint:
    """One ``ACTION@POINT[:TRIAL[:EPOCH]]`` entry."""

    action: str
    point: str
    trial: int | None = None
    epoch: int | None = None

    def matches(self, point: str, trial: int | None, epoch: int | None) -> bool:
        """Whether this entry fires at ``point`` for ``trial`` at ``epoch``.

        Args:
            point: the point reached.
            trial: the Optuna trial number there (None: not known).
            epoch: the epoch there (None: not known).
        """
        return (point == self.point and self.trial in (None, trial)
                and self.epoch in (None, epoch))


@dataclass(frozen=True)
class FaultPoints:
    """The hooks ``CORE_HPO_TEST_HOOK`` asks for (none: every ``fire`` does nothing).

    Args:
        entries: the parsed entries.
        directory: where markers are written (``CORE_HPO_TEST_HOOK_DIR``, default: the cwd).
    """

    entries: tuple[FaultPoint, ...] = ()
    directory: str = "."

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> FaultPoints:
        """The hooks set in the environment.

        Args:
            environ: the environment to read (default: ``os.environ``).

        Raises:
            ValueError: an entry names an unknown action or point, or is malformed.
        """
        environ = os.environ if environ is None else environ
        spec = environ.get(ENV, "").strip()
        entries = tuple(_parse(part.strip()) for part in spec.split(",") if part.strip())
        return cls(entries, environ.get(DIR_ENV) or ".")

    def __bool__(self) -> bool:
        return bool(self.entries)

    def fire(self, point: str, trial: int | None = None, epoch: int | None = None,
             **context) -> None:
        """Act on every entry matching this point (nothing when no hook is set).

        Args:
            point: the point reached (one of ``POINTS``).
            trial: the Optuna trial number there, if any.
            epoch: the epoch there, if any.
            **context: ``trainer`` (for ``nan``), ``path`` (the file being written, recorded in
                the marker).
        """
        for entry in self.entries:
            if entry.matches(point, trial, epoch):
                self._act(entry, trial, epoch, context)

    def _act(self, entry: FaultPoint, trial, epoch, context: dict) -> None:
        if entry.action == "memory_error":
            raise MemoryError(f"test hook {ENV}: {entry.action}@{entry.point} (trial {trial}, "
                              f"epoch {epoch})")
        if entry.action == "nan":
            import torch

            with torch.no_grad():
                for parameter in context["trainer"].model.parameters():
                    parameter.fill_(float("nan"))
            return
        directory = Path(self.directory)
        directory.mkdir(parents=True, exist_ok=True)
        marker = {"pid": os.getpid(), "trial": trial, "epoch": epoch,
                  **({"path": str(context["path"])} if "path" in context else {})}
        partial = directory / f"{entry.point}.paused.partial"
        partial.write_text(json.dumps(marker))
        os.replace(partial, directory / f"{entry.point}.paused")
        release = directory / f"{entry.point}.release"
        deadline = time.monotonic() + BLOCK_S
        while time.monotonic() < deadline:
            if entry.action == "wait" and release.exists():
                return
            time.sleep(POLL_S)  # blocked on purpose until killed (pause) or released (wait)
        raise RuntimeError(f"test hook {ENV}: {entry.action}@{entry.point} was neither killed "
                           f"nor released within {BLOCK_S:.0f} s")


def fire(point: str, trial: int | None = None, epoch: int | None = None, **context) -> None:
    """Fire the driver-side ``point`` as the environment says now (see ``FaultPoints.fire``).

    Args:
        point: the point reached.
        trial: the Optuna trial number there, if any.
        epoch: the epoch there, if any.
        **context: as for ``FaultPoints.fire``.
    """
    if os.environ.get(ENV):
        FaultPoints.from_env().fire(point, trial, epoch, **context)


def _parse(text: str) -> FaultPoint:
    action, _, where = text.partition("@")
    point, *numbers = where.split(":")
    if action not in ACTIONS or point not in POINTS or len(numbers) > 2:
        raise ValueError(f"{ENV}: {text!r} is not ACTION@POINT[:TRIAL[:EPOCH]] with ACTION in "
                         f"{ACTIONS} and POINT in {POINTS}")
    trial, epoch = ([int(n) if n else None for n in numbers] + [None, None])[:2]
    return FaultPoint(action, point, trial, epoch)
