"""A study's reports rebuilt from its exported files alone (``verdict.study_results``): each
complete dataset's test-stage report (``verdict.report``), the study's Table 1 across datasets
(``table1.md``) and README's copy of it.

What the study's pieces have done, which baseline each dataset has and how its results were made
come from the study's runner (``hpo.studies.study_status``) as a ``StudyStatus``: the verdict
reads files and numbers, never the study file or the search.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from verdict.markdown import variant_label
from verdict.options import FULL_ARM
from verdict.plots import plot_sensitivity, sensitivity_frame
from verdict.report import split_arms, write_report
from verdict.seed_level import paired_tests
from verdict.study_results import StudyResults
from verdict.tables import progress_table_markdown, study_table_markdown

TABLE_FILE = "table1.md"  # the study's Table 1, beside its datasets' folders
SENSITIVITY_FILE = "sensitivity.png"  # searched parameters against validation, beside it
COSTS_FILE = "pieces.csv"  # what every exported piece cost, beside it


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


def write_study_reports(status: StudyStatus,
                        labels: Sequence[str] | None = None) -> dict[str, Path]:
    """Rebuild each complete dataset's test-stage report from the study's files alone, and the
    study's Table 1 (``table1.md``).

    Args:
        status: the study's status.
        labels: the datasets to report (default: every complete one).

    Returns:
        dataset label -> its report folder.

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
        write_report(folder, results.test_results(dataset.label, dataset.runs,
                                                  skipped_arms=dataset.skipped_arms),
                     baseline=dataset.baseline, alpha=status.alpha,
                     correction=status.correction, baseline_note=dataset.baseline_note,
                     resample_seed=status.resample_seed, protocol_notes=dataset.protocol_notes)
        out[dataset.label] = folder
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
                frame, _ = results.seed_results(dataset.label, runs)
                progress.append((dataset.label, frame.drop(columns="arm")))
            continue
        seed_results, _ = results.seed_results(dataset.label, dataset.runs)
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
