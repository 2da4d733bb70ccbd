"""Exception hierarchy of the data layer, so callers can catch every data problem at once."""

from __future__ import annotations


class DataError(ValueError):
    """Base class: anything wrong with a dataset's files or its name."""


class DatasetNotFoundError(DataError, FileNotFoundError):
    """No atomic files for the requested dataset; the message says where we looked."""


class AtomicFormatError(DataError):
    """An atomic ``.inter`` file is malformed; the message names the file and 1-based line."""

    def __init__(self, path: object, line: int | None, problem: str) -> None:
        self.path = str(path)
        self.line = line
        self.problem = problem
        where = self.path if line is None else f"{self.path}:{line}"
        super().__init__(f"{where}: {problem}")

    def __reduce__(self):  # keep the structured fields when shipped to Ray workers
        return type(self), (self.path, self.line, self.problem)
