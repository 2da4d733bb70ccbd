"""What a finished search leaves: the table of all trials and the optimisation-history plot."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from hpo.outcome import split_meta, trial_outcome  # noqa: E402

OUTCOME_ORDER = {"completed": 0, "stopped": 1, "failed": 2}


def results_table(grid, metric: str, mode: str) -> pd.DataFrame:
    """One row per trial, best first; failed trials last.

    Ties on the metric go to the trial that started first (Tune's trial order), so the choice is
    deterministic and never depends on anything but validation results.
    """
    rows = []
    for order, result in enumerate(grid):
        last = result.metrics or {}
        config, meta = split_meta(result.config)
        rows.append(
            {
                "trial_id": last.get("trial_id", Path(result.path).name if result.path else order),
                "order": order,
                "optuna_trial": meta.get("number"),
                "config_source": meta.get("source", ""),
                "outcome": trial_outcome(last, result.error is not None).value,
                "epochs": int(last.get("epoch", 0)),
                metric: last.get(metric, float("nan")),
                "best_epoch": last.get("best_epoch"),
                "error": _first_line(result.error),
                "config": json.dumps(config, sort_keys=True, default=str),
                **{f"param.{k}": v for k, v in sorted(config.items())},
            }
        )
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    failed = table["outcome"].map(OUTCOME_ORDER) == OUTCOME_ORDER["failed"]
    key = table[metric].fillna(float("-inf") if mode == "max" else float("inf"))
    table = table.assign(_failed=failed, _key=-key if mode == "max" else key)
    table = table.sort_values(["_failed", "_key", "order"], kind="stable")
    return table.drop(columns=["_failed", "_key"]).reset_index(drop=True)


def plot_history(table: pd.DataFrame, metric: str, mode: str, path: Path) -> None:
    """Objective per trial in start order, by outcome, with the best-so-far line.

    Drawn here rather than with Optuna's plot because that one leaves out pruned (ASHA-stopped)
    trials, which are most trials of an ASHA search.
    """
    fig, ax = plt.subplots(figsize=(7, 4))
    ordered = table.sort_values("order") if not table.empty else table
    markers = {"completed": ("o", "tab:blue"), "stopped": ("x", "tab:orange")}
    for outcome, (marker, color) in markers.items():
        part = ordered[ordered["outcome"] == outcome]
        ax.scatter(part["order"], part[metric], marker=marker, color=color, label=outcome)
    if not ordered.empty:
        scores = ordered[metric].where(ordered["outcome"] != "failed")
        best = scores.cummax() if mode == "max" else scores.cummin()
        ax.step(ordered["order"], best, where="post", color="tab:green", label="best so far")
    ax.set_xlabel("trial (start order)")
    ax.set_ylabel(metric)
    ax.set_title("Optimisation history")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _first_line(error) -> str:
    return str(error).strip().splitlines()[-1][:300] if error else ""
