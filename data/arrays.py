"""Vectorised helpers for ragged integer sequences (flat values + per-row lengths).

The parser, the cache and the session expansion all turn ragged rows into CORE's right-padded
prefix matrix; doing it here, once and without Python loops, keeps them consistent and fast.
"""

from __future__ import annotations

import numpy as np


def segment_starts(lengths: np.ndarray) -> np.ndarray:
    """Offset of each row's first value in the flat array (exclusive cumulative sum).

    Args:
        lengths: row lengths [n].

    Returns:
        int64 offsets [n].
    """
    ends = np.cumsum(lengths, dtype=np.int64)
    return ends - lengths


def positions_within(lengths: np.ndarray) -> np.ndarray:
    """For every flat value, its 0-based position inside its own row.

    Args:
        lengths: row lengths [n].

    Returns:
        int64 positions [sum(lengths)].
    """
    total = int(np.sum(lengths, dtype=np.int64))
    return np.arange(total, dtype=np.int64) - np.repeat(segment_starts(lengths), lengths)


def pad_rows(flat: np.ndarray, lengths: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded int32 matrix [n, width] plus kept lengths; long rows keep their LAST values.

    Args:
        flat: the rows' values, concatenated in row order.
        lengths: row lengths [n].
        width: the matrix's width.

    Returns:
        The matrix and the lengths kept (at most ``width``), int32.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    kept = np.minimum(lengths, width)
    if np.any(kept != lengths):
        dropped = np.repeat(lengths - kept, lengths)
        flat = flat[positions_within(lengths) >= dropped]
    matrix = np.zeros((len(lengths), width), dtype=np.int32)
    matrix[np.arange(width) < kept[:, None]] = flat
    return matrix, kept.astype(np.int32)


def unpad_rows(matrix: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Inverse of ``pad_rows``: the real values of every row, concatenated in row order.

    Args:
        matrix: right-padded rows [n, width].
        lengths: their lengths [n].

    Returns:
        The flat values.
    """
    return matrix[np.arange(matrix.shape[1]) < np.asarray(lengths)[:, None]]


def keep_last(
    prefixes: np.ndarray, lengths: np.ndarray, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded prefixes cut to their last ``width`` values (CORE's ``max_seq_length``).

    Args:
        prefixes: int [rows, L], right-padded with 0.
        lengths: int [rows], each row's real values.
        width: values kept per row.

    Returns:
        (prefixes [rows, min(L, width)], kept lengths), still right-padded with 0; the arrays
        themselves, not a copy, when ``L <= width``.
    """
    if prefixes.shape[1] <= width:
        return prefixes, lengths
    kept = np.minimum(lengths, width)
    columns = np.minimum((lengths - kept)[:, None] + np.arange(width), prefixes.shape[1] - 1)
    cut = np.take_along_axis(prefixes, columns, axis=1)
    cut[np.arange(width) >= kept[:, None]] = 0
    return cut, kept
