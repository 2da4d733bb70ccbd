"""Running a study's pieces (``hpo.studies``): each search or seed run in order, exported as it
finishes (``verdict.study_results``), committed with ``--commit``; a dataset's report and the
study's Table 1 rebuilt when its last piece finishes or with ``--report``
(``verdict.study_report``); and, for ``--dry-run``, the plan with what the pieces still to run
will cost here.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from fnmatch import fnmatch
from functools import partial
from pathlib import Path

from hpo.cluster import Resources, RunInterruptedError
from hpo.options import STRONGEST
from hpo.space import Budget
from hpo.studies import (
    DONE,
    PARTIAL,
    SKIPPED,
    Piece,
    PieceState,
    Study,
    StudyDataset,
    StudyError,
    dataset_complete,
    pieces,
    safe_name,
    search_dir,
    seed_dir,
    select,
    study_status,
    work_dir,
)
from models.registry import fits_once
from verdict.results import exposure_counts
from verdict.study_report import (
    TABLE_FILE,
    ReportFolder,
    replace_readme_table,
    write_study_reports,
)
from verdict.study_results import StudyResults, code_version, file_sha256


@dataclass
class StudyRun:
    """How the pieces run: where data and working state are, resources, tracking."""

    study: Study
    output_dir: Path
    data_dir: Path | None = None
    text_model: str | None = None
    resources: Resources = field(default_factory=Resources)
    mlflow_uri: str | None = None
    optuna_storage: str | None = None
    verbose: bool = False
    commit: bool = False
    command_line: str = ""
    precision: str | None = None  # --precision of every piece (None: the study file's, else auto)
    seed_runs_at_once: int | None = None  # None: as many as a search's trials at once

    def __post_init__(self) -> None:
        if self.precision is None:
            return
        for dataset in self.study.datasets:
            pinned = self.study.precision_of(dataset)
            if pinned is not None and pinned != self.precision:
                raise StudyError(f"{self.study.path}: the study pins precision {pinned} for "
                                 f"every piece of {dataset.label}; --precision {self.precision} "
                                 "would mix precisions in one comparison")

    def precision_for(self, dataset: StudyDataset) -> str | None:
        """The precision of every piece of ``dataset``: ``--precision``, else the study's pin
        for it (``Study.precision_of``; None: each run's own, auto).

        Args:
            dataset: a dataset of the study.
        """
        return self.precision or self.study.precision_of(dataset)

    def check_precisions(self, states: list[PieceState], only: list[str] | None) -> None:
        """Refuse, before anything runs, pieces pinned to bf16 on a device without native bf16
        products, where bf16 trains several times slower than fp32 (``models.precision``).

        Args:
            states: the study's pieces (``pieces``).
            only: the ``--only`` globs.

        Raises:
            StudyError: naming the datasets and what to do.
        """
        import torch

        from models.precision import device_label, native_bf16

        device = torch.device("cuda" if self.resources.gpus_per_trial
                              and (self.resources.require_cuda or torch.cuda.is_available())
                              else "cpu")
        if native_bf16(device):
            return
        pinned = list(dict.fromkeys(
            s.piece.dataset.label for s in select(states, only)
            if self.precision_for(s.piece.dataset) == "bf16"
            and not fits_once(s.piece.space.model)))
        if pinned:
            raise StudyError(
                f"{self.study.path}: the pieces of {', '.join(pinned)} train in bf16, which "
                f"{device_label(device)} does not run natively (no AMX or AVX-512 BF16): they "
                "would take several times their fp32 time; run them on a machine with native "
                "bf16, or leave them out with --only")

    @property
    def work(self) -> Path:
        """The study's working state (``hpo.studies.work_dir``)."""
        return work_dir(self.study, self.output_dir)

    @property
    def results(self) -> StudyResults:
        """The study's exported files."""
        return StudyResults(self.study.results_dir)

    def tracking_uri(self) -> str:
        """The MLflow store of every piece (``--mlflow-uri``, or one in the working state)."""
        from hpo.tracking import resolve_tracking_uri

        return resolve_tracking_uri(self.mlflow_uri, self.work)

    def run_piece(self, state: PieceState) -> dict:
        """Run (or resume) one search piece and export its results (seed pieces run in groups:
        ``run_seed_group``).

        Args:
            state: the piece and its state (a partial one resumes).

        Returns:
            Its export record.
        """
        piece = state.piece
        if piece.kind != "search":
            return self.run_seed_group([state])[0]
        record = self._run_search(piece, resume=state.state == PARTIAL)
        if self.commit:
            commit_results(self.study, f"study {self.study.name}: {piece.id}")
        return record

    def run_seed_group(self, group: list[PieceState]) -> list[dict]:
        """Run (or resume) seed pieces of one dataset side by side, as one Ray Tune experiment
        (``seed_group``), and export each one's results.

        Args:
            group: the pieces; partial ones resume with the experiment they started in.

        Returns:
            Their export records, in the group's order.

        Raises:
            StudyError: a seed run failed (the others are exported first).
        """
        records = self._run_seeds(group)
        if self.commit:
            ids = ", ".join(state.piece.id for state in group)
            commit_results(self.study, f"study {self.study.name}: {ids}")
        return records

    def _run_search(self, piece: Piece, resume: bool) -> dict:
        from hpo.cost import device_name
        from hpo.search import SearchPlan, run_search
        from hpo.selection import select_best
        from hpo.tracking import check_tracking

        folder = search_dir(self.study, self.output_dir, piece)
        if not resume and folder.exists():
            shutil.rmtree(folder)  # a start that died before it recorded anything
        folder.parent.mkdir(parents=True, exist_ok=True)
        plan = SearchPlan(
            space=piece.space, dataset=piece.dataset.source(self.data_dir, self.text_model),
            budget=piece.dataset.budget, seed=self.study.seed, resources=self.resources,
            output_dir=self.work, tracking_uri=self.tracking_uri(),
            command_line=self.command_line, search_dir=folder,
            optuna_storage=self.optuna_storage, precision=self.precision_for(piece.dataset))
        print(plan.headline(), flush=True)
        attempts = _attempt(folder.parent / "search-piece.json")
        started = time.perf_counter()
        outcome = run_search(plan, resume=resume, verbose=self.verbose)
        wall = time.perf_counter() - started
        client = check_tracking(plan.tracking_uri)
        selection = select_best(client, plan.dataset.label, piece.space.name,
                                plan.budget.metric, mode=plan.budget.mode,
                                search_run_id=outcome.parent_run_id)
        table = outcome.table
        meta = {
            "study": self.study.name, "dataset": plan.dataset.label,
            "budget": {k: getattr(plan.budget, k) for k in Budget.__dataclass_fields__},
            "trials": int(len(table)),
            "outcomes": {str(k): int(v) for k, v in table["outcome"].value_counts().items()},
            "trial_epochs": int(table["epochs"].sum()),
            "importance": {r.parameter: float(r.importance)
                           for r in outcome.importance.itertuples()},
            "importance_method": outcome.importance_note,
            "space_file": piece.space.path.name,
            "space_sha256": file_sha256(piece.space.path),
            "code_version": code_version(), "device": device_name(),
            "precision": plan.precision,  # every trial's (None: not pinned, each run's auto)
            "cpus_per_trial": self.resources.cpus_per_trial,
            "wall_s": round(wall, 1), **attempts,
            "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
            "parent_run_id": outcome.parent_run_id,
        }
        sel = {"space": selection.space, "variant": selection.variant,
               "trial_id": selection.trial_id, "metric": selection.metric,
               "value": selection.value, "max_epochs": selection.max_epochs,
               "config": selection.config}
        self.results.write_search(plan.dataset.label, piece.space.name, selection=sel,
                                  trials=table, meta=meta)
        print(f"piece {piece.id} done in {_minutes(wall)}: selected trial {selection.trial_id} "
              f"({selection.metric} {selection.value:.4f})", flush=True)
        return meta

    def _run_seeds(self, group: list[PieceState]) -> list[dict]:
        import numpy as np

        from hpo.cluster import init_ray, tune_experiment_name
        from hpo.cost import device_name
        from hpo.seed_runs import TEST_ROWS_FILE, run_seed_jobs, seed_job, train_popularity
        from models.registry import dataset_needs

        started = time.perf_counter()
        first = group[0].piece
        source = first.dataset.source(self.data_dir, self.text_model)
        dataset = source.load(**dataset_needs([s.piece.space.model for s in group]))
        label = source.label
        if not self.results.has_dataset(label):
            self.results.write_dataset(label, targets=dataset.test.targets,
                                       popularity=train_popularity(dataset),
                                       n_items=dataset.n_items, summary=dataset.summary())
        init_ray(self.resources.address, log_to_driver=self.verbose)
        resources = self.seed_resources(len(group))
        parent = self._test_parent(label)
        jobs, attempts = {}, {}
        for state in group:
            piece = state.piece
            search = self.results.search(label, piece.space.name)
            jobs[piece.id] = seed_job(
                space=piece.space.name, arm=piece.arm, seed=piece.seed,
                selected_from=search["selection"]["trial_id"], config=state.config,
                max_epochs=self.study.retrain_max_epochs,
                precision=self.precision_for(piece.dataset))
            attempts[piece.id] = _attempt(seed_dir(self.study, self.output_dir, piece)
                                          / "piece.json")
        # The experiment lives in the first piece's folder; every piece's state names it, so
        # an interrupted group resumes as the same experiment.
        storage = seed_dir(self.study, self.output_dir, first)
        known = json.loads((storage / "piece.json").read_text())
        restore = group[0].state == PARTIAL and "experiment" in known
        name = known.get("experiment") if restore else (
            tune_experiment_name("seed", parent) + f"-{safe_name(first.id)[-60:]}")
        storage = Path(known.get("storage", storage)) if restore else storage
        ids = [state.piece.id for state in group]
        for state in group:
            state_file = seed_dir(self.study, self.output_dir, state.piece) / "piece.json"
            record = json.loads(state_file.read_text())
            state_file.write_text(json.dumps({**record, "experiment": name,
                                              "storage": str(storage), "group": ids,
                                              "piece": state.piece.id}))
        if len(group) > 1:
            print(f"{len(group)} seed runs side by side ({resources.torch_threads} thread(s) "
                  f"each): {', '.join(ids)}", flush=True)
        grid = run_seed_jobs(list(jobs.values()), dataset, resources=resources,
                             tracking_uri=self.tracking_uri(), parent_run_id=parent,
                             storage=str(storage), name=name,
                             tags={"dataset": label, "study": self.study.name},
                             verbose=self.verbose, restore=restore)
        wall = time.perf_counter() - started
        by_job = {_job_key(result.config["job"]): result for result in grid}
        records, failed = [], []
        for state in group:
            piece = state.piece
            job = jobs[piece.id]
            result = by_job.get(_job_key(job))
            if result is None or result.error is not None:
                failed.append(f"{piece.id}: {result.error if result else 'no result'}")
                continue
            with result.checkpoint.as_directory() as directory:
                with np.load(Path(directory) / TEST_ROWS_FILE) as arrays:
                    ranks, topk = arrays["ranks"], arrays["topk"]
            metrics = result.metrics
            record = {
                "study": self.study.name, "dataset": label, "space": piece.space.name,
                "variant": piece.space.model, "arm": piece.arm, "seed": piece.seed,
                "selected_from": job["selected_from"], "config": job["config"],
                "best_epoch": int(metrics["best_epoch"]), "epochs": int(metrics["epoch"]),
                **{k: float(v) for k, v in metrics.items() if k.startswith("test_")},
                "code_version": code_version(), "device": device_name(),
                "threads": resources.torch_threads,
                **{key: metrics[key] for key in ("precision_used", "loss_impl_used")
                   if key in metrics},
                "wall_s": round(wall, 1), "side_by_side": len(group), **attempts[piece.id],
                "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
            }
            self.results.write_seed(label, piece.space.name, piece.arm, piece.seed,
                                    record=record, ranks=ranks,
                                    exposure=exposure_counts(topk, dataset.n_items))
            records.append(record)
            print(f"piece {piece.id} done in {_minutes(wall)}: best epoch "
                  f"{record['best_epoch']} of {record['epochs']}; test R@20 "
                  f"{100 * record['test_recall_20']:.2f} MRR@20 "
                  f"{100 * record['test_mrr_20']:.2f}", flush=True)
        if failed:
            raise StudyError("seed run(s) failed: " + "; ".join(failed))
        return records

    def seed_runs_side_by_side(self) -> int:
        """Seed runs a group holds: ``seed_runs_at_once``, else as many as a search runs at
        once (on the cluster it connects to)."""
        from hpo.cluster import init_ray

        if self.seed_runs_at_once:
            return self.seed_runs_at_once
        init_ray(self.resources.address, log_to_driver=self.verbose)
        return self.resources.concurrent_trials()

    def seed_resources(self, runs: int) -> Resources:
        """A group's resources: ``runs`` seed runs at once, the CPUs a search spreads over its
        concurrent trials shared among them (one run alone gets them all)."""
        from dataclasses import replace

        cpus = self.resources.cpus_per_trial * self.resources.concurrent_trials()
        return replace(self.resources, cpus_per_trial=float(max(1, int(cpus // runs))),
                       max_concurrent=runs)

    def _test_parent(self, label: str) -> str:
        """The MLflow parent run of the study's seed runs on ``label`` (created once per store)."""
        from hpo.tracking import (
            check_tracking,
            default_artifact_location,
            get_or_create_experiment,
            log_params,
        )

        uri = self.tracking_uri()
        record = self.work / label / "test_parent.json"
        known = json.loads(record.read_text()) if record.is_file() else {}
        client = check_tracking(uri)
        if uri in known:
            return known[uri]
        experiment = f"{label}/test"
        experiment_id = get_or_create_experiment(
            client, experiment, default_artifact_location(uri, self.work, experiment))
        run = client.create_run(experiment_id, run_name=f"study-{self.study.name}",
                                tags={"stage": "test", "dataset": label,
                                      "study": self.study.name})
        log_params(client, run.info.run_id, {
            "study_file": str(self.study.path.name), "seeds": ",".join(map(str, self.study.seeds)),
            "retrain_max_epochs": self.study.retrain_max_epochs,
            "command_line": self.command_line})
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps({**known, uri: run.info.run_id}))
        return run.info.run_id


def _job_key(job: dict) -> tuple:
    """What tells a group's seed runs apart: space, arm, seed."""
    return (job["space"], job["arm"], job["seed"])


def _attempt(record: Path) -> dict:
    """Count one more attempt at a piece in its working-state ``record`` (JSON), keeping when the
    first began: an interrupted piece's export says it took several attempts, and its
    ``wall_s`` is the last attempt's alone.

    Returns:
        ``{"attempts": n, "first_started": "YYYY-mm-dd HH:MM:SS"}``.
    """
    known = json.loads(record.read_text()) if record.is_file() else {}
    known["attempts"] = int(known.get("attempts", 0)) + 1
    known.setdefault("first_started", time.strftime("%Y-%m-%d %H:%M:%S"))
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(known))
    return {"attempts": known["attempts"], "first_started": known["first_started"]}


def _minutes(seconds: float) -> str:
    from hpo.cost import format_duration

    return format_duration(seconds)


def commit_results(study: Study, message: str) -> None:
    """``git add`` the study's results folder and commit it (``--commit``).

    Args:
        study: the study.
        message: the commit message.

    Raises:
        StudyError: git refused (the message says why).
    """
    folder = study.results_dir
    try:
        subprocess.run(["git", "add", "--", str(folder)], cwd=folder.parent, check=True,
                       capture_output=True, text=True, timeout=60)
        staged = subprocess.run(["git", "diff", "--cached", "--quiet", "--", str(folder)],
                                cwd=folder.parent, capture_output=True, timeout=60)
        if staged.returncode == 0:
            return
        subprocess.run(["git", "commit", "-q", "-m", message, "--", str(folder)],
                       cwd=folder.parent, check=True, capture_output=True, text=True,
                       timeout=60)
    except subprocess.CalledProcessError as exc:
        raise StudyError(f"--commit: git failed: {exc.stderr.strip() or exc}") from None
    except (OSError, subprocess.SubprocessError) as exc:
        raise StudyError(f"--commit: {exc}") from None


# ------------------------------------------------------------------------- the plan and cost


def describe_study(run: StudyRun, only: list[str] | None = None) -> str:
    """The study's plan for ``--dry-run``: each dataset's pieces grouped by state, and what the
    pieces still to run will cost here (timed on this machine: ``hpo.cost``).

    Args:
        run: the study and how it runs.
        only: globs limiting the pieces to run (as ``--only``).
    """
    from hpo.cost import (
        asha_trial_epochs,
        format_duration,
        local_slots,
    )
    from models.registry import dataset_needs

    study = run.study
    states = pieces(study, run.output_dir)
    slots = run.resources.max_concurrent or local_slots(run.resources.cpus_per_trial)
    lines = [f"study {study.name} ({study.path}): {len(study.spaces)} arms x "
             f"{len(study.datasets)} datasets, {len(study.seeds)} seeds, ablation arms "
             + (", ".join(a.arm.name + (f" on {', '.join(a.spaces)}" if a.spaces else "")
                          for a in study.arms) or "none"),
             f"results     {study.results_dir}  (commit them; working state in {run.work})",
             f"baseline    {study.baseline}"
             + (f" of {', '.join(study.baseline_candidates)} on validation, per dataset"
                if study.baseline == STRONGEST else "")
             + f"; {study.correction} correction, alpha {study.alpha:g}"]
    if study.unequal:
        lines.append("unequal     " + "; ".join(study.unequal))
    total_s, n_runs = 0.0, 0
    for dataset in study.datasets:
        mine = [s for s in states if s.piece.dataset.label == dataset.label]
        counts: dict[str, int] = {}
        for s in mine:
            counts[s.state] = counts.get(s.state, 0) + 1
        b = dataset.budget
        lines.append("")
        lines.append(f"{dataset.label}: " + ", ".join(f"{n} {k}" for k, n in counts.items())
                     + f"; budget {b.num_samples} trials x <= {b.max_epochs} epochs, ASHA "
                     f"grace {b.grace_period}, rf {b.reduction_factor}"
                     + (f"; last {dataset.train_rows:,} training rows" if dataset.train_rows
                        else "; full training split"))
        loaded = factors = None
        groups: dict[tuple, list[PieceState]] = {}
        for state in mine:  # a search alone; seed runs grouped by (space, arm, state)
            piece = state.piece
            key = ((piece.id, state.state) if piece.kind == "search"
                   else (piece.space.name, piece.arm, state.state))
            groups.setdefault(key, []).append(state)
        for group in groups.values():
            first = group[0]
            piece = first.piece
            name = piece.id[len(dataset.label) + 1:]
            if piece.kind == "seed":
                seeds = [g.piece.seed for g in group]
                name = f"seed/{piece.space.name}/{piece.arm}/{_seed_range(seeds)}"
            if first.state in (DONE, SKIPPED) or (only and not any(
                    fnmatch(g.piece.id, pattern) for g in group for pattern in only)):
                note = f" ({first.note})" if first.note and first.state == SKIPPED else ""
                lines.append(f"  {name:<34} {first.state}{note}")
                continue
            if loaded is None:
                source = dataset.source(run.data_dir, run.text_model)
                needs = dataset_needs([s.model for s in study.spaces])
                loaded = source.load(**needs).without_test()
            # a search's trials run side by side with a trial's threads each; a seed run alone
            # with every slot's CPUs (its own timing: threads do not scale perfectly)
            search = piece.kind == "search"
            at_once = slots if search else (run.seed_runs_at_once or slots)
            threads = (run.resources.torch_threads if search
                       else max(1, int(run.resources.cpus_per_trial * slots // at_once)))
            timed = partial(_timed_epoch_s, run, dataset, loaded)
            if factors is None:
                factors = _calibration(run, dataset, slots, timed)
            once = fits_once(piece.space.model)
            measured = None if search or once else _measured_runs(
                run, dataset, piece.space.name, piece.arm, threads)
            if search:
                most, expected = asha_trial_epochs(b, once, slots)
                what = (f"{most} fits" if once else
                        f"<= {most} trial-epochs, ~{expected:.0f} under ASHA")
            else:
                most = 1 if once else study.retrain_max_epochs
                expected = most if once else (
                    min(most, measured[1]) if measured else _expected_epochs(run, piece, first))
                expected *= len(group)
                what = (f"{len(group)} run(s): "
                        + ("1 fit each" if once else
                           f"<= {most} epochs each, ~{expected / len(group):.0f} expected"))
            if measured:
                epoch_s = measured[0]
                what += f", {measured[2]} finished here"
            else:
                epoch_s = timed(piece.space, threads) * (1.0 if once else factors[piece.kind])
            seconds = expected * epoch_s / at_once
            total_s += seconds
            n_runs += len(group)
            lines.append(f"  {name:<34} {first.state:<8} {what}; ~{format_duration(seconds)}")
    lines.append("")
    lines.append(f"left: {n_runs} piece(s), about {format_duration(total_s)} here "
                 f"({slots} trial(s) at once; {run.seed_runs_at_once or slots} seed run(s) at "
                 f"once, sharing the {slots} slots' CPUs; epoch "
                 "times timed from a few batches of each arm's published configuration at the "
                 "pieces' precision and threads, kept in the cache folder's timings.json, and "
                 "scaled by what the dataset's pieces finished on this CPU took against their "
                 "timing; an arm with seed runs finished here takes their epochs and seconds "
                 "per epoch)")
    return "\n".join(lines)


def _timed_epoch_s(run: StudyRun, dataset: StudyDataset, loaded, space, threads: int) -> float:
    """An epoch of ``space``'s published configuration on ``dataset`` at its pieces' precision,
    timed here (``hpo.cost.time_variant``, cached)."""
    from hpo.cost import time_variant, timed_config

    config = timed_config(space, run.precision_for(dataset))
    return time_variant(config, loaded, threads=threads).epoch_s


def _finished_here(run: StudyRun, dataset: StudyDataset):
    """The dataset's exported pieces that ran on this machine's CPU (``device_name``): searches
    as (space, trial-epochs, wall s, CPUs per trial), seed runs as (space, arm, epochs, wall s,
    threads, side by side)."""
    from hpo.cost import device_name

    here = device_name()
    root = run.results.root / dataset.label
    searches, seeds = [], []
    for path in sorted(root.glob("search/*.json")):
        record = json.loads(path.read_text())
        if record.get("device") == here and record.get("trial_epochs") and record.get("wall_s"):
            searches.append((path.stem, record["trial_epochs"], record["wall_s"],
                             record.get("cpus_per_trial", 1.0)))
    for path in sorted(root.glob("seeds/*/*/seed-*.json")):
        record = json.loads(path.read_text())
        if record.get("device") == here and record.get("epochs") and record.get("wall_s"):
            seeds.append((path.parent.parent.name, path.parent.name, record["epochs"],
                          record["wall_s"], record.get("threads"),
                          record.get("side_by_side", 1)))
    return searches, seeds


def _measured_runs(run: StudyRun, dataset: StudyDataset, space: str, arm: str,
                   threads: int) -> tuple[float, float, int] | None:
    """An arm's seed runs finished on this CPU with the same threads: (seconds per epoch, the
    median of wall time over epochs, the group's wall time being its longest run's; mean epochs;
    how many), or None."""
    import statistics

    runs = [(epochs, wall) for s, a, epochs, wall, t, _ in _finished_here(run, dataset)[1]
            if (s, a, t) == (space, arm, threads)]
    if not runs:
        return None
    return (statistics.median(wall / epochs for epochs, wall in runs),
            sum(epochs for epochs, _ in runs) / len(runs), len(runs))


def _calibration(run: StudyRun, dataset: StudyDataset, slots: int, timed) -> dict[str, float]:
    """How much longer the dataset's pieces that finished on this CPU took than their timing
    promised (a timing covers an epoch's training and validation batches, not the checkpoints,
    the reporting, or two runs sharing one machine's memory and caches): per kind of piece
    ("search", "seed"), the median over finished pieces of measured / timed seconds per epoch,
    the other kind's where a kind has none here, else 1. kNN pieces (one fit) are left out."""
    import statistics

    spaces = {s.name: s for s in run.study.spaces}
    searches, seeds = _finished_here(run, dataset)
    ratios: dict[str, list[float]] = {"search": [], "seed": []}
    for name, trial_epochs, wall, cpus in searches:
        space = spaces.get(name)
        if space is None or fits_once(space.model):
            continue
        threads = max(1, int(cpus))
        ratios["search"].append(wall * slots / trial_epochs / timed(space, threads))
    for name, _, epochs, wall, threads, _ in seeds:
        space = spaces.get(name)
        if space is None or fits_once(space.model) or not threads:
            continue
        ratios["seed"].append(wall / epochs / timed(space, threads))
    medians = {kind: statistics.median(r) for kind, r in ratios.items() if r}
    return {kind: medians.get(kind, next(iter(medians.values()), 1.0))
            for kind in ("search", "seed")}


def _seed_range(seeds: list[int]) -> str:
    """``1..5`` for consecutive seeds, else ``1,3``."""
    if len(seeds) > 1 and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}..{seeds[-1]}"
    return ",".join(map(str, seeds))


def _expected_epochs(run: StudyRun, piece: Piece, state: PieceState) -> float:
    """A seed run's expected epochs: the selected trial's best epoch plus the patience (capped
    by the retraining budget); before the search, the search's epoch budget."""
    study = run.study
    record = run.results.search(piece.dataset.label, piece.space.name)
    if record is None:
        return float(min(study.retrain_max_epochs, piece.dataset.budget.max_epochs))
    trials = run.results.trials(piece.dataset.label, piece.space.name)
    chosen = trials[trials["trial_id"].astype(str) == str(record["selection"]["trial_id"])]
    best = int(chosen["best_epoch"].iloc[0]) if len(chosen) else piece.dataset.budget.max_epochs
    patience = (state.config or {}).get("patience", 5)
    return float(min(study.retrain_max_epochs, best + patience))


# ---------------------------------------------------------------------------- the loop


def run_study(run: StudyRun, only: list[str] | None = None,
              max_hours: float | None = None) -> list[str]:
    """Run the study's remaining pieces in order, each exported as it finishes; write a
    dataset's report (and the study's Table 1) when its last piece finishes.

    Args:
        run: the study and how it runs.
        only: globs limiting the pieces (``--only``), matched against piece ids such as
            ``tmall/search/trm`` or ``tmall/seed/trm/full/3``.
        max_hours: start no piece after this many hours (a running piece finishes).

    Returns:
        The ids of the pieces that ran.

    Raises:
        RunInterruptedError: Ray Tune was stopped (Ctrl-C) during a piece; it stays partial
            and the next run continues it.
    """
    deadline = time.monotonic() + max_hours * 3600 if max_hours else None
    run.check_precisions(pieces(run.study, run.output_dir), only)
    ran: list[str] = []
    while True:
        states = pieces(run.study, run.output_dir)
        todo = next(select(states, only), None)
        if todo is None:
            break
        if deadline is not None and time.monotonic() > deadline:
            print(f"--max-hours reached: {todo.piece.id} and later pieces not started",
                  flush=True)
            break
        group = ([todo] if todo.piece.kind == "search" else
                 seed_group(run, states, todo, only=only, size=run.seed_runs_side_by_side()))
        for state in group:
            print(f"piece {state.piece.id} ({state.state}) starts", flush=True)
        try:
            if todo.piece.kind == "seed":
                run.run_seed_group(group)
            else:
                run.run_piece(todo)
        except RunInterruptedError as exc:
            ids = ", ".join(state.piece.id for state in group)
            raise RunInterruptedError(
                exc.stopped, f"{ids} not exported and partial: run the same command again to "
                             "continue from what was recorded") from None
        ran += [state.piece.id for state in group]
        after = pieces(run.study, run.output_dir)
        if dataset_complete(after, todo.piece.dataset) and todo.piece.kind == "seed":
            paths = write_reports(run.study, [todo.piece.dataset])
            print(f"{todo.piece.dataset.label}: every piece done; report in "
                  f"{paths[todo.piece.dataset.label].folder}", flush=True)
            if run.commit:
                commit_results(run.study, f"study {run.study.name}: "
                                          f"{todo.piece.dataset.label} report")
    return ran


def seed_group(run: StudyRun, states: list[PieceState], first: PieceState, *,
               only: list[str] | None, size: int) -> list[PieceState]:
    """The seed pieces that run side by side with ``first`` (the next piece to run).

    A partial piece resumes with the group it started in (the ids its working state lists, less
    those done since); otherwise ``first`` is joined by the next pieces to do (not partial ones,
    which have their own experiment) of the same dataset, up to ``size`` in all.

    Args:
        run: the study and where its working state is.
        states: the study's pieces (``hpo.studies.pieces``).
        first: a seed piece to do or partial.
        only: globs limiting the pieces (``--only``).
        size: seed runs at once.
    """
    ready = [s for s in select(states, only) if s.piece.kind == "seed"]
    if first.state == PARTIAL:
        state_file = seed_dir(run.study, run.output_dir, first.piece) / "piece.json"
        known = json.loads(state_file.read_text()) if state_file.is_file() else {}
        ids = known.get("group") or [first.piece.id]
        return [first] + [s for s in ready if s.piece.id in ids and s is not first
                          and s.state == PARTIAL]
    return [first] + [s for s in ready if s is not first and s.state != PARTIAL
                      and s.piece.dataset.label == first.piece.dataset.label][:size - 1]


# ---------------------------------------------------------------------------- reports


def write_reports(study: Study, datasets: list[StudyDataset] | None = None, *,
                  force: bool = False) -> dict[str, ReportFolder]:
    """Rebuild each complete dataset's test-stage report from the study's files alone (a report
    already built from the same files and code is kept), and the study's Table 1
    (``table1.md``): the study's status (``hpo.studies.study_status``) handed to
    ``verdict.study_report.write_study_reports``.

    Args:
        study: the study.
        datasets: the datasets to report (default: every complete one).
        force: rebuild the chosen reports even where they are current.

    Returns:
        dataset label -> its report folder, and whether it was rebuilt.
    """
    labels = [d.label for d in datasets] if datasets is not None else None
    return write_study_reports(study_status(study), labels, force=force)


def update_readme(study: Study, readme: Path | None = None) -> bool:
    """Replace the study's Table 1 block in README.md with ``table1.md``
    (``verdict.study_report.replace_readme_table``), so README's numbers are the study files'.

    Args:
        study: the study.
        readme: the README (default: the one above the study file's folder).

    Returns:
        Whether the README held the block (and was rewritten where it changed).
    """
    readme = readme or study.path.parent.parent / "README.md"
    return replace_readme_table(readme, name=study.name,
                                table_file=study.results_dir / TABLE_FILE)
