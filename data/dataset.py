"""In-memory session datasets: plain numpy arrays, cheap to pickle and to ship to Ray workers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from data.items import ItemTable

MAX_SEQ_LENGTH = 50
SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class Split:
    """One split: rows of (prefix, next item). Prefixes are right-padded with 0."""

    prefixes: np.ndarray  # int32 [n_rows, max_len], row i holds lengths[i] real ids then zeros
    lengths: np.ndarray  # int32 [n_rows], 1 <= length <= max_len
    targets: np.ndarray  # int64 [n_rows], ids >= 1
    # int64 [n_rows]: the user of each row's session, 1..n_users (0 = unknown), when the source
    # knows users (the optional ``user_id:token`` column); None otherwise.
    users: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.targets)
        if self.prefixes.ndim != 2 or len(self.prefixes) != n or len(self.lengths) != n:
            raise ValueError(
                f"inconsistent split arrays: prefixes {self.prefixes.shape}, "
                f"lengths {self.lengths.shape}, targets {self.targets.shape}"
            )
        if self.users is not None and len(self.users) != n:
            raise ValueError(f"users has {len(self.users)} entries for {n} rows")

    def __len__(self) -> int:
        return len(self.targets)

    @property
    def max_len(self) -> int:
        """The prefixes' padded length (columns of ``prefixes``)."""
        return self.prefixes.shape[1]

    @classmethod
    def from_rows(
        cls,
        prefixes: Sequence[Sequence[int]],
        targets: Sequence[int],
        max_len: int = MAX_SEQ_LENGTH,
    ) -> Split:
        """Build a split from Python lists; prefixes longer than max_len keep their last items."""
        n = len(targets)
        matrix = np.zeros((n, max_len), dtype=np.int32)
        lengths = np.zeros(n, dtype=np.int32)
        for i, prefix in enumerate(prefixes):
            kept = list(prefix)[-max_len:]
            matrix[i, : len(kept)] = kept
            lengths[i] = len(kept)
        return cls(matrix, lengths, np.asarray(targets, dtype=np.int64))

    def subset(self, rows: np.ndarray | slice) -> Split:
        """The split's rows ``rows`` (an index array or a slice), users included.

        Args:
            rows: which rows to keep, in the order given.
        """
        users = None if self.users is None else self.users[rows]
        return Split(self.prefixes[rows], self.lengths[rows], self.targets[rows], users)


@dataclass(frozen=True)
class GraphFiles:
    """The side files in dataset ids (any part may be empty when its file is missing).

    ``item_entity``: int64 [n_items], index into ``entities`` of each item's linked entity, -1
    for none (always at 0, the padding id). ``kg``: int64 [n_triples, 3] rows (head, relation,
    tail) indexing ``entities`` / ``relations``. ``user_fields``: field -> object array of str per
    user id (index 0 and users without a row: ``""``).
    """

    entities: np.ndarray  # str [n_entities]
    relations: np.ndarray  # str [n_relations]
    item_entity: np.ndarray  # int64 [n_items]
    kg: np.ndarray  # int64 [n_triples, 3]
    user_fields: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def n_links(self) -> int:
        """Items linked to a graph entity."""
        return int(np.sum(self.item_entity >= 0))

    def digest_parts(self) -> list[bytes]:
        """Byte strings that identify the content (for cache keys of derived data)."""
        parts = [
            "\n".join(self.entities.tolist()).encode(),
            "\n".join(self.relations.tolist()).encode(),
            self.item_entity.tobytes(),
            self.kg.tobytes(),
        ]
        for name, values in self.user_fields.items():
            parts.append(name.encode() + b"=" + "\n".join(values.tolist()).encode())
        return parts


def train_tail_name(name: str, rows: int) -> str:
    """The name a dataset cut to its last ``rows`` training rows is filed under.

    Args:
        name: the full dataset's name.
        rows: the training rows kept.

    Returns:
        ``<name>-last<rows>``.
    """
    return f"{name}-last{rows}"


@dataclass(frozen=True)
class SessionDataset:
    """The three splits of one benchmark plus the catalog size (max item id + 1, row 0 = pad).

    ``test`` is None in a dataset handed to the search stage (see ``without_test``), so that
    nothing run during hyperparameter selection can score the test split.
    """

    name: str
    n_items: int
    train: Split
    valid: Split
    test: Split | None
    # Item metadata from ``<name>.item`` (``data.items.ItemTable``), None when there is no file.
    items: ItemTable | None = None
    # Frozen semantic item vectors float32 [n_items, dim] (row 0, padding, all zeros) and the
    # text model that made them (``data.text``); None until attached with ``with_item_vectors``.
    item_vectors: np.ndarray | None = None
    text_model: str | None = None
    # Graph side files (``<name>.link`` / ``.kg`` / ``.user``, read by ``data.graph_files``) in
    # dataset ids; None until attached with ``with_graph_files`` (or when the dataset has none).
    graph_files: GraphFiles | None = None

    def with_item_vectors(self, vectors: np.ndarray, text_model: str) -> SessionDataset:
        """This dataset carrying ``vectors`` (one row per catalog id) made by ``text_model``."""
        if vectors.ndim != 2 or len(vectors) != self.n_items:
            raise ValueError(
                f"item vectors must be [n_items={self.n_items}, dim], got {vectors.shape}"
            )
        return replace(self, item_vectors=vectors, text_model=text_model)

    def with_graph_files(self, files: GraphFiles) -> SessionDataset:
        """This dataset carrying its graph side files (see ``data.graph_files``)."""
        if len(files.item_entity) != self.n_items:
            raise ValueError(
                f"graph files cover {len(files.item_entity)} item ids, not n_items={self.n_items}"
            )
        return replace(self, graph_files=files)

    def without_test(self) -> SessionDataset:
        """The dataset with its test split withheld (what a search may see)."""
        return replace(self, test=None)

    def with_train_tail(self, rows: int) -> SessionDataset:
        """Only the last ``rows`` training rows (the latest sessions of a file written in time
        order), for quick searches on a large benchmark. Validation, test and the catalog are
        unchanged, so metrics keep their scale; the name says what was cut."""
        if rows < 1:
            raise ValueError(f"train rows must be >= 1; got {rows}")
        start = max(0, len(self.train) - rows)
        return replace(self, name=train_tail_name(self.name, rows),
                       train=self.train.subset(slice(start, None)))

    def split(self, name: str) -> Split:
        """One split by name.

        Args:
            name: one of ``SPLITS``.

        Raises:
            ValueError: an unknown name, or a split the dataset withholds.
        """
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; expected one of {SPLITS}")
        split = getattr(self, name)
        if split is None:
            raise PermissionError(
                f"the {name} split of dataset {self.name!r} is withheld in this stage "
                "(selection must not see test data)"
            )
        return split

    def summary(self) -> str:
        """One line: the catalog's size and each split's rows (or "withheld")."""
        parts = [f"{self.name}: {self.n_items:,} items (incl. padding)"]
        for name in SPLITS:
            split = getattr(self, name)
            parts.append(f"{name} {len(split):,} rows" if split is not None else f"{name} withheld")
        return ", ".join(parts)
