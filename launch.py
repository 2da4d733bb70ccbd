"""Hyperparameter searches over CORE variants: `python launch.py --space dahn.yaml`.

The same command runs locally, on an existing Ray cluster (--address) or as a Ray job
(`ray job submit --working-dir . -- python launch.py ...`).
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

from hpo.cluster import Resources
from hpo.search import SearchPlan, latest_search_dir, new_search_dir, run_search
from hpo.space import METRICS, SpaceError, load_space, validate_budget
from hpo.tracking import TrackingUnavailableError, resolve_tracking_uri

DEFAULT_OUTPUT_DIR = Path("outputs")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="launch.py",
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--space", nargs="+", required=True, metavar="SPACE",
                        help="search-space file(s): a name in search_spaces/ (dahn.yaml) or a path")
    parser.add_argument("--dataset", default="synthetic",
                        help="dataset name resolved in --data-dir; 'synthetic' is generated")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="where datasets live (default: $CORE_DATA_DIR or ./datasets)")
    parser.add_argument("--stage", choices=("search", "test", "all"), default="search",
                        help="search: tune on validation; test: retrain the selection over "
                             "seeds and score on test; all: both")
    budget = parser.add_argument_group("budget (default: the space file's 'budget' section)")
    budget.add_argument("--num-samples", type=int, help="number of trials per space")
    budget.add_argument("--max-epochs", type=int, help="epoch budget of one trial (ASHA max_t)")
    budget.add_argument("--grace-period", type=int, help="epochs before ASHA may stop a trial")
    budget.add_argument("--reduction-factor", type=int, help="ASHA reduction factor")
    budget.add_argument("--metric", choices=METRICS, help="validation metric to optimise")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the TPE sampler and of every trial's training")
    resources = parser.add_argument_group("resources")
    resources.add_argument("--cpus-per-trial", type=float, default=1.0,
                           help="CPUs per trial (torch threads follow it)")
    resources.add_argument("--gpus-per-trial", type=float, default=0.0,
                           help="GPUs per trial; fractions pack trials onto one GPU")
    resources.add_argument("--max-concurrent", type=int, default=0,
                           help="trials running at once (0: as many as resources allow)")
    resources.add_argument("--address", default=None,
                           help="existing Ray cluster ('auto' or HOST:PORT); default: a local "
                                "instance, or the job's cluster under `ray job submit`")
    parser.add_argument("--mlflow-uri", default=None,
                        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else "
                             "sqlite:///<output-dir>/mlflow.db)")
    parser.add_argument("--output-dir", type=Path, default=DEFAULT_OUTPUT_DIR,
                        help="where searches keep trial checkpoints, tables and plots")
    parser.add_argument("--resume", action="store_true",
                        help="continue the latest interrupted search of each space")
    parser.add_argument("--dry-run", action="store_true",
                        help="validate the spaces and print the plan without running anything")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def make_plans(args: argparse.Namespace, command_line: str) -> list[SearchPlan]:
    """Validate everything that can be validated without starting Ray."""
    output_dir = args.output_dir.resolve()
    tracking_uri = resolve_tracking_uri(args.mlflow_uri, output_dir)
    plans = []
    for name in args.space:
        space = load_space(name)
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
            latest_search_dir(output_dir, args.dataset, space.name)
            if args.resume
            else new_search_dir(output_dir, args.dataset, space.name)
        )
        plans.append(
            SearchPlan(
                space=space,
                dataset=args.dataset,
                data_dir=args.data_dir,
                budget=budget,
                seed=args.seed,
                resources=Resources(args.cpus_per_trial, args.gpus_per_trial, args.max_concurrent,
                                    args.address),
                output_dir=output_dir,
                tracking_uri=tracking_uri,
                command_line=command_line,
                search_dir=search_dir,
            )
        )
    return plans


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        plans = make_plans(args, shlex.join(["python", "launch.py", *argv]))
        if args.dry_run:
            for plan in plans:
                print(plan.describe(), end="\n\n")
            return 0
        if args.stage != "search":
            raise SystemExit("--stage test/all: the test stage is not available yet")
        for plan in plans:
            print(plan.describe(), flush=True)
            table = run_search(plan, resume=args.resume)
            print(f"\n{plan.space.name}: {len(table)} trials, results in {plan.search_dir}")
            columns = ["trial_id", "outcome", "epochs", plan.tune_metric]
            print(table[columns].head(10).to_string(index=False))
    except (SpaceError, TrackingUnavailableError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
