"""A dataset as a search, a test stage or a training run names it, and what a variant needs of it.

``DatasetSource`` is the one place that turns (name, data dir, training cut, text model) into a
loaded ``SessionDataset``, with semantic item vectors attached when a variant needs them, and
that checks, before Ray or MLflow start, that the dataset can serve the variants asked for.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from data.dataset import SessionDataset, train_tail_name
from data.errors import DataError
from data.graph_files import attach_graph_files
from data.resolve import _generated_name, atomic_folder, load_dataset, resolve_data_dir
from data.text import attach_item_vectors, check_text_model, default_text_model


@dataclass(frozen=True)
class DatasetSource:
    """A dataset as a search or a test stage names it: a name, where its files are, an optional
    cut of the training split to its last ``train_rows`` rows, and the text model that makes the
    semantic item vectors (None: the packaged all-MiniLM-L6-v2).

    ``label`` is what experiments, runs and output folders are filed under, so a search on a cut
    dataset is never mixed with, or selected for, the full one.
    """

    name: str
    data_dir: Path | None = None
    train_rows: int | None = None
    text_model: str | None = None

    @property
    def label(self) -> str:
        """The dataset's name in results: its name, with ``-last<N>`` for a training-row cut."""
        return self.name if self.train_rows is None else train_tail_name(self.name, self.train_rows)

    def check(self, item_vectors: bool = False, graph_files: bool = False) -> None:
        """Fail now, with load's message, on an invalid name or the missing files of a
        non-generated dataset, so a plan (and --dry-run) is refused before Ray or MLflow start.

        Args:
            item_vectors: also require item text (a ``<name>.item`` file with a text field,
                read and validated here) and a valid text model, as the semantic variants do.
            graph_files: accepted for symmetry with ``load``; graph side files are optional.

        Raises:
            DataError: the dataset, its item text or the text model is missing or invalid.
        """
        generated = _generated_name(self.name)
        folder = None if generated else atomic_folder(self.name, resolve_data_dir(self.data_dir))
        if not item_vectors:
            return
        check_text_model(self.text_model or default_text_model())
        if folder is None:
            return  # generated data always has item text
        path = folder / f"{self.name}.item"
        if not path.is_file():
            raise DataError(
                f"dataset {self.name!r} has no item text: {path} not found. The semantic "
                "variants need a RecBole item file with a text field (e.g. a title) next to the "
                ".inter files; ml-100k's is written by `python -m data.prepare --dataset ml-100k`"
            )
        items = load_dataset(self.name, self.data_dir).items  # parses and validates the file
        if items is None or not items.has_text:
            raise DataError(f"{path}: no item has any text; the semantic variants need some")

    def load(self, item_vectors: bool = False, graph_files: bool = False) -> SessionDataset:
        """The dataset, cut to its last ``train_rows`` training rows if asked.

        Args:
            item_vectors: attach the semantic item vectors of its item text (computed once per
                dataset, model and text, then cached beside the dataset; see ``data.text``).
            graph_files: attach its graph side files (users, links, knowledge graph; see
                ``data.graph_files``), when it has them.
        """
        dataset = load_dataset(self.name, self.data_dir)
        if self.train_rows is not None:
            dataset = dataset.with_train_tail(self.train_rows)
        if item_vectors:
            dataset = attach_item_vectors(dataset, self.data_dir, self.text_model)
        if graph_files:
            dataset = attach_graph_files(dataset, self.data_dir)
        return dataset
