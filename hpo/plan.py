"""Planning of a launch: everything validated from the command line's arguments before Ray starts.

``make_plans`` builds one ``SearchPlan`` per space; ``check_test_stage_args`` checks the test
stage's options (baseline, seeds, ablation arms) before any search runs; ``make_test_plan``
selects each space's configuration from MLflow and fixes the test stage's ``TestPlan``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from data import DatasetSource
from hpo.ablation import parse_arms, validate_arms
from hpo.cluster import Resources, in_ray_job, validate_resources
from hpo.fairness import check_fair_arms
from hpo.search import SearchPlan, latest_search_dir, new_search_dir
from hpo.seed_runs import TestPlan
from hpo.selection import (
    BASELINE_VARIANTS,
    STRONGEST,
    select_best,
    strongest_baseline,
)
from hpo.space import SpaceError, load_space, validate_budget
from hpo.tracking import check_tracking, resolve_tracking_uri
from models.registry import dataset_needs
from verdict.options import check_correction

log = logging.getLogger("launch")


def make_plans(args: argparse.Namespace, command_line: str) -> list[SearchPlan]:
    """One search plan per ``--space``, everything validated that can be without starting Ray.

    Args:
        args: launch.py's parsed arguments.
        command_line: the command as typed, recorded with every run.

    Raises:
        SpaceError: a space file or budget is invalid.
        hpo.fairness.UnequalSpacesError: several spaces searched with ``--stage search|all``
            search a knob they share differently, or have different budgets (unless
            ``--allow-unequal-spaces``).
        ValueError, FileNotFoundError: the dataset or resources are.
    """
    text_model = str(args.text_model) if getattr(args, "text_model", None) else None
    dataset = DatasetSource(args.dataset, args.data_dir, args.train_rows, text_model)
    spaces = [load_space(name) for name in args.space]
    # Item text (and the text model) or graph files a variant needs: refused now, not in a trial.
    dataset.check(**dataset_needs([space.model for space in spaces]))
    output_dir = args.output_dir.resolve()
    tracking_uri = resolve_tracking_uri(args.mlflow_uri, output_dir)
    resources = Resources(args.cpus_per_trial, args.gpus_per_trial, args.max_concurrent,
                          args.address, storage_path=args.storage_path,
                          max_failures=args.max_failures, require_cuda=args.require_cuda)
    validate_resources(resources)
    relative = [f"{flag} {path}" for flag, path in (("--output-dir", args.output_dir),
                                                     ("--storage-path", args.storage_path))
                if path and "://" not in str(path) and not Path(path).is_absolute()]
    if in_ray_job() and relative:
        log.warning("%s: relative to the Ray job's working directory (%s), a temporary copy Ray "
                    "deletes: pass absolute paths", ", ".join(relative), Path.cwd())
    plans, budgets = [], []
    for name, space in zip(args.space, spaces, strict=True):
        overrides = {
            "num_samples": args.num_samples,
            "max_epochs": args.max_epochs,
            "grace_period": args.grace_period,
            "reduction_factor": args.reduction_factor,
            "metric": args.metric,
        }
        budget = space.budget_for(args.dataset).with_overrides(**overrides)
        if args.grace_period is None and budget.grace_period > budget.max_epochs:
            budget = budget.with_overrides(grace_period=budget.max_epochs)
        validate_budget(budget, lambda problem, n=name: SpaceError(f"{n}: {problem}"))
        search_dir = (
            latest_search_dir(output_dir, dataset.label, space.name)
            if args.resume
            else new_search_dir(output_dir, dataset.label, space.name)
        )
        budgets.append(budget)
        plans.append(
            SearchPlan(
                space=space,
                dataset=dataset,
                budget=budget,
                seed=args.seed,
                resources=resources,
                output_dir=output_dir,
                tracking_uri=tracking_uri,
                command_line=command_line,
                search_dir=search_dir,
                optuna_storage=getattr(args, "optuna_storage", None),
                precision=getattr(args, "precision", None),
            )
        )
    if args.stage in ("search", "all") and len(spaces) > 1:
        differences = check_fair_arms(spaces, budgets,
                                      allow=getattr(args, "allow_unequal_spaces", False))
        for difference in differences:
            log.warning("unequal arms (--allow-unequal-spaces): %s", difference)
    return plans


def unequal_arms_note(args: argparse.Namespace, plans: list[SearchPlan]) -> str:
    """What the report says when ``--allow-unequal-spaces`` let unequal arms be compared: each
    difference in one sentence ("" when the arms are equal or the check was not overridden).

    Args:
        args: launch.py's parsed arguments.
        plans: the search plans of the compared spaces.
    """
    if not getattr(args, "allow_unequal_spaces", False) or len(plans) < 2:
        return ""
    differences = check_fair_arms([plan.space for plan in plans],
                                  [plan.budget for plan in plans], allow=True)
    return "; ".join(map(str, differences))


def check_test_stage_args(args: argparse.Namespace, plans: list[SearchPlan]) -> None:
    """The test stage's options, checked before anything runs (searches included).

    Args:
        args: launch.py's parsed arguments.
        plans: the search plans of the compared spaces.

    Raises:
        SpaceError: the baseline is not compared (or, for ``strongest``, neither ave nor trm
            is), --seeds is below 2, or --ablate is given without the test stage.
        hpo.ablation.AblationError: an arm's key is no compared variant's, or its value is
            invalid for one.
    """
    arms = parse_arms(args.ablate)
    if args.stage == "search":
        if arms:
            raise SpaceError("--ablate retrains selected configurations in the test stage: "
                             "add --stage test or --stage all")
        return
    names = [plan.space.name for plan in plans]
    if args.baseline == STRONGEST:
        if not any(plan.space.model in BASELINE_VARIANTS for plan in plans):
            raise SpaceError(f"--baseline {STRONGEST} picks the best of the ave, trm and kNN "
                             f"spaces, and none is among the spaces {names}: add ave.yaml, "
                             "trm.yaml or a kNN space (sknn.yaml, ...) to --space, or name the "
                             "baseline")
    elif args.baseline not in names:
        raise SpaceError(f"--baseline {args.baseline!r} is not among the spaces {names}: add its "
                         "space file to --space (the test stage compares every space with it)")
    if args.seeds < 2:
        raise SpaceError(f"--seeds must be >= 2 for paired statistics; got {args.seeds}")
    check_correction(args.correction)
    if not 0.0 < args.alpha < 1.0:
        raise SpaceError(f"--alpha must be in (0, 1); got {args.alpha}")
    validate_arms(arms, [plan.space.model for plan in plans])


def describe_test_stage(args: argparse.Namespace) -> str:
    """The test stage's options in a few lines, for --dry-run.

    Args:
        args: launch.py's parsed arguments.
    """
    first = args.seed + 1
    arms = parse_arms(args.ablate)
    return "\n".join([
        f"test stage  seeds {first}..{first + args.seeds - 1}; baseline {args.baseline}; "
        f"{args.correction} correction, alpha {args.alpha:g}",
        "ablation    " + (", ".join(arm.name for arm in arms) if arms else "-"),
    ])


def make_test_plan(
    args: argparse.Namespace, plans: list[SearchPlan], search_runs: dict[str, str],
    command_line: str,
) -> TestPlan:
    """Select each space's configuration from MLflow (the searches just run, or the latest) and
    fix the test stage: seeds, baseline (resolving ``strongest``), arms, correction.

    Args:
        args: launch.py's parsed arguments.
        plans: the search plans of the compared spaces.
        search_runs: space name -> the parent run of the search just run (others: the latest).
        command_line: the command as typed.

    Raises:
        hpo.selection.SelectionError: a space has no usable search.
    """
    client = check_tracking(plans[0].tracking_uri)
    selections = []
    for plan in plans:
        selection = select_best(client, plan.dataset.label, plan.space.name, plan.budget.metric,
                                mode=plan.budget.mode,
                                search_run_id=search_runs.get(plan.space.name))
        print(f"selected for {plan.space.name}: trial {selection.trial_id} "
              f"({selection.metric} {selection.value:.4f}, run {selection.trial_run_id})")
        selections.append(selection)
    baseline, baseline_note = args.baseline, ""
    if args.baseline == STRONGEST:
        modes = {plan.space.name: plan.budget.mode for plan in plans
                 if plan.space.model in BASELINE_VARIANTS}
        baseline, baseline_note = strongest_baseline(selections, next(iter(modes.values())))
        print(f"baseline: {baseline} ({baseline_note})")
    first = args.seed + 1
    return TestPlan(
        dataset=plans[0].dataset,
        selections=tuple(selections),
        seeds=tuple(range(first, first + args.seeds)),
        baseline=baseline,
        output_dir=plans[0].output_dir,
        tracking_uri=plans[0].tracking_uri,
        resources=plans[0].resources,
        command_line=command_line,
        baseline_rule=args.baseline,
        baseline_note=baseline_note,
        arms=parse_arms(args.ablate),
        correction=args.correction,
        alpha=args.alpha,
        resample_seed=args.seed,
        max_epochs=args.retrain_max_epochs,
        unequal_arms=unequal_arms_note(args, plans),
        precision=getattr(args, "precision", None),
    )
