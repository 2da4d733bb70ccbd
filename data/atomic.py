"""CORE / RecBole atomic ``.inter`` files: vectorised parsing, validation and writing.

The parser works on the raw bytes with numpy (no per-row Python), so a benchmark loads in about a
second, and every validation failure still names the file and the 1-based line (row index + 2).
Parsed arrays are cached as ``.npz`` (see ``data.cache``) so later loads skip the text entirely.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from data import cache
from data.arrays import pad_rows, segment_starts, unpad_rows
from data.dataset import MAX_SEQ_LENGTH, SPLITS, SessionDataset, Split
from data.errors import AtomicFormatError
from data.fileio import write_atomically

HEADER = "session_id:token\titem_id_list:token_seq\titem_id:token"
FORMAT_VERSION = 1  # of the cached arrays; bump when the parse result changes
_MAX_DIGITS = 18  # fits int64
_MAX_ID = int(np.iinfo(np.int32).max)  # prefixes are int32
_TAB, _NEWLINE, _SPACE, _MINUS, _ZERO, _NINE = 9, 10, 32, 45, 48, 57


def split_paths(directory: str | Path, name: str) -> dict[str, Path]:
    return {split: Path(directory) / f"{name}.{split}.inter" for split in SPLITS}


def load_atomic(
    directory: str | Path, name: str, *, max_len: int = MAX_SEQ_LENGTH, use_cache: bool = True
) -> SessionDataset:
    """Load ``<directory>/<name>.{train,valid,test}.inter``, through the ``.npz`` cache."""
    paths = split_paths(directory, name)
    for path in paths.values():
        if not path.is_file():
            raise AtomicFormatError(path, None, "split file is missing")
    sources = list(paths.values())
    if use_cache:
        arrays = cache.load_or_build(sources, f"{name}.cache.npz", FORMAT_VERSION, parse_splits)
    else:
        arrays = parse_splits(sources)
    splits = {
        split: Split(
            *pad_rows(arrays[f"{split}_flat"], arrays[f"{split}_counts"], max_len),
            arrays[f"{split}_targets"],
        )
        for split in SPLITS
    }
    return SessionDataset(name, int(arrays["n_items"]), **splits)


def parse_splits(paths: list[Path]) -> dict[str, np.ndarray]:
    """Parse train/valid/test (in that order) into ragged arrays and check them against each
    other: valid/test may only use items that occur in train (prefixes or targets)."""
    arrays: dict[str, np.ndarray] = {}
    for split, path in zip(SPLITS, paths, strict=True):
        flat, counts, targets = parse_file(path)
        arrays |= {f"{split}_flat": flat, f"{split}_counts": counts, f"{split}_targets": targets}
    train_ids = np.concatenate([arrays["train_flat"], arrays["train_targets"]])
    catalog = np.zeros(int(train_ids.max()) + 1, dtype=bool)
    catalog[train_ids] = True
    for split, path in zip(SPLITS[1:], paths[1:], strict=True):
        counts = arrays[f"{split}_counts"]
        rows = np.concatenate([np.repeat(np.arange(len(counts)), counts), np.arange(len(counts))])
        ids = np.concatenate([arrays[f"{split}_flat"], arrays[f"{split}_targets"]])
        unknown = (ids >= len(catalog)) | ~catalog[np.minimum(ids, len(catalog) - 1)]
        if unknown.any():
            row = int(rows[unknown].min())
            bad = ids[unknown & (rows == row)][0]
            raise AtomicFormatError(
                path, row + 2, f"item id {bad} does not occur in the training split {paths[0]}"
            )
    arrays["n_items"] = np.int64(len(catalog))  # max id + 1: valid/test ids are train ids
    for split in SPLITS:  # compact: the cache stores these as they are
        for key in (f"{split}_flat", f"{split}_counts"):
            arrays[key] = arrays[key].astype(np.int32)
    return arrays


def parse_file(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One file -> (all prefix ids concatenated, prefix length per row, target per row).

    Raises AtomicFormatError for the earliest offending line.
    """
    data = path.read_bytes().replace(b"\r\n", b"\n")
    header, _, body = data.partition(b"\n")
    if header.decode("utf-8", errors="replace") != HEADER:
        raise AtomicFormatError(path, 1, f"wrong header {header[:200]!r}; expected {HEADER!r}")
    body = body.rstrip(b"\n")
    if not body:
        raise AtomicFormatError(path, None, "no data rows after the header")
    buf = np.frombuffer(body + b"\n", dtype=np.uint8)

    newlines = np.flatnonzero(buf == _NEWLINE)
    line_starts = np.concatenate(([0], newlines[:-1] + 1))
    is_tab = buf == _TAB
    tabs_per_line = np.add.reduceat(is_tab, line_starts, dtype=np.int64)
    bad_columns = np.flatnonzero(tabs_per_line != 2)
    if len(bad_columns):  # parse only the lines before it, so an earlier error wins
        first_bad = int(bad_columns[0])
        if first_bad > 0:
            _parse_lines(path, buf[: line_starts[first_bad]], is_tab[: line_starts[first_bad]])
        raise AtomicFormatError(
            path,
            first_bad + 2,
            f"expected 3 tab-separated columns, found {tabs_per_line[first_bad] + 1}",
        )
    return _parse_lines(path, buf, is_tab)


def _parse_lines(
    path: Path, buf: np.ndarray, is_tab: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tokenise well-formed 3-column lines (``buf`` ends with a newline) and validate the ids."""
    is_newline = buf == _NEWLINE
    n_lines = int(is_newline.sum())
    separator = is_newline | is_tab | (buf == _SPACE)
    is_start = ~separator & np.concatenate(([True], separator[:-1]))
    starts = np.flatnonzero(is_start)
    ends = np.flatnonzero(~separator & np.concatenate((separator[1:], [True]))) + 1
    token_of_byte = np.cumsum(is_start, dtype=np.int32) - 1  # last token started at/before byte
    line_of_byte = np.cumsum(is_newline, dtype=np.int32) - is_newline
    tabs_before = np.cumsum(is_tab, dtype=np.int32) - is_tab
    line_first_byte = np.concatenate(([0], np.flatnonzero(is_newline)[:-1] + 1))
    lines = line_of_byte[starts]
    fields = tabs_before[starts] - tabs_before[line_first_byte][lines]

    digit = (buf >= _ZERO) & (buf <= _NINE)
    non_digits = np.bincount(token_of_byte[~separator & ~digit], minlength=len(starts))
    values = _token_values(buf, digit, starts, ends, token_of_byte)

    keep = fields > 0  # column 0 is the session token: any text is accepted there
    starts, ends, lines, fields = starts[keep], ends[keep], lines[keep], fields[keep]
    non_digits, values, width = non_digits[keep], values[keep], ends - starts
    negative = (buf[starts] == _MINUS) & (non_digits == 1) & (width > 1)
    prefix_counts = np.bincount(lines[fields == 1], minlength=n_lines)
    target_counts = np.bincount(lines[fields == 2], minlength=n_lines)

    def text(token: int) -> str:
        return buf[starts[token] : ends[token]].tobytes().decode("utf-8", errors="replace")

    problems: list[tuple[int, str]] = []  # (row, message); the earliest row is reported

    def first_token(mask: np.ndarray, message) -> None:
        hits = np.flatnonzero(mask)
        if len(hits):
            problems.append((int(lines[hits[0]]), message(int(hits[0]))))

    def first_line(mask: np.ndarray, message) -> None:
        hits = np.flatnonzero(mask)
        if len(hits):
            problems.append((int(hits[0]), message(int(hits[0]))))

    first_token(negative, lambda t: f"negative item id {text(t)!r}")
    first_token((non_digits > 0) & ~negative, lambda t: f"item id {text(t)!r} is not an integer")
    first_token(
        (non_digits == 0) & ((width > _MAX_DIGITS) | (values > _MAX_ID)),
        lambda t: f"item id {text(t)!r} is too large (max {_MAX_ID})",
    )
    first_token(
        (non_digits == 0) & (values == 0),
        lambda t: "item id 0 is reserved for padding and cannot be an item",
    )
    first_line(prefix_counts == 0, lambda r: "empty prefix (item_id_list)")
    first_line(
        target_counts != 1, lambda r: f"item_id must be one id, found {target_counts[r]} tokens"
    )
    if problems:
        row, message = min(problems, key=lambda problem: problem[0])
        raise AtomicFormatError(path, row + 2, message)
    return values[fields == 1], prefix_counts, values[fields == 2]


def _token_values(
    buf: np.ndarray, digit: np.ndarray, starts: np.ndarray, ends: np.ndarray, token_of_byte
) -> np.ndarray:
    """Decimal value of every token: each digit times 10**(digits after it), summed per token
    (non-digit bytes count as 0; such tokens are rejected anyway)."""
    if not len(starts):
        return np.zeros(0, dtype=np.int64)
    exponent = ends[token_of_byte] - np.arange(len(buf), dtype=np.int64) - 1
    powers = 10 ** np.arange(_MAX_DIGITS + 1, dtype=np.int64)
    contribution = np.where(digit, buf - _ZERO, 0) * powers[np.clip(exponent, 0, _MAX_DIGITS)]
    return np.add.reduceat(contribution, starts)


def write_dataset(dataset: SessionDataset, out_dir: str | Path) -> list[Path]:
    """Write the three splits as atomic files; session ids number the rows from 1 across splits,
    as in CORE's files. Each file appears atomically (temp file + rename)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written, first_id = [], 1
    for split_name, path in split_paths(out_dir, dataset.name).items():
        split = dataset.split(split_name)
        text = format_split(split, first_id).encode()
        write_atomically(path, lambda file, text=text: file.write(text))
        written.append(path)
        first_id += len(split)
    return written


def format_split(split: Split, first_id: int = 1) -> str:
    """Atomic-file text of one split, built with array operations (no per-row formatting)."""
    lengths = split.lengths.astype(np.int64)
    n_rows = len(lengths)
    flat = unpad_rows(split.prefixes, lengths)
    separators = np.full(len(flat), " ", dtype=object)
    separators[segment_starts(lengths) + lengths - 1] = "\t"
    # Row r is "<id>\t", then its items each followed by a separator, then "<target>\n".
    row_start = segment_starts(lengths + 2)
    row_end = row_start + lengths + 1
    tokens = np.empty(len(flat) + 2 * n_rows, dtype=object)
    tokens[row_start] = _text(np.arange(first_id, first_id + n_rows)) + "\t"
    tokens[row_end] = _text(split.targets) + "\n"
    is_item = np.ones(len(tokens), dtype=bool)
    is_item[row_start] = is_item[row_end] = False
    tokens[is_item] = _text(flat) + separators
    return HEADER + "\n" + "".join(tokens.tolist())


def _text(values: np.ndarray) -> np.ndarray:
    return values.astype(str).astype(object)
