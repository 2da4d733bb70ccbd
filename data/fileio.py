"""Crash-safe file writing shared by the cache and the atomic-file writer."""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def write_atomically(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write through ``write`` into a temporary sibling, then rename it over ``path``: readers see
    the old file or the complete new one, never a partial one; on error nothing is left behind.

    Args:
        path: the file to write.
        write: writes the content to the binary file it is given.
    """
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
        os.chmod(temp, 0o644)  # mkstemp's 0600 would hide shared data from other users
        os.replace(temp, path)
    finally:
        Path(temp).unlink(missing_ok=True)


def writable_dir(folder: Path) -> bool:
    """Create ``folder`` if needed and say whether we may write there. Also honours the permission
    bits, which root's os.access ignores, so shared read-only data stays untouched.

    Args:
        folder: the folder.

    Returns:
        True where files can be written in it.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        mode = folder.stat().st_mode
    except OSError:
        return False
    return os.access(folder, os.W_OK) and bool(mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
