"""Hyperparameter searches over CORE variants: `python launch.py --space dahn.yaml`, or a whole
study, piece by piece: `python launch.py --study studies/table1.yaml`.

The same command runs locally, on an existing Ray cluster (--address) or as a Ray job
(`ray job submit --working-dir . -- python launch.py ...`).
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

# Only import-light modules here: `--help` must not wait for torch, Ray or MLflow; the rest is
# imported when a command runs (see `main`).
from data.cli import OneLineParser, non_negative_int, positive_int
from data.locations import list_datasets, resolve_data_dir
from hpo.options import (
    DEFAULT_RETRAIN_MAX_EPOCHS,
    METRICS,
    STRONGEST,
    list_spaces,
)
from models.precision import PRECISIONS
from verdict.options import CORRECTIONS, DEFAULT_ALPHA

DEFAULT_OUTPUT_DIR = Path("outputs")
# Exit status of a run stopped with Ctrl-C (128 + SIGINT, as a shell reports it).
INTERRUPTED = 130


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows defaults, except where there is none to show (None) or the help already says it;
    keeps the description's and epilog's line breaks."""

    def _get_help_string(self, action):
        if action.default is None or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """The command's parser: a search (``--space``, ``--dataset``) or a study (``--study``)."""
    parser = OneLineParser(
        prog="launch.py",
        description=__doc__,
        formatter_class=_HelpFormatter,
        epilog=_available(),
    )
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--space", nargs="+", metavar="SPACE",
                      help="search-space file(s): a name in search_spaces/ (dahn.yaml) or a path")
    what.add_argument("--study", type=Path, metavar="FILE",
                      help="a study file (studies/table1.yaml): its datasets, spaces, budget, "
                           "seeds and arms, run piece by piece, each piece's results exported "
                           "under studies/<name>/ (see --only, --max-hours, --commit, --report)")
    parser.add_argument("--dataset", default="synthetic",
                        help="dataset name resolved in --data-dir; 'synthetic' is generated")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="where datasets live (default: $CORE_DATA_DIR or ./datasets)")
    parser.add_argument("--text-model", type=Path, default=None, metavar="PATH",
                        help="local sentence-transformers model folder that embeds the item text "
                             "for the semantic variants (semsr_*); default: the packaged "
                             "all-MiniLM-L6-v2 (nothing is downloaded)")
    parser.add_argument("--train-rows", type=positive_int, default=None, metavar="N",
                        help="train on the last N training rows only (quick searches on a large "
                             "benchmark; validation, test and catalog unchanged); runs are filed "
                             "under '<dataset>-lastN', apart from the full dataset's")
    parser.add_argument("--stage", choices=("search", "test", "all"), default="search",
                        help="search: tune on validation; test: take each space's best "
                             "configuration from MLflow, retrain it over --seeds and score on "
                             "test; all: search, then test")
    budget = parser.add_argument_group(
        "budget (default: the space file's budget for the dataset)")
    budget.add_argument("--num-samples", "--budget", type=positive_int,
                        help="number of trials per space")
    budget.add_argument("--max-epochs", type=positive_int,
                        help="epoch budget of one trial (ASHA max_t)")
    budget.add_argument("--grace-period", type=positive_int,
                        help="epochs before ASHA may stop a trial")
    budget.add_argument("--reduction-factor", type=positive_int, help="ASHA reduction factor")
    budget.add_argument("--metric", choices=METRICS, help="validation metric to optimise")
    parser.add_argument("--allow-unequal-spaces", action="store_true",
                        help="compare spaces that search a knob they share differently (or with "
                             "different budgets); refused by default, and the report says so")
    parser.add_argument("--precision", choices=PRECISIONS, default=None,
                        help="numeric precision of every trial and seed run: auto (bf16 where "
                             "bf16 matrix products are native: AMX, AVX-512 BF16, CUDA; else "
                             "fp32), fp32 or bf16 (default: the configs', auto; a study file's "
                             "precision: pins it); recorded in MLflow (param precision, tag "
                             "precision_used)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the TPE sampler and of every trial's training")
    parser.add_argument("--optuna-storage", default=None, metavar="URL",
                        help="where each search keeps its Optuna study (a SQLAlchemy URL, e.g. "
                             "postgresql://user@host/db); default: sqlite:///<output-dir>/"
                             "optuna.db. Open it with `optuna-dashboard URL`")
    protocol = parser.add_argument_group("test stage (selection-then-test)")
    protocol.add_argument("--seeds", type=positive_int, default=5,
                          help="seeds the selected configuration of each space is retrained "
                               "with (seed+1 .. seed+N), each scored once on test")
    protocol.add_argument("--retrain-max-epochs", type=positive_int,
                          default=DEFAULT_RETRAIN_MAX_EPOCHS, metavar="N",
                          help="epoch budget of each retraining; the config's patience (5 by "
                               "default, as in the CORE protocol) stops it earlier")
    protocol.add_argument("--baseline", default="trm",
                          help="space every other space is compared with (paired tests), or "
                               f"'{STRONGEST}': of the ave, trm and kNN spaces, the one with the "
                               "best validation score of its selected trial")
    protocol.add_argument("--correction", choices=CORRECTIONS, default="holm",
                          help="multiple-comparison correction within each table's family of "
                               "comparisons (e.g. variants x metrics)")
    protocol.add_argument("--alpha", type=float, default=DEFAULT_ALPHA,
                          help="significance level, on the corrected p-values")
    protocol.add_argument("--ablate", nargs="+", action="append", metavar="KEY=VALUE",
                          help="an ablation arm (repeat the option for more arms; several "
                               "KEY=VALUE in one option change them together): retrain the "
                               "selected configuration of every compared variant that has KEY, "
                               "with KEY set to VALUE (YAML), over the same seeds, and report "
                               "it against the full model (ablation.csv)")
    resources = parser.add_argument_group("resources")
    resources.add_argument("--cpus-per-trial", type=float, default=1.0,
                           help="CPUs per trial (torch threads follow it)")
    resources.add_argument("--gpus-per-trial", type=float, default=0.0,
                           help="GPUs per trial, at most 1; fractions pack trials onto one GPU "
                                "(0.25: four trials per GPU)")
    resources.add_argument("--require-cuda", action="store_true",
                           help="fail a trial given a GPU when torch sees no CUDA device, "
                                "instead of training it on CPU with a warning")
    resources.add_argument("--max-concurrent", type=non_negative_int, default=0,
                           help="trials running at once (0: as many as the cluster's CPUs and GPUs "
                                "fit at --cpus-per-trial / --gpus-per-trial)")
    resources.add_argument("--max-failures", type=non_negative_int, default=0,
                           help="retries of a failed trial from its last checkpoint (a node "
                                "that died, but also deterministic errors such as a non-finite "
                                "loss: keep it small; 2 on clusters where nodes can die)")
    resources.add_argument("--address", default=None,
                           help="existing Ray cluster ('auto' or HOST:PORT); default: a local "
                                "instance, or the job's cluster under `ray job submit`")
    resources.add_argument("--storage-path", default=None,
                           help="where trial directories and checkpoints live: a directory "
                                "every node mounts, or a cloud URI (s3://bucket/prefix); "
                                "needed on a multi-node cluster (default: under --output-dir)")
    parser.add_argument("--mlflow-uri", default=None,
                        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else "
                             "sqlite:///<output-dir>/mlflow.db)")
    parser.add_argument("--output-dir", type=Path, default=DEFAULT_OUTPUT_DIR,
                        help="where searches keep trial checkpoints, tables and plots")
    parser.add_argument("--resume", action="store_true",
                        help="continue the latest interrupted search of each space")
    parser.add_argument("--dry-run", action="store_true",
                        help="validate the spaces (or the study) and print the plan and what it "
                             "will cost here (timed from a few batches) without running it")
    study = parser.add_argument_group("studies (--study)")
    study.add_argument("--only", nargs="+", metavar="GLOB",
                       help="run only the pieces whose id matches one of these globs, e.g. "
                            "'*/search/*knn*' or 'tmall/seed/*' (ids: see --dry-run)")
    study.add_argument("--max-hours", type=float, default=None, metavar="H",
                       help="start no piece after H hours (the running piece finishes)")
    study.add_argument("--seed-runs-at-once", type=positive_int, default=None, metavar="N",
                       help="seed runs trained side by side, sharing the CPUs a search spreads "
                            "over its trials (default: as many as a search's trials at once; "
                            "1: one run with them all)")
    study.add_argument("--commit", action="store_true",
                       help="git-commit the study's results folder after each finished piece")
    study.add_argument("--report", action="store_true",
                       help="rebuild the reports and Table 1 from the study's files alone "
                            "(and README's Table 1 block), run nothing; a dataset's report "
                            "built from the same files and code is kept")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="the whole plan, Ray Tune's progress tables and the trials' own "
                             "logs, debug logging (default: one line per trial event)")
    return parser


def _available() -> str:
    """--help's epilog: the bundled search spaces and the datasets in the data directory."""
    lines = ["search spaces (--space NAME, in search_spaces/):"]
    lines += [f"  {name:<18}{model:<12}{text[:60]}" for name, model, text in list_spaces()]
    root = resolve_data_dir()
    found = list_datasets(root)
    lines += ["", f"datasets (--dataset NAME) in {root}/ (--data-dir or $CORE_DATA_DIR change "
                  "it): " + ", ".join(found),
              "  synthetic is generated on first use; others: see README, 'Datasets'"]
    return "\n".join(lines)


SHOWN_TRIALS = 3


def ui_command(args: argparse.Namespace) -> str:
    """The command that opens the MLflow UI on this command's runs (``hpo.ui``).

    Args:
        args: launch.py's parsed arguments.

    Returns:
        The command.
    """
    words = ["python", "-m", "hpo.ui"]
    if args.mlflow_uri:
        words += ["--mlflow-uri", args.mlflow_uri]
    elif args.output_dir != DEFAULT_OUTPUT_DIR:
        words += ["--output-dir", str(args.output_dir)]
    return shlex.join(words)


def print_search_summary(plan, outcome, ui: str = "python -m hpo.ui") -> None:
    """The end of a search on the console: best trials, importances, where results are.

    Args:
        plan: the search's plan.
        outcome: what ``run_search`` returned.
        ui: the command that opens the MLflow UI on it (``ui_command``).
    """
    table = outcome.table
    counts = table["outcome"].value_counts().to_dict() if len(table) else {}
    print(f"\n{plan.space.name}: {len(table)} trials ("
          + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) + f"); best "
          f"{min(SHOWN_TRIALS, len(table))} by {plan.tune_metric}:")
    columns = ["optuna_trial", "config_source", "outcome", "epochs", plan.tune_metric]
    print(table[[c for c in columns if c in table]].head(SHOWN_TRIALS).to_string(index=False))
    if len(outcome.importance):
        top = outcome.importance.head(3)
        print("most important: " + ", ".join(
            f"{row.parameter} {row.importance:.2f}" for row in top.itertuples())
              + f" ({outcome.importance_note})")
    else:
        print(f"importance {outcome.importance_note}")
    print(f"results: {plan.search_dir} (trials.csv, param_importance.csv); MLflow run "
          f"{outcome.parent_run_id}; study {plan.study_name!r}; compare the trials: {ui}")


def _configure_logging(verbose: bool) -> None:
    """Our modules' info lines by default, libraries' warnings only; -v: debug for ours."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("launch", "hpo", "data", "models"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.INFO)
    # MLflow's usage telemetry, on an offline machine (a cluster often is one), races its own
    # thread removing an environment variable against requests reading it (KeyError); off
    # unless the environment says otherwise.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    if not verbose:
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow is imported
        # Ray Tune's newer console output prints its banner and paths at any verbosity; the
        # classic one is silent at verbose=0, leaving the console to hpo.console.
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
        # Tune's "operation took 0.6 s" notes (the driver's MLflow and Optuna writes on a busy
        # machine) only when an operation takes seconds.
        os.environ.setdefault("TUNE_WARN_THRESHOLD_S", "5")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.INFO if verbose else optuna.logging.WARNING)


# Options a study file sets for itself: given with --study they are refused.
STUDY_SETS = ("dataset", "train_rows", "stage", "num_samples", "max_epochs", "grace_period",
              "reduction_factor", "metric", "ablate", "resume")


def main(argv: list[str] | None = None) -> int:
    """Run the command; return its exit status (2: bad input, refused before any work).

    Args:
        argv: the arguments (default: ``sys.argv[1:]``).
    """
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose)
    if args.study is not None:
        return _main_study(args, parser, argv)
    study_only = [f"--{name.replace('_', '-')}"
                  for name in ("only", "max_hours", "report", "seed_runs_at_once")
                  if getattr(args, name)] + (["--commit"] if args.commit else [])
    if study_only:
        parser.error(f"{', '.join(study_only)}: only with --study")
    from hpo.plan import check_test_stage_args, describe_test_stage, make_plans, make_test_plan
    from hpo.search import run_search
    from hpo.seed_runs import run_test_stage

    def work() -> int:
        command_line = shlex.join(["python", "launch.py", *argv])
        plans = make_plans(args, command_line)
        check_test_stage_args(args, plans)
        if args.dry_run:
            from hpo.cost import search_cost_lines

            for plan in plans:
                lines = search_cost_lines(plan) if args.stage != "test" else []
                print("\n".join([plan.describe(), *lines]), end="\n\n")
            if args.stage != "search":
                print(describe_test_stage(args))
            return 0
        from hpo.ui import save_views_quietly

        search_runs = {}
        if args.stage in ("search", "all"):
            for plan in plans:
                print(plan.describe() if args.verbose else plan.headline(), flush=True)
                outcome = run_search(plan, resume=args.resume, verbose=args.verbose)
                search_runs[plan.space.name] = outcome.parent_run_id
                # The MLflow UI's saved view of the trials (hpo.ui), before the summary.
                save_views_quietly(plan.tracking_uri, [plan.experiment_name])
                print_search_summary(plan, outcome, ui_command(args))
        if args.stage in ("test", "all"):
            test_plan = make_test_plan(args, plans, search_runs, command_line)
            paths = run_test_stage(test_plan, verbose=args.verbose)
            save_views_quietly(test_plan.tracking_uri, [test_plan.experiment_name])
            print(paths["results_md"].read_text())
            print(f"report: {paths['results_md'].parent}; compare the variants: "
                  f"{ui_command(args)}")
        return 0

    return _exit_status(work, resume="--resume")


def _main_study(args: argparse.Namespace, parser: argparse.ArgumentParser,
                argv: list[str]) -> int:
    """``--study``: check the study, then print its plan, rebuild its reports or run it."""
    given = [f"--{name.replace('_', '-')}" for name in STUDY_SETS
             if getattr(args, name) != parser.get_default(name)]
    if given:
        parser.error(f"{', '.join(given)}: set in the study file, not with --study")
    from data import DatasetSource
    from hpo.cluster import Resources, validate_resources
    from hpo.studies import load_study
    from hpo.study_runs import StudyRun, describe_study, run_study, update_readme, write_reports
    from models.registry import dataset_needs
    from verdict.study_report import INPUTS_FILE

    def work() -> int:
        study = load_study(args.study)
        if args.report:
            for label, (folder, rebuilt) in write_reports(study).items():
                print(f"{label}: report rebuilt from {study.results_dir / label} in {folder}"
                      if rebuilt else f"{label}: report in {folder} is current (built from the "
                      f"same exported files, settings and code; delete its {INPUTS_FILE} to "
                      "rebuild it)")
            print((study.results_dir / "table1.md").read_text())
            if update_readme(study):
                print("README.md: Table 1 block updated")
            return 0
        resources = Resources(args.cpus_per_trial, args.gpus_per_trial, args.max_concurrent,
                              args.address, storage_path=args.storage_path,
                              max_failures=args.max_failures, require_cuda=args.require_cuda)
        validate_resources(resources)
        text_model = str(args.text_model) if args.text_model else None
        run = StudyRun(study, output_dir=args.output_dir, data_dir=args.data_dir,
                       text_model=text_model, resources=resources, mlflow_uri=args.mlflow_uri,
                       optuna_storage=args.optuna_storage, verbose=args.verbose,
                       commit=args.commit, precision=args.precision,
                       seed_runs_at_once=args.seed_runs_at_once,
                       command_line=shlex.join(["python", "launch.py", *argv]))
        needs = dataset_needs([space.model for space in study.spaces])
        for dataset in study.datasets:  # a missing dataset is refused before anything runs
            DatasetSource(dataset.name, args.data_dir, dataset.train_rows, text_model).check(
                **needs)
        if args.dry_run:
            print(describe_study(run, args.only))
            return 0
        ran = run_study(run, args.only, args.max_hours)
        print(f"study {study.name}: {len(ran)} piece(s) ran this time; results in "
              f"{study.results_dir}")
        return 0

    return _exit_status(work, resume="the same command (finished pieces are kept, the "
                        "interrupted one resumes)")


def _exit_status(work: Callable[[], int], *, resume: str) -> int:
    """Run a command's work and turn what it raises into one line on stderr and an exit status:
    2 for input or a store refused (before any work where it can be checked first, and for an
    output directory that stopped accepting writes), 1 for a search whose trials failed,
    ``INTERRUPTED`` for Ctrl-C. Anything else is a bug and keeps its traceback.

    Args:
        work: the command; returns its exit status.
        resume: how to continue once the output directory is writable again.
    """
    from data.errors import DataError
    from hpo.ablation import AblationError
    from hpo.cluster import RunInterruptedError
    from hpo.optuna_study import StudyStorageError
    from hpo.outcome import OutputUnwritableError
    from hpo.search import SearchFailedError, SearchInProgressError
    from hpo.seed_runs import TestStageError
    from hpo.selection import SelectionError
    from hpo.space import SpaceError
    from hpo.studies import StudyError
    from hpo.tracking import TrackingUnavailableError

    refused = (SpaceError, StudyError, DataError, TrackingUnavailableError, StudyStorageError,
               SelectionError, TestStageError, AblationError, OutputUnwritableError,
               SearchInProgressError, FileNotFoundError, ValueError)
    try:
        return work()
    except refused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a write the output directory refused (full, read-only, ...)
        print(f"error: {exc}. If the output directory stopped accepting writes, make it "
              f"writable again and continue with {resume}", file=sys.stderr)
        return 2
    except SearchFailedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except RunInterruptedError as exc:
        print(f"interrupted: {exc}", file=sys.stderr)
        return INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
