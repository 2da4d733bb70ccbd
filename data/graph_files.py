"""Graph side files of a dataset: ``<name>.link`` (item -> KG entity), ``<name>.kg`` (entity
triples) and ``<name>.user`` (user attributes), read into one ``GraphFiles`` (``data.dataset``).

Formats (RecBole atomic, tab-separated, a ``name:type`` header, one row per line):

* ``.link``: ``item_id:token`` and ``entity_id:token``, in the dataset's item ids (1 ..
  n_items - 1; ``data.prepare`` drops links of items outside the dataset). An item links to at
  most one entity and an entity to at most one item.
* ``.kg``: ``head_id:token``, ``relation_id:token``, ``tail_id:token``: entity ids (strings) and a
  relation name. Triples are kept as they are, including inverse duplicates (Freebase lists
  ``film.film.genre`` and ``film.film_genre.films_in_this_genre``): the graph builder decides.
* ``.user``: ``user_id:token`` (the dataset's user ids, 1 ..) plus attribute fields (strings).

Every file is optional: a dataset without them (e.g. synthetic data) has ``graph_files`` None,
and models that use them fall back to the item table alone. Malformed rows raise
``AtomicFormatError`` naming the file and the 1-based line.

Why read here and carry the arrays on the dataset: search trials run in worker processes that
receive the ``SessionDataset`` object, not its folder, so everything a model derives from these
files must travel with it (numpy arrays, cheap to pickle). Parsing the 92k-triple ml-100k ``.kg``
takes ~0.1 s, so there is no cache.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from data.dataset import GraphFiles, SessionDataset
from data.errors import AtomicFormatError
from data.locations import resolve_data_dir

LINK_COLUMNS = ("item_id:token", "entity_id:token")
KG_COLUMNS = ("head_id:token", "relation_id:token", "tail_id:token")
USER_ID_COLUMN = "user_id:token"
EXTENSIONS = ("link", "kg", "user")
_DIGITS = re.compile(r"[0-9]{1,18}")
_TAIL = re.compile(r"(?P<base>.+)-last(?P<rows>\d+)")


def graph_paths(folder: str | Path, name: str) -> dict[str, Path]:
    """``{"link": <folder>/<name>.link, "kg": ..., "user": ...}``.

    Args:
        folder: the dataset's folder.
        name: the files' prefix.

    Returns:
        extension -> path (the files may not exist).
    """
    return {ext: Path(folder) / f"{name}.{ext}" for ext in EXTENSIONS}


def read_graph_files(folder: str | Path, name: str, n_items: int) -> GraphFiles | None:
    """Read whichever of ``<name>.link``, ``.kg`` and ``.user`` exist in ``folder``.

    Args:
        folder: the dataset's folder (beside its ``.inter`` files).
        name: the files' prefix.
        n_items: the dataset's catalog size (max item id + 1); link ids must lie below it.

    Returns:
        The parsed files, or None when none of them exists.

    Raises:
        AtomicFormatError: a malformed header or row (file and line named).
    """
    paths = graph_paths(folder, name)
    if not any(path.is_file() for path in paths.values()):
        return None
    entity_ids: dict[str, int] = {}
    relation_ids: dict[str, int] = {}

    def entity(token: str) -> int:
        return entity_ids.setdefault(token, len(entity_ids))

    item_entity = np.full(n_items, -1, dtype=np.int64)
    if paths["link"].is_file():
        for item, token in read_link_file(paths["link"], n_items):
            item_entity[item] = entity(token)
    kg = np.zeros((0, 3), dtype=np.int64)
    if paths["kg"].is_file():
        rows = [
            (entity(head), relation_ids.setdefault(relation, len(relation_ids)), entity(tail))
            for head, relation, tail in read_kg_file(paths["kg"])
        ]
        kg = np.asarray(rows, dtype=np.int64).reshape(-1, 3)
    user_fields = read_user_file(paths["user"]) if paths["user"].is_file() else {}
    return GraphFiles(
        entities=np.asarray(list(entity_ids), dtype=str),
        relations=np.asarray(list(relation_ids), dtype=str),
        item_entity=item_entity,
        kg=kg,
        user_fields=user_fields,
    )


def attach_graph_files(
    dataset: SessionDataset, data_dir: str | Path | None = None
) -> SessionDataset:
    """``dataset`` carrying its graph side files (``SessionDataset.graph_files``), when any.

    The files are looked up where the dataset's ``.inter`` files are: ``<data_dir>/<name>/``, then
    ``<data_dir>`` itself; a dataset cut with ``with_train_tail`` (``X-lastN``) uses X's files.

    Args:
        dataset: the loaded dataset.
        data_dir: the data directory it was loaded from (None: ``$CORE_DATA_DIR``, else
            ``./datasets``).

    Returns:
        The dataset with ``graph_files`` set, or unchanged when no side file exists.
    """
    root = resolve_data_dir(data_dir)
    names = [dataset.name]
    tail = _TAIL.fullmatch(dataset.name)
    if tail:
        names.append(tail.group("base"))
    for name in names:
        for folder in (root / name, root):
            files = read_graph_files(folder, name, dataset.n_items)
            if files is not None:
                return dataset.with_graph_files(files)
    return dataset


# --------------------------------------------------------------------------- readers


def _lines(path: Path) -> list[str]:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise AtomicFormatError(path, line, "bytes are not UTF-8") from None
    text = text.removeprefix("\ufeff").replace("\r\n", "\n").rstrip("\n")
    if not text:
        raise AtomicFormatError(path, 1, "empty file: expected a header line")
    return text.split("\n")


def _columns(path: Path, header: str, required: tuple[str, ...]) -> list[int]:
    """Positions of the ``required`` header columns (other columns are ignored)."""
    columns = [column.strip() for column in header.split("\t")]
    positions = []
    for name in required:
        if columns.count(name) != 1:
            raise AtomicFormatError(
                path, 1, f"header needs exactly one {name!r} column; found {columns}"
            )
        positions.append(columns.index(name))
    return positions


def _cells(path: Path, number: int, line: str, width: int) -> list[str]:
    cells = line.split("\t")
    if len(cells) != width:
        raise AtomicFormatError(
            path, number, f"expected {width} tab-separated columns, found {len(cells)}"
        )
    return [cell.strip() for cell in cells]


def read_link_file(path: str | Path, n_items: int) -> list[tuple[int, str]]:
    """``(item id, entity id)`` pairs of a ``.link`` file.

    Args:
        path: the file.
        n_items: catalog size; item ids must lie in 1 .. n_items - 1.

    Returns:
        The pairs, in file order.

    Raises:
        AtomicFormatError: naming the line, for a bad header, a wrong column count, an item id
            that is not an integer or is outside the catalog, an empty entity, or an item or
            entity linked twice.
    """
    path = Path(path)
    lines = _lines(path)
    item_col, entity_col = _columns(path, lines[0], LINK_COLUMNS)
    width = len(lines[0].split("\t"))
    pairs: list[tuple[int, str]] = []
    item_line: dict[int, int] = {}
    entity_line: dict[str, int] = {}
    for number, line in enumerate(lines[1:], start=2):
        cells = _cells(path, number, line, width)
        token, entity = cells[item_col], cells[entity_col]
        if not _DIGITS.fullmatch(token):
            raise AtomicFormatError(path, number, f"item id {token!r} is not an integer")
        item = int(token)
        if not 1 <= item < n_items:
            raise AtomicFormatError(
                path, number, f"item id {item} is not in the dataset's catalog (1..{n_items - 1})"
            )
        if not entity:
            raise AtomicFormatError(path, number, "empty entity id")
        if item in item_line:
            raise AtomicFormatError(
                path, number, f"item {item} is linked twice (first on line {item_line[item]})"
            )
        if entity in entity_line:
            raise AtomicFormatError(
                path, number,
                f"entity {entity!r} is linked twice (first on line {entity_line[entity]})",
            )
        item_line[item], entity_line[entity] = number, number
        pairs.append((item, entity))
    return pairs


def read_kg_file(path: str | Path) -> list[tuple[str, str, str]]:
    """``(head, relation, tail)`` triples of a ``.kg`` file.

    Args:
        path: the file.

    Returns:
        The triples, in file order.

    Raises:
        AtomicFormatError: naming the line, for a bad header, a wrong column count or an empty
            field.
    """
    path = Path(path)
    lines = _lines(path)
    positions = _columns(path, lines[0], KG_COLUMNS)
    width = len(lines[0].split("\t"))
    triples = []
    for number, line in enumerate(lines[1:], start=2):
        cells = _cells(path, number, line, width)
        triple = tuple(cells[p] for p in positions)
        if not all(triple):
            empty = KG_COLUMNS[triple.index("")].partition(":")[0]
            raise AtomicFormatError(path, number, f"empty {empty}")
        triples.append(triple)
    return triples


def read_user_file(path: str | Path) -> dict[str, np.ndarray]:
    """Attribute fields of a ``.user`` file, each an object array of str indexed by user id.

    Args:
        path: the file: ``user_id:token`` plus ``name:type`` attribute columns.

    Returns:
        field -> str per user id (``""`` for ids without a row).

    Raises:
        AtomicFormatError: naming the line, for a bad header, a wrong column count, a user id that
            is not a positive integer, or a repeated user.
    """
    path = Path(path)
    lines = _lines(path)
    (id_col,) = _columns(path, lines[0], (USER_ID_COLUMN,))
    header = [column.strip() for column in lines[0].split("\t")]
    names = []
    for c, column in enumerate(header):
        if c == id_col:
            continue
        name, colon, _ = column.partition(":")
        if not colon or not name or name in names:
            raise AtomicFormatError(path, 1, f"header column {column!r} is not a new 'name:type'")
        names.append(name)
    ids, rows, seen = [], [], {}
    for number, line in enumerate(lines[1:], start=2):
        cells = _cells(path, number, line, len(header))
        token = cells[id_col]
        if not _DIGITS.fullmatch(token) or int(token) == 0:
            raise AtomicFormatError(path, number, f"user id {token!r} is not a positive integer")
        user = int(token)
        if user in seen:
            raise AtomicFormatError(
                path, number, f"user {user} is repeated (first on line {seen[user]})"
            )
        seen[user] = number
        ids.append(user)
        rows.append([cell for c, cell in enumerate(cells) if c != id_col])
    size = max(ids, default=0) + 1
    fields = {}
    for f, name in enumerate(names):
        values = np.full(size, "", dtype=object)
        values[ids] = [row[f] for row in rows]
        fields[name] = values
    return fields

