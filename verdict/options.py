"""What the verdict shares with the command line and the seed runs, import-light (no pandas,
no scipy) so ``launch.py --help`` stays fast: the multiple-comparison corrections, the default
significance level, the arm name of a selected configuration and the metrics the tables show.
"""

from __future__ import annotations

CORRECTIONS = ("holm", "bonferroni", "fdr_bh", "none")  # multiple-comparison corrections
DEFAULT_ALPHA = 0.01
FULL_ARM = "full"  # the `arm` of a selected configuration retrained as it is
TABLE_METRICS = ("recall_20", "mrr_20")  # the metrics of the report's tables and the console


def check_correction(correction: str) -> str:
    """The correction name, checked.

    Args:
        correction: one of ``CORRECTIONS``.

    Returns:
        ``correction``.

    Raises:
        ValueError: not one of ``CORRECTIONS`` (the message lists them).
    """
    if correction not in CORRECTIONS:
        raise ValueError(f"unknown correction {correction!r}; expected one of {CORRECTIONS}")
    return correction
