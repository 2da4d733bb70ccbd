"""Choose each variant's configuration from its search, using the MLflow store alone.

Selection reads validation metrics only (``best_valid_*``): it refuses a metric name that is not
a validation metric, and a search run that holds any test metric is a broken protocol, reported
as such rather than used. Because it needs nothing but the tracking store, the test stage can run
later, on another machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mlflow.tracking import MlflowClient

from hpo.options import BASELINE_VARIANTS, STRONGEST
from hpo.tracking import PARENT_TAG, TRIAL_TAG
from models.registry import default_config

SELECTABLE = ("completed", "stopped")


class SelectionError(RuntimeError):
    """No usable search to select from; the message says which and why."""


@dataclass(frozen=True)
class Selection:
    dataset: str
    space: str
    variant: str
    search_run_id: str  # the search's parent run
    trial_run_id: str  # the chosen trial's run ("selected-from")
    trial_id: str
    metric: str
    value: float
    max_epochs: int
    config: dict[str, Any]


def select_best(
    client: MlflowClient, dataset: str, space: str, metric: str, *, mode: str = "max",
    search_run_id: str | None = None,
) -> Selection:
    """The best trial of the latest finished search of `space` on `dataset` (or of the given one).

    Failed trials are never chosen. Ties on the metric go to the trial trained for more epochs,
    then to the one that started first, so the choice is deterministic.
    """
    if not metric.startswith("valid_"):
        raise SelectionError(f"selection uses validation metrics only; got {metric!r}")
    key = f"best_{metric}"
    parent = _search_run(client, dataset, space, search_run_id)
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'",
        max_results=10_000,
    )
    leaked = sorted({k for c in children for k in c.data.metrics if k.startswith("test_")})
    if leaked:
        raise SelectionError(
            f"search run {parent.info.run_id} holds test metrics {leaked}: refusing to select "
            "from a search that saw the test split"
        )
    candidates = [
        c for c in children
        if c.data.tags.get("outcome") in SELECTABLE and key in c.data.metrics
    ]
    if not candidates:
        outcomes = sorted(c.data.tags.get("outcome", "unfinished") for c in children)
        raise SelectionError(
            f"search {parent.info.run_id} of {space!r} on {dataset!r} has no completed or "
            f"stopped trial with {key} (trials: {outcomes or 'none'})"
        )
    sign = 1 if mode == "max" else -1
    best = min(
        candidates,
        key=lambda c: (
            -sign * c.data.metrics[key],
            -int(c.data.tags.get("epochs_trained", 0)),
            c.info.start_time,
        ),
    )
    variant = parent.data.tags["variant"]
    return Selection(
        dataset=dataset,
        space=space,
        variant=variant,
        search_run_id=parent.info.run_id,
        trial_run_id=best.info.run_id,
        trial_id=best.data.tags[TRIAL_TAG],
        metric=metric,
        value=best.data.metrics[key],
        max_epochs=int(parent.data.params["budget.max_epochs"]),
        config=typed_config(variant, best.data.params),
    )


def typed_config(variant: str, params: dict[str, str]) -> dict[str, Any]:
    """MLflow params are strings; give each back the type of the variant's default value."""
    defaults = default_config(variant)
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise SelectionError(f"trial params {unknown} are not config keys of {variant!r}")
    return {key: _cast(value, type(defaults[key])) for key, value in params.items()}


def _cast(text: str, kind: type) -> Any:
    if kind is bool:
        if text not in ("True", "False"):
            raise SelectionError(f"expected True/False, got {text!r}")
        return text == "True"
    return kind(float(text)) if kind is int else kind(text)


def _search_run(client: MlflowClient, dataset: str, space: str, run_id: str | None):
    if run_id is not None:
        return client.get_run(run_id)
    name = f"{dataset}/{space}"
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        raise SelectionError(f"no search of {space!r} on {dataset!r}: MLflow has no experiment "
                             f"{name!r} (run the search stage first)")
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string="tags.stage = 'search' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=100,
    )
    parents = [r for r in runs if PARENT_TAG not in r.data.tags]
    if not parents:
        raise SelectionError(f"experiment {name!r} has no finished search run")
    return parents[0]




def strongest_baseline(selections, mode: str = "max") -> tuple[str, str]:
    """The baseline space for ``--baseline strongest``: of the ave, trm and kNN spaces
    (``hpo.options.BASELINE_VARIANTS``), the one whose
    selected trial scored better on validation (``Selection.value``); a tie goes to trm.

    Args:
        selections: the ``Selection`` of every compared space.
        mode: ``max`` or ``min``, the direction of the selection metric.

    Returns:
        (space name, a sentence saying how it was chosen, with the scores).

    Raises:
        SelectionError: no such space is compared, or their selections used different
            metrics (their values cannot be compared).
    """
    candidates = [s for s in selections if s.variant in BASELINE_VARIANTS]
    if not candidates:
        raise SelectionError(
            f"--baseline {STRONGEST} needs an ave, trm or kNN space among "
            f"{[s.space for s in selections]}"
        )
    metrics = sorted({s.metric for s in candidates})
    if len(metrics) > 1:
        raise SelectionError(f"--baseline {STRONGEST}: the baselines were selected on different "
                             f"metrics {metrics}; their scores cannot be compared")
    sign = 1 if mode == "max" else -1
    best = max(candidates, key=lambda s: (sign * s.value, s.variant == "trm"))
    scores = ", ".join(f"{s.space} {s.value:.4f}" for s in candidates)
    return best.space, (f"strongest baseline on validation: {scores} "
                        f"({mode} {metrics[0]} of the selected trial)")
