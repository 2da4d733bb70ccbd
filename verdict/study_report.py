"""A study's reports rebuilt from its exported files alone (``verdict.study_results``): each
complete dataset's test-stage report (``verdict.report``), the study's Table 1 across datasets
(``table1.md``) and README's copy of it.

What the study's pieces have done, which baseline each dataset has and how its results were made
come from the study's runner (``hpo.studies.study_status``) as a ``StudyStatus``: the verdict
reads files and numbers, never the study file or the search.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import NamedTuple

from models.registry import LABELS as VARIANT_LABELS
from verdict.markdown import variant_label
from verdict.options import FULL_ARM
from verdict.plots import plot_sensitivity, sensitivity_frame
from verdict.report import split_arms, write_report
from verdict.seed_level import paired_tests
from verdict.study_results import StudyResults, file_sha256
from verdict.tables import progress_table_markdown, study_table_markdown

TABLE_FILE = "table1.md"  # the study's Table 1, beside its datasets' folders
SENSITIVITY_FILE = "sensitivity.png"  # searched parameters against validation, beside it
COSTS_FILE = "pieces.csv"  # what every exported piece cost, beside it
INPUTS_FILE = "inputs.sha256"  # in a report's folder: what it was built from (report_inputs)
# the libraries whose numbers a report prints (tests, corrections, resampling, figures)
REPORT_LIBRARIES = ("numpy", "pandas", "scipy", "statsmodels", "matplotlib")
# what the report takes from models/: the head / tail / cold groups and the metrics
REPORT_MODULES = ("item_groups.py", "metrics.py")


@dataclass(frozen=True)
class DatasetStatus:
    """One dataset of a study, as its report and Table 1 see it.

    Attributes:
        label: the dataset's label (its training-row cut included).
        runs: the finished seed runs, (space, arm, seed) in report order.
        skipped_arms: (label, space, arm) -> why that ablation arm was not retrained.
        pieces_done: the dataset's pieces done or skipped.
        pieces_total: the dataset's pieces.
        finished_spaces: the spaces whose selected configuration finished every seed run, in
            the study's order.
        baseline: the space every other one is compared with ("" until every piece is done).
        baseline_note: how the baseline was chosen, for the report's opening lines.
        protocol_notes: the report's lines on how the results were made (training rows,
            budgets, unequal arms, ...).
    """

    label: str
    runs: tuple[tuple[str, str, int], ...]
    skipped_arms: Mapping[tuple[str, str, str], str]
    pieces_done: int
    pieces_total: int
    finished_spaces: tuple[str, ...] = ()
    baseline: str = ""
    baseline_note: str = ""
    protocol_notes: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        """Whether every piece of the dataset is done (or skipped)."""
        return self.pieces_done == self.pieces_total


@dataclass(frozen=True)
class StudyStatus:
    """A study, as its reports see it.

    Attributes:
        name: the study's name.
        results_dir: its exported files (``studies/<name>/``, ``verdict.study_results``).
        datasets: each dataset's status, in the study's order.
        alpha: the significance level of every table.
        correction: one of ``verdict.options.CORRECTIONS``.
        resample_seed: seed of the session-level randomization and bootstrap tests.
        sensitivity: searched parameters drawn against validation from the search trials of
            every space that samples them (``sensitivity_points``).
        sensitivity_spaces: those spaces, in the study's order.
    """

    name: str
    results_dir: Path
    datasets: tuple[DatasetStatus, ...]
    alpha: float
    correction: str
    resample_seed: int = 0
    sensitivity: tuple[str, ...] = ()
    sensitivity_spaces: tuple[str, ...] = ()

    @property
    def table_file(self) -> Path:
        """The study's Table 1: ``studies/<name>/table1.md``."""
        return self.results_dir / TABLE_FILE

    @property
    def sensitivity_file(self) -> Path:
        """The study's sensitivity figure: ``studies/<name>/sensitivity.png``."""
        return self.results_dir / SENSITIVITY_FILE


def sensitivity_points(status: StudyStatus):
    """The search trials of ``status.sensitivity_spaces`` on every dataset whose search of
    them finished, as ``verdict.plots.sensitivity_frame`` rows for ``status.sensitivity``.

    Args:
        status: the study's status.

    Returns:
        The points (empty when no such search finished or no parameter is named).
    """
    results = StudyResults(status.results_dir)
    searches = []
    for dataset in status.datasets:
        for space in status.sensitivity_spaces:
            record = results.search(dataset.label, space)
            if record is not None:
                searches.append((dataset.label, space, results.trials(dataset.label, space),
                                 record))
    return sensitivity_frame(searches, status.sensitivity)


class ReportFolder(NamedTuple):
    """A dataset's report folder, and whether this call wrote it (False: it was current)."""

    folder: Path
    rebuilt: bool


def report_inputs(status: StudyStatus, dataset: DatasetStatus) -> str:
    """What a dataset's report is a function of, as one SHA-256: every exported file of the
    dataset (its data, searches and seed runs; not the report), the report's settings (runs,
    skipped arms, baseline, alpha, correction, resampling seed, notes), the ``verdict``
    package's source with the modules of ``models`` it reads (``REPORT_MODULES``: the item
    groups and the metrics) and the variants' labels, and the versions of the libraries it
    computes with.

    Args:
        status: the study's status.
        dataset: the dataset's status.

    Returns:
        The hex digest; equal digests build byte-for-byte the same tables.
    """
    results = StudyResults(status.results_dir)
    root = results.dataset_dir(dataset.label)
    report = results.report_dir(dataset.label)
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and report not in p.parents):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(file_sha256(path).encode())
    settings = (dataset.runs, sorted(dataset.skipped_arms.items()), dataset.baseline,
                dataset.baseline_note, dataset.protocol_notes, status.alpha, status.correction,
                status.resample_seed)
    digest.update(repr(settings).encode())
    package = Path(__file__).resolve().parent
    for source in [*sorted(package.glob("*.py")),
                   *(package.parent / "models" / name for name in REPORT_MODULES)]:
        digest.update(source.name.encode() + b"\0" + source.read_bytes())
    digest.update(repr(sorted(VARIANT_LABELS.items())).encode())
    for library in REPORT_LIBRARIES:
        try:
            digest.update(f"{library}=={version(library)}".encode())
        except PackageNotFoundError:
            digest.update(f"{library} absent".encode())
    return digest.hexdigest()


def write_study_reports(status: StudyStatus, labels: Sequence[str] | None = None, *,
                        force: bool = False) -> dict[str, ReportFolder]:
    """Rebuild each complete dataset's test-stage report from the study's files alone, and the
    study's Table 1 (``table1.md``).

    A report whose inputs (``report_inputs``) are those it was last built from, as recorded in
    its folder's ``inputs.sha256``, is left as it is: a finished dataset's session-level tests
    take minutes, and a study rebuilds its Table 1 after every piece.

    Args:
        status: the study's status.
        labels: the datasets to report (default: every complete one).
        force: rebuild every chosen report even where it is current.

    Returns:
        dataset label -> its report folder, and whether it was rebuilt.

    Raises:
        ValueError: a dataset named in ``labels`` has no baseline yet (a piece is not done).
    """
    results = StudyResults(status.results_dir)
    chosen = [d for d in status.datasets if d.label in labels] if labels is not None else [
        d for d in status.datasets if d.complete]
    out = {}
    for dataset in chosen:
        if not dataset.baseline:
            raise ValueError(f"{dataset.label}: no report before every piece is done")
        folder = results.report_dir(dataset.label)
        inputs = report_inputs(status, dataset)
        record = folder / INPUTS_FILE
        if not force and record.is_file() and record.read_text().strip() == inputs:
            out[dataset.label] = ReportFolder(folder, False)
            continue
        record.unlink(missing_ok=True)  # a build stopped half way is never taken as current
        write_report(folder, results.test_results(dataset.label, dataset.runs,
                                                  skipped_arms=dataset.skipped_arms),
                     baseline=dataset.baseline, alpha=status.alpha,
                     correction=status.correction, baseline_note=dataset.baseline_note,
                     resample_seed=status.resample_seed, protocol_notes=dataset.protocol_notes)
        record.write_text(inputs + "\n")
        out[dataset.label] = ReportFolder(folder, True)
    status.results_dir.mkdir(parents=True, exist_ok=True)
    status.table_file.write_text(study_table(status) + "\n")
    results.piece_costs().to_csv(status.results_dir / COSTS_FILE, index=False)
    points = sensitivity_points(status)
    if not points.empty:
        plot_sensitivity(points, status.sensitivity_file)
    return out


def study_table(status: StudyStatus) -> str:
    """The study's Table 1 across its datasets (``verdict.tables.study_table_markdown``): test
    R@20 / MRR@20 mean ± std per arm, the best per dataset in bold, significance against each
    dataset's baseline marked; datasets still running are listed below it with their progress
    and the arms that finished every seed run.

    Args:
        status: the study's status.

    Returns:
        The table's markdown.
    """
    results = StudyResults(status.results_dir)
    parts, pending, progress = [], [], []
    for dataset in status.datasets:
        if not dataset.complete:
            pending.append(f"{dataset.label}: {dataset.pieces_done} of {dataset.pieces_total} "
                           "pieces done")
            runs = [run for run in dataset.runs
                    if run[1] == FULL_ARM and run[0] in dataset.finished_spaces]
            if runs:
                frame, _, _ = results.seed_results(dataset.label, runs)
                progress.append((dataset.label, frame.drop(columns="arm")))
            continue
        seed_results, _, _ = results.seed_results(dataset.label, dataset.runs)
        full, _ = split_arms(seed_results)
        tests = paired_tests(full, dataset.baseline, alpha=status.alpha,
                             correction=status.correction)
        parts.append((dataset.label, full, tests, dataset.baseline))
    text = study_table_markdown(parts, alpha=status.alpha, correction=status.correction)
    if pending:
        text += "\n\nIn progress: " + "; ".join(pending) + "."
    points = sensitivity_points(status)
    if not points.empty:
        trials = points.drop_duplicates(["dataset", "space", "trial_id"])
        where = f"{status.results_dir.parent.name}/{status.results_dir.name}/{SENSITIVITY_FILE}"
        text += (f"\n\nSensitivity of {' and '.join(status.sensitivity)}: the "
                 f"{len(trials)} search trials of "
                 f"{' and '.join(variant_label(s) for s in dict.fromkeys(points['space']))} "
                 f"on {', '.join(dict.fromkeys(points['dataset']))} against their best "
                 f"validation score, in `{where}` (what the searches saw, not a controlled "
                 "sweep: the other parameters vary too, and early-stopped trials ran fewer "
                 "epochs).")
    costs = results.piece_costs()
    if not costs.empty:
        hours = (costs["wall_s"].fillna(0) / costs["side_by_side"]).groupby(costs["kind"]).sum()
        hours = hours / 3600
        where = f"{status.results_dir.parent.name}/{status.results_dir.name}/{COSTS_FILE}"
        text += (f"\n\nCompute so far: {len(costs)} pieces, {hours.sum():.1f} h of wall time "
                 f"(searches {hours.get('search', 0.0):.1f} h, seed runs "
                 f"{hours.get('seed', 0.0):.1f} h, seed runs side by side counted once); each "
                 f"piece's wall time, attempts and CPU in `{where}`.")
    if progress:
        text += ("\n\nArms of the datasets in progress that have finished every seed run (test "
                 "R@20 / M@20 in percent, mean ± std over seeds; no baseline, tests or marks "
                 "until every arm of the dataset is done):\n\n" + progress_table_markdown(progress))
    return text


def readme_markers(name: str) -> tuple[str, str]:
    """The lines around a study's Table 1 in README.md (``replace_readme_table``).

    Args:
        name: the study's name.

    Returns:
        (the first line, the last line).
    """
    return (f"<!-- study {name}: table (made by launch.py --study ... --report) -->",
            f"<!-- end of study {name}: table -->")


def replace_readme_table(readme: Path, *, name: str, table_file: Path) -> bool:
    """Replace a study's Table 1 block in a README (between ``readme_markers``) with the table
    file's text, so README's numbers are the study files' numbers.

    Args:
        readme: the README.
        name: the study's name.
        table_file: the study's Table 1 (``StudyStatus.table_file``).

    Returns:
        Whether the README held the block (and was rewritten where it changed).
    """
    if not readme.is_file():
        return False
    start, end = readme_markers(name)
    text = readme.read_text()
    if start not in text or end not in text:
        return False
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    table = table_file.read_text().strip()
    new = f"{head}{start}\n{table}\n{end}{tail}"
    if new != text:
        readme.write_text(new)
    return True
