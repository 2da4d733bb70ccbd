"""What every command of the project does with bad input: one line on stderr, exit code 2.

``OneLineParser`` is ``argparse.ArgumentParser`` whose errors (a missing option, a value of the
wrong type or range) print one line, ``<prog>: error: <message> (see --help)``, instead of the
usage block and the error; the commands themselves (``launch.py``, ``python -m models.train``,
``python -m data.prepare``, ``python -m models.recommend``, ``python -m hpo.tracking_server``)
report what they find wrong with the data or the config the same way, before expensive work.
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

EXIT_USAGE = 2


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line (module docstring)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def fail(message: str) -> int:
    """Print ``error: <message>`` on stderr; return the exit code of bad input.

    Args:
        message: what is wrong, in one line.

    Returns:
        ``EXIT_USAGE``.
    """
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
    return EXIT_USAGE


def positive_int(text: str) -> int:
    """An integer >= 1 (an argparse ``type``): counts of trials, epochs, rows, threads, items.

    Args:
        text: the option's value.

    Returns:
        The integer.

    Raises:
        argparse.ArgumentTypeError: not an integer, or below 1.
    """
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """``positive_int`` with 0 allowed: an integer >= 0 (an argparse ``type``), a count where 0
    means "none" or "automatic".

    Args:
        text: the option's value.

    Returns:
        The integer (``argparse.ArgumentTypeError`` for anything else, or below 0).
    """
    return _int_at_least(text, 0)


def _int_at_least(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
    return value
