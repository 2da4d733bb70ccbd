"""How the report writes numbers and names: markdown tables, percents and intervals, the
paper's variant names, and the cells and notes that the seed-level tables (``verdict.tables``)
and the row-level ones (``verdict.row_tables``) share. Metrics are fractions and are shown in
percent (differences in percentage points).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from models.registry import LABELS as VARIANT_LABELS

BETTER, WORSE = "†", "‡"
MISSING = "–"
CORRECTION_LABELS = {
    "holm": "Holm",
    "bonferroni": "Bonferroni",
    "fdr_bh": "Benjamini-Hochberg (FDR)",
    "none": "no correction",
}


def variant_label(variant: str) -> str:
    """The paper's name of a variant (CORE-DA for da), or the name itself.

    Args:
        variant: a variant (space) name.
    """
    return VARIANT_LABELS.get(variant, variant)


FAMILY = "Correction family: "  # how family_text starts for one dataset


def family_text(tests: pd.DataFrame, unit: str = "variant", first: str = "variant") -> str:
    """How the correction's family was made, e.g. "correction family: 2 variants × 6 metrics =
    12 comparisons" (one family per dataset).

    Args:
        tests: a comparison table with dataset, ``first``, metric, family_size and correction.
        unit: what ``first`` counts, singular ("variant"; an s is added for more than one).
        first: the column whose distinct values make one factor of the family.
    """
    if tests.empty:
        return "No comparisons"
    if tests["correction"].iloc[0] == "none":
        return "No correction for multiple comparisons"
    parts = []
    for dataset, per_dataset in tests.groupby("dataset", sort=False):
        n_first = per_dataset[first].nunique()
        n_metrics = per_dataset["metric"].nunique()
        size = int(per_dataset["family_size"].iloc[0])
        text = f"{_count(n_first, unit)} × {_count(n_metrics, 'metric')}"
        if size != n_first * n_metrics:
            text += f", less {n_first * n_metrics - size} undefined,"
        parts.append((dataset, f"{text} = {size} comparisons"))
    if len(parts) == 1:
        return f"{FAMILY}{parts[0][1]}"
    return "Correction family per dataset: " + "; ".join(f"{d}: {t}" for d, t in parts)


def lower_first(text: str) -> str:
    """``text`` with its first character in lower case (a sentence set inside another).

    Args:
        text: a sentence.
    """
    return text[:1].lower() + text[1:]


# The columns of a comparison, after its first (what is compared with what, the difference).
COMPARISON_HEADER = ["Δ (points) [95% CI]", "d_z", "p", "p adj.", "significant",
                     "MDE (points)"]


def comparison_cells(r, correction: str) -> list[str]:
    """The cells of a comparison row under ``COMPARISON_HEADER``: Δ [CI], d_z, p, adjusted p,
    significant, MDE.

    Args:
        r: a row of a comparison table (``mean_diff``, ``ci_low``, ``ci_high``, ``d_z``,
            ``p_value``, ``p_adjusted``, ``significant``, ``mde``).
        correction: the table's correction (named beside the adjusted p).
    """
    return [
        f"{signed_pct(r.mean_diff)} {interval(r.ci_low, r.ci_high, signed=True)}",
        num(r.d_z),
        num(r.p_value),
        num(r.p_adjusted) + ("" if correction == "none" else f" ({correction})"),
        "yes" if r.significant else "no",
        mde_cell(r),
    ]


def mde_cell(r) -> str:
    """The minimum detectable effect of a comparison row in points: empty where the difference
    is significant, "n/a" where it is undefined.

    Args:
        r: a row with ``significant`` and ``mde``.
    """
    if r.significant:
        return ""
    return pct(r.mde) if not math.isnan(r.mde) else "n/a"


def notes_line(frame: pd.DataFrame) -> str:
    """The line under a table that lists why some of its tests are undefined ("" when none is).

    Args:
        frame: a comparison table with a ``note`` column.
    """
    notes = sorted({n for n in frame["note"].fillna("") if n})
    return ("\n\nUndefined: " + "; ".join(notes) + ".") if notes else ""


def adjusted_label(correction: str) -> str:
    """How a table's p-values are named: "raw", or "Holm-adjusted" and the like.

    Args:
        correction: one of ``verdict.options.CORRECTIONS``.
    """
    return "raw" if correction == "none" else f"{CORRECTION_LABELS[correction]}-adjusted"


def spread_cell(row, name: str) -> str:
    """A fraction over seeds as "mean ± std [interval]" in percent ("n/a" when missing).

    Args:
        row: a table row with ``name`` and ``name`` + ``_std`` / ``_ci_low`` / ``_ci_high``.
        name: the measure.
    """
    if _missing(row[name]):
        return "n/a"
    text = f"{pct(row[name])} ± {pct(row[name + '_std'])}"
    spread = interval(row[name + "_ci_low"], row[name + "_ci_high"])
    return f"{text} {spread}" if spread else text


def fixed_cell(row, name: str, digits: int) -> str:
    """A non-percent value over seeds as "mean ± std" with ``digits`` decimals ("n/a" when
    missing).

    Args:
        row: a table row with ``name`` and ``name`` + ``_std``.
        name: the measure.
        digits: decimals shown.
    """
    if _missing(row[name]):
        return "n/a"
    std = row[name + "_std"]
    return f"{row[name]:.{digits}f}" + ("" if _missing(std) else f" ± {std:.{digits}f}")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub markdown table.

    Args:
        header: the column titles.
        rows: the cells, as text, one sequence per row.
    """
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def pct(fraction: float) -> str:
    """A fraction in percent with 2 decimals ("n/a" for nan).

    Args:
        fraction: the value, e.g. 0.4512.
    """
    return "n/a" if _missing(fraction) else f"{100 * fraction:.2f}"


def signed_pct(fraction: float) -> str:
    """A difference of fractions in percentage points, signed ("n/a" for nan).

    Args:
        fraction: the difference, e.g. -0.0031.
    """
    return "n/a" if _missing(fraction) else f"{100 * fraction:+.2f}"


def interval(low: float, high: float, signed: bool = False) -> str:
    """An interval of fractions in percent, "[low, high]" ("" when undefined).

    Args:
        low: lower end.
        high: upper end.
        signed: write signs (for differences).
    """
    if _missing(low) or _missing(high):
        return ""
    fmt = signed_pct if signed else pct
    return f"[{fmt(low)}, {fmt(high)}]"


def num(value: float) -> str:
    """A statistic with 3 significant digits ("n/a" for nan).

    Args:
        value: the number.
    """
    return "n/a" if _missing(value) else f"{value:.3g}"


def _count(n: int, unit: str) -> str:
    return f"{n} {unit}" if n == 1 else f"{n} {unit}s"


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or pd.isna(value)
