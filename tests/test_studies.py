"""Study files (hpo.studies, run by hpo.study_runs): checked whole before anything runs, run
piece by piece, resumed after a kill, exported as small files (verdict.study_results), and the
report rebuilt from those files alone (verdict.study_report)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from local_cluster import kill_tree, launch_driver, wait_exit
from mlflow.tracking import MlflowClient

import launch
from hpo.cluster import Resources
from hpo.studies import (
    DONE,
    PARTIAL,
    SKIPPED,
    TODO,
    WAITING,
    StudyError,
    load_study,
    pieces,
    seed_dir,
    select,
    study_status,
)
from hpo.study_runs import StudyRun, seed_group, update_readme, write_reports
from hpo.tracking import PARENT_TAG
from verdict.study_report import readme_markers, sensitivity_points, study_table
from verdict.study_results import CLIPPED_RANK, StudyResults

ROOT = Path(__file__).resolve().parent.parent
TINY = "tiny"  # written by the tiny_data_dir fixture
SMALL = {"embedding_size": 16, "batch_size": 256}


def write_study(folder: Path, **changes) -> Path:
    """A small study file in ``folder/studies/`` (its results go beside it)."""
    raw = {
        "description": "a small study",
        "spaces": ["ave.yaml", "sknn.yaml"],
        "datasets": {TINY: {"budget": {"num_samples": 2, "max_epochs": 2, "grace_period": 1,
                                       "reduction_factor": 2}}},
        "seeds": 2,
        "retrain_max_epochs": 2,
        "baseline": "strongest",
        "ablate": [{"set": {"sess_dropout": 0.0}, "spaces": ["ave"]}],
    }
    raw.update(changes)
    path = folder / "studies" / "mini.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def run_launch(args: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = launch.main(args)
    return rc, out.getvalue()


# ---------------------------------------------------------------- the file, checked whole


@pytest.mark.parametrize(("change", "message"), [
    ({"spaces": ["ave.yaml"]}, "at least two"),
    ({"spaces": ["ave.yaml", "nope.yaml"]}, "nope.yaml"),
    ({"seeds": 1}, "'seeds' must be an integer >= 2"),
    ({"baseline": "trm"}, "'baseline' 'trm' is not one of the spaces"),
    ({"ablate": [{"set": {"hn_k": 8}}]}, "no space of the study has its keys"),
    ({"ablate": [{"set": {"sess_dropout": 2.0}}]}, "sess_dropout"),
    ({"datasets": {TINY: {"budget": {"num_samples": 0}}}}, "num_samples"),
    ({"correction": "sidak"}, "'correction' must be one of"),
    ({"colour": "blue"}, "unknown key"),
    ({"precision": "fp16"}, "'precision' must be one of"),
    ({"sensitivity": ["hn_k"]}, "'sensitivity' names ['hn_k'], which no space"),
    ({"sensitivity": "lr"}, "'sensitivity' must list searched parameters"),
])
def test_a_bad_study_file_is_refused_naming_the_problem(tmp_path, change, message):
    with pytest.raises(StudyError, match=re.escape(message)):
        load_study(write_study(tmp_path, **change))


def test_a_results_folder_that_cannot_be_written_is_one_line_and_exit_2(tmp_path, capsys):
    path = write_study(tmp_path)
    blocker = path.parent / "mini"  # where the study's results go: a file in the way
    blocker.write_text("kept")
    rc = launch.main(["--study", str(path), "--report"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    [line] = err.strip().splitlines()
    assert line.startswith("error: ") and str(blocker) in line and "continue with" in line
    assert blocker.read_text() == "kept"


def test_unfair_arms_are_refused_unless_the_study_allows_them(tmp_path):
    raw = yaml.safe_load((ROOT / "search_spaces" / "trm.yaml").read_text())
    raw["parameters"]["lr"]["high"] = 0.01
    (tmp_path / "trm_wide.yaml").write_text(yaml.safe_dump(raw))
    spaces = ["ave.yaml", str(tmp_path / "trm_wide.yaml")]
    with pytest.raises(StudyError, match=r"lr: .*trm\.yaml.*trm_wide\.yaml|lr: .*ave\.yaml"):
        load_study(write_study(tmp_path, spaces=spaces))
    study = load_study(write_study(tmp_path, spaces=spaces, allow_unequal_spaces=True))
    assert any("lr" in text for text in study.unequal)


def test_table1_study_is_valid_and_fair():
    study = load_study(ROOT / "studies" / "table1.yaml")
    assert [d.name for d in study.datasets] == ["tmall", "diginetica", "retailrocket"]
    assert {s.model for s in study.spaces} >= {"ave", "trm", "da", "hn", "dahn", "sknn",
                                                "vsknn", "stan", "vstan"}
    assert len(study.seeds) >= 5 and study.unequal == ()
    assert {d.budget for d in study.datasets} == {study.datasets[0].budget}  # same budget
    assert study.datasets[0].train_rows is None  # tmall: the full training split


def test_diffaug_anchor_study_retrains_both_modes_from_the_selection():
    study = load_study(ROOT / "studies" / "diffaug-anchor.yaml")
    assert [s.name for s in study.spaces] == ["trm", "diffaug", "ips"]
    assert study.baseline == "trm" and study.unequal == ()
    # both ways of making a tail row, each retrained from DiffAug's selection only
    assert sorted(dict(a.arm.changes)["diff_anchor"] for a in study.arms) == ["noise", "observed"]
    assert all(a.spaces == ("diffaug",) for a in study.arms)
    assert study.datasets[0].train_rows == 50_000  # the earlier tmall study's cut


def test_a_pinned_precision_reaches_every_piece_and_cannot_be_mixed(tmp_path, capsys):
    path = write_study(tmp_path, precision="fp32")
    study = load_study(path)
    assert study.precision == "fp32"
    dataset = study.datasets[0]
    assert StudyRun(study, output_dir=tmp_path / "out").precision_for(dataset) == "fp32"
    free = load_study(write_study(tmp_path / "free"))
    assert StudyRun(free, output_dir=tmp_path / "out",  # nothing pinned: the option's
                    precision="bf16").precision_for(free.datasets[0]) == "bf16"
    assert StudyRun(free, output_dir=tmp_path / "out").precision_for(free.datasets[0]) is None
    rc = launch.main(["--study", str(path), "--precision", "bf16", "--dry-run",
                      "--output-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "pins precision fp32" in err and "--precision bf16" in err
    assert not (tmp_path / "out").exists()


def bf16_tiny(tmp_path) -> Path:
    """The small study with fp32 pinned for the study and bf16 for its one dataset."""
    budget = {"num_samples": 2, "max_epochs": 2, "grace_period": 1, "reduction_factor": 2}
    return write_study(tmp_path, precision="fp32",
                       datasets={TINY: {"budget": budget, "precision": "bf16"}})


def test_a_datasets_own_precision_pins_its_pieces_over_the_studys(tmp_path, capsys):
    study = load_study(bf16_tiny(tmp_path))
    dataset = study.datasets[0]
    assert (study.precision, dataset.precision, study.precision_of(dataset)) == (
        "fp32", "bf16", "bf16")
    assert StudyRun(study, output_dir=tmp_path / "out").precision_for(dataset) == "bf16"
    # the report says which precision made the dataset's numbers
    notes = study_status(study).datasets[0].protocol_notes
    assert "precision bf16 in every piece" in notes[0]
    # --precision may only repeat the dataset's pin
    rc = launch.main(["--study", str(bf16_tiny(tmp_path)), "--precision", "fp32", "--dry-run",
                      "--output-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "pins precision bf16 for every piece of tiny" in err
    with pytest.raises(StudyError, match=re.escape("datasets.tiny.precision must be one of")):
        load_study(write_study(tmp_path, datasets={TINY: {"precision": "fp16"}}))


def test_a_piece_finished_in_another_precision_is_refused(tmp_path, capsys, tiny_data_dir):
    path = bf16_tiny(tmp_path)
    study = load_study(path)
    results = StudyResults(study.results_dir)
    fake_search(results, TINY, "ave", "ave", {"model": "ave"}, 0.1)  # no precision recorded
    assert {s.piece.id: s.state for s in pieces(study)}[f"{TINY}/search/ave"] == DONE
    fake_search(results, TINY, "ave", "ave", {"model": "ave"}, 0.1, precision="bf16")
    assert {s.piece.id: s.state for s in pieces(study)}[f"{TINY}/search/ave"] == DONE
    fake_search(results, TINY, "ave", "ave", {"model": "ave"}, 0.1, precision="fp32")
    with pytest.raises(StudyError, match=r"tiny/search/ave finished in fp32, but the study "
                                         r"pins bf16 for tiny: remove its exports \(.*ave\.json"):
        pieces(study)
    rc = launch.main(["--study", str(path), "--dry-run", "--data-dir", str(tiny_data_dir),
                      "--output-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "finished in fp32" in err
    # a seed run's recorded configuration is checked too
    fake_search(results, TINY, "ave", "ave", {"model": "ave"}, 0.1, precision="bf16")
    fake_seed(results, TINY, "ave", "full", study.seeds[0], np.random.default_rng(0),
              config={"model": "ave", "precision": "fp32"})
    with pytest.raises(StudyError, match="tiny/seed/ave/full/1 finished in fp32"):
        pieces(study)


def test_bf16_pieces_are_refused_before_anything_runs_where_bf16_is_not_native(
        tmp_path, monkeypatch):
    import models.precision
    from hpo.study_runs import run_study

    study = load_study(bf16_tiny(tmp_path))
    run = StudyRun(study, output_dir=tmp_path / "out")
    monkeypatch.setattr(models.precision, "native_bf16", lambda device: False)
    with pytest.raises(StudyError, match="the pieces of tiny train in bf16, which .* does not "
                                         "run natively"):
        run_study(run)
    assert not (tmp_path / "out").exists()
    # the kNN pieces train nothing in bf16: they may run anywhere
    run.check_precisions(pieces(study), [f"{TINY}/*/sknn*"])
    monkeypatch.setattr(models.precision, "native_bf16", lambda device: True)
    run.check_precisions(pieces(study), None)


def test_the_dry_run_takes_what_finished_pieces_took_here(tmp_path, monkeypatch,
                                                           tiny_data_dir):
    """An arm with seed runs finished on this CPU is estimated from them (their epochs and
    seconds per epoch); other arms' timings are scaled by how much longer the finished pieces
    took than their timing promised. Pieces finished on another CPU count for nothing."""
    import hpo.cost
    from hpo.cluster import Resources
    from hpo.cost import Timing, device_name
    from hpo.study_runs import _calibration, describe_study

    monkeypatch.setattr(hpo.cost, "time_variant",
                        lambda config, dataset, *, threads, cache=True: Timing(10.0, "x", threads))
    study = load_study(write_study(tmp_path))
    results = StudyResults(study.results_dir)
    fake_search(results, TINY, "ave", "ave", {"model": "ave"}, 0.1)
    fake_search(results, TINY, "sknn", "sknn", {"model": "sknn"}, 0.2)
    rng = np.random.default_rng(0)
    for arm, device, wall in (("full", device_name(), 80.0),
                              ("sess_dropout=0.0", "another CPU", 500.0)):
        fake_seed(results, TINY, "ave", arm, 1, rng)
        json_path = results.seed_files(TINY, "ave", arm, 1)[0]
        record = json.loads(json_path.read_text())
        json_path.write_text(json.dumps({**record, "epochs": 2, "wall_s": wall, "threads": 1,
                                         "side_by_side": 1, "device": device}))
    run = StudyRun(study, output_dir=tmp_path / "out", data_dir=tiny_data_dir,
                   resources=Resources(max_concurrent=2), seed_runs_at_once=2)
    text = describe_study(run)
    lines = {line.split()[0]: line for line in text.splitlines() if line.startswith("  seed/")}
    # seed 1 finished here: 40 s an epoch over 2 epochs (the run's on another CPU is left out)
    assert "~2 expected, 1 finished here" in lines["seed/ave/full/2"]
    assert lines["seed/ave/full/2"].endswith("~40 s")  # 2 epochs x 40 s / 2 at once
    # the arm's seed 1 finished on another CPU: its timing (10 s) scaled by this CPU's 40 / 10;
    # 2 epochs (the selected trial's best epoch 2 plus the patience, capped at 2)
    assert "finished here" not in lines["seed/ave/sess_dropout=0.0/2"]
    assert lines["seed/ave/sess_dropout=0.0/2"].endswith("~40 s")  # 2 x 10 x 4 / 2
    # searches take the seed runs' factor when none finished here, and their own when one did
    # (60 s x 2 slots / 4 trial-epochs = 30 s against 10 s)
    assert _calibration(run, study.datasets[0], 2, lambda s, t: 10.0) == {"search": 4.0,
                                                                         "seed": 4.0}
    search = results.search_file(TINY, "ave")
    search.write_text(json.dumps({**json.loads(search.read_text()), "device": device_name(),
                                  "trial_epochs": 4, "wall_s": 60.0, "cpus_per_trial": 1.0}))
    assert _calibration(run, study.datasets[0], 2, lambda s, t: 10.0) == {"search": 3.0,
                                                                         "seed": 4.0}


# ---------------------------------------------------------------- pieces and their states


def fake_search(results: StudyResults, label: str, space: str, variant: str, config: dict,
                value: float, precision: str | None = None) -> None:
    trials = pd.DataFrame({"trial_id": ["t0"], "outcome": ["completed"], "epochs": [2],
                           "best_epoch": [2], "best_valid_mrr_20": [value]})
    results.write_search(label, space, selection={
        "space": space, "variant": variant, "trial_id": "t0", "metric": "valid_mrr_20",
        "value": value, "max_epochs": 2, "config": config}, trials=trials,
        meta={"precision": precision} if precision else {})


def fake_seed(results: StudyResults, label: str, space: str, arm: str, seed: int,
              rng: np.random.Generator, n_rows: int = 50, n_items: int = 30,
              config: dict | None = None) -> None:
    ranks = rng.integers(1, 40, size=n_rows)
    metrics = {f"test_{name}_{k}": float(rng.random()) for k in (10, 20)
               for name in ("recall", "mrr", "ndcg")}
    exposure = np.bincount(rng.integers(1, n_items, size=n_rows * 20), minlength=n_items)
    results.write_seed(label, space, arm, seed, record={
        "best_epoch": 1, "epochs": 2, "selected_from": "t0", **metrics,
        **({"config": config} if config else {})},
        ranks=ranks, exposure=exposure)


def test_pieces_follow_the_exports(tmp_path):
    study = load_study(write_study(tmp_path))
    states = {s.piece.id: s.state for s in pieces(study)}
    assert states[f"{TINY}/search/ave"] == TODO
    assert states[f"{TINY}/seed/ave/full/1"] == WAITING
    assert states[f"{TINY}/seed/ave/sess_dropout=0.0/2"] == WAITING
    assert f"{TINY}/seed/sknn/sess_dropout=0.0/1" not in states  # the arm is ave's only
    results = StudyResults(study.results_dir)
    fake_search(results, TINY, "ave", "ave", {"model": "ave", "sess_dropout": 0.3}, 0.1)
    fake_search(results, TINY, "sknn", "sknn", {"model": "sknn", "k": 50}, 0.2)
    fake_seed(results, TINY, "ave", "full", 1, np.random.default_rng(0))
    by_id = {s.piece.id: s for s in pieces(study, tmp_path / "out")}
    assert by_id[f"{TINY}/search/ave"].state == DONE
    assert by_id[f"{TINY}/seed/ave/full/1"].state == DONE
    assert by_id[f"{TINY}/seed/ave/full/2"].state == TODO
    arm = by_id[f"{TINY}/seed/ave/sess_dropout=0.0/1"]
    assert arm.state == TODO and arm.config["sess_dropout"] == 0.0
    # an interrupted seed run left its folder: it resumes
    from hpo.studies import seed_dir

    seed_dir(study, tmp_path / "out", arm.piece).mkdir(parents=True)
    assert {s.piece.id: s.state for s in pieces(study, tmp_path / "out")}[arm.piece.id] == PARTIAL
    # a selection that already is the arm: the arm is skipped, with the reason
    fake_search(results, TINY, "ave", "ave", {"model": "ave", "sess_dropout": 0.0}, 0.1)
    skipped = {s.piece.id: s for s in pieces(study)}[arm.piece.id]
    assert skipped.state == SKIPPED and "already has sess_dropout=0.0" in skipped.note


def test_seed_runs_are_grouped_side_by_side_and_a_partial_group_resumes_whole(tmp_path):
    study = load_study(write_study(tmp_path, seeds=3))
    results = StudyResults(study.results_dir)
    fake_search(results, TINY, "ave", "ave", {"model": "ave", "sess_dropout": 0.3}, 0.1)
    fake_search(results, TINY, "sknn", "sknn", {"model": "sknn", "k": 50}, 0.2)
    out = tmp_path / "out"
    run = StudyRun(study, output_dir=out, seed_runs_at_once=2)
    assert run.seed_runs_side_by_side() == 2
    states = pieces(study, out)
    ready = [s for s in select(states, None)]
    group = seed_group(run, states, ready[0], only=None, size=2)
    assert [s.piece.id for s in group] == [f"{TINY}/seed/ave/full/1", f"{TINY}/seed/ave/full/2"]
    assert [s.piece.id for s in seed_group(run, states, ready[0], only=None, size=3)][-1] == (
        f"{TINY}/seed/ave/full/3")
    # --only limits the group as it limits the pieces
    only = [f"{TINY}/seed/*/*/1"]
    assert [s.piece.id for s in seed_group(run, states, ready[0], only=only, size=2)] == [
        f"{TINY}/seed/ave/full/1", f"{TINY}/seed/ave/sess_dropout=0.0/1"]
    # a group interrupted after it started: its pieces are partial and resume together,
    # without a piece to do joining them
    ids = [f"{TINY}/seed/ave/full/2", f"{TINY}/seed/sknn/full/1"]
    for state in states:
        if state.piece.id in ids:
            folder = seed_dir(study, out, state.piece)
            folder.mkdir(parents=True)
            (folder / "piece.json").write_text(json.dumps({"experiment": "x", "group": ids}))
    states = pieces(study, out)
    partial = next(s for s in select(states, None) if s.state == PARTIAL)
    assert partial.piece.id == ids[0]
    assert [s.piece.id for s in seed_group(run, states, partial, only=None, size=2)] == ids
    fresh = next(s for s in select(states, None) if s.piece.kind == "seed")
    assert fresh.piece.id == f"{TINY}/seed/ave/full/1"
    assert ids[0] not in [s.piece.id for s in seed_group(run, states, fresh, only=None, size=3)]
    # a group's runs share the CPUs a search spreads over its trials
    resources = Resources(cpus_per_trial=1.0, max_concurrent=2)
    wide = StudyRun(study, output_dir=out, resources=resources)
    assert wide.seed_resources(1).torch_threads == 2 and wide.seed_resources(2).torch_threads == 1
    assert wide.seed_resources(2).max_concurrent == 2


def test_seed_export_round_trip_is_compact_and_exact(tmp_path):
    results = StudyResults(tmp_path)
    ranks = np.array([1, 5, 20, 21, 500, 37_000])
    exposure = np.zeros(40_000, dtype=np.int64)
    exposure[[3, 17, 39_999]] = [5, 1, 14]
    results.write_seed("d", "trm", "full", 1, record={"x": 1}, ranks=ranks, exposure=exposure)
    run = results.seed("d", "trm", "full", 1)
    assert run.ranks.tolist() == [1, 5, 20, 21, CLIPPED_RANK, CLIPPED_RANK]
    assert np.array_equal(run.exposure, exposure) and run.record == {"x": 1}
    assert results.seed_files("d", "trm", "full", 1)[1].stat().st_size < 2_000


def test_table_of_a_dataset_in_progress_lists_the_finished_arms_without_tests(tmp_path):
    study = load_study(write_study(tmp_path))
    results = StudyResults(study.results_dir)
    rng = np.random.default_rng(1)
    fake_search(results, TINY, "sknn", "sknn", {"model": "sknn"}, 0.2)
    for seed in study.seeds:
        fake_seed(results, TINY, "sknn", "full", seed, rng)
    text = study_table(study_status(study))
    assert "No dataset of the study is complete yet." in text
    assert f"{TINY}: {1 + len(study.seeds)} of " in text  # the search and the seed runs
    seeds = results.seed_results(TINY, [("sknn", "full", s) for s in study.seeds])[0]
    row = next(line for line in text.splitlines() if line.startswith("| SKNN |"))
    assert f"{100 * seeds['recall_20'].mean():.2f} ±" in row and f"({len(study.seeds)})" in row
    assert "CORE-ave" not in text and "(b)" not in text  # unfinished arm; no baseline yet


def finish_tiny_study(study, rng: np.random.Generator) -> StudyResults:
    """Every piece of the tiny study exported (searches, dataset, seed runs), made up."""
    results = StudyResults(study.results_dir)
    fake_search(results, TINY, "ave", "ave", {"model": "ave"}, 0.1)
    fake_search(results, TINY, "sknn", "sknn", {"model": "sknn"}, 0.2)
    results.write_dataset(TINY, targets=rng.integers(1, 30, size=50),
                          popularity=np.arange(30), n_items=30, summary="tiny")
    for space, arm in (("ave", "full"), ("ave", "sess_dropout=0.0"), ("sknn", "full")):
        for seed in study.seeds:
            fake_seed(results, TINY, space, arm, seed, rng)
    return results


def test_report_and_table_are_rebuilt_from_the_exports_alone(tmp_path):
    study = load_study(write_study(tmp_path))
    results = finish_tiny_study(study, np.random.default_rng(3))
    assert all(s.state in (DONE, SKIPPED) for s in pieces(study))
    paths = write_reports(study)
    assert paths[TINY].rebuilt
    report = paths[TINY].folder / "results.md"
    text = report.read_text()
    assert "Baseline: SKNN (strongest baseline on validation: ave 0.1000, sknn 0.2000" in text
    assert "the last" not in text and "all rows" in text  # the training split, stated
    assert (paths[TINY].folder / "ablation.csv").is_file()
    arms = pd.read_csv(paths[TINY].folder / "ablation_session_tests.csv")  # the arm's rows too
    assert set(arms["arm"]) == {"sess_dropout=0.0"} and (arms["n_seeds"] == len(study.seeds)).all()
    assert (paths[TINY].folder / "popularity.csv").is_file()
    table = (study.results_dir / "table1.md").read_text()
    seeds = results.seed_results(TINY, [("ave", "full", s) for s in study.seeds])[0]
    mean = 100 * seeds["recall_20"].mean()
    assert f"{mean:.2f} ±" in table and "(b)" in table
    # the README block is the table, and only it is rewritten
    readme = tmp_path / "README.md"
    start, end = readme_markers(study.name)
    readme.write_text(f"# x\n\n{start}\nold\n{end}\n\nafter\n")
    assert update_readme(study, readme)
    assert readme.read_text() == f"# x\n\n{start}\n{table.strip()}\n{end}\n\nafter\n"


def test_a_report_built_from_the_same_exports_is_kept_and_any_changed_export_rebuilds_it(
        tmp_path):
    study = load_study(write_study(tmp_path))
    results = finish_tiny_study(study, np.random.default_rng(5))
    assert write_reports(study)[TINY].rebuilt
    report = results.report_dir(TINY) / "results.md"
    built = report.read_text()
    report.write_text("stale")  # a rebuild would overwrite it
    assert not write_reports(study)[TINY].rebuilt
    assert report.read_text() == "stale"
    assert write_reports(study, force=True)[TINY].rebuilt and report.read_text() == built
    # one seed run exported again with other results: the report is rebuilt from them
    fake_seed(results, TINY, "sknn", "full", study.seeds[0], np.random.default_rng(99))
    report.write_text("stale")
    assert write_reports(study)[TINY].rebuilt and report.read_text() not in ("stale", built)
    # a build stopped half way leaves no record of its inputs, so the next call rebuilds
    (results.report_dir(TINY) / "inputs.sha256").unlink()
    assert write_reports(study)[TINY].rebuilt


def test_the_sensitivity_figure_draws_every_search_trial_that_sampled_the_parameters(tmp_path):
    study = load_study(write_study(tmp_path, sensitivity=["lr"]))
    assert study.sensitivity == ("lr",)
    status = study_status(study)
    assert status.sensitivity_spaces == ("ave",)  # sknn does not search lr
    assert sensitivity_points(status).empty
    write_reports(study)  # no search yet: no figure, no line
    assert not status.sensitivity_file.exists()
    assert "Sensitivity" not in study_table(status)
    results = StudyResults(study.results_dir)
    trials = pd.DataFrame({
        "trial_id": ["a", "b", "c"], "outcome": ["completed", "stopped", "completed"],
        "epochs": [2, 1, 2], "best_epoch": [2, 1, 1], "best_valid_mrr_20": [0.2, 0.1, 0.3],
        "param.lr": [1e-3, 1e-2, None]})  # c: lr not sampled (a conditional parameter)
    results.write_search(TINY, "ave", selection={
        "space": "ave", "variant": "ave", "trial_id": "a", "metric": "valid_mrr_20",
        "value": 0.2, "max_epochs": 2, "config": {"model": "ave"}},
        trials=trials, meta={"budget": {"metric": "valid_mrr_20", "max_epochs": 2}})
    fake_search(results, TINY, "sknn", "sknn", {"model": "sknn"}, 0.2)
    points = sensitivity_points(status)
    assert points[["trial_id", "value", "score", "completed", "selected"]].values.tolist() == [
        ["a", 1e-3, 0.2, True, True], ["b", 1e-2, 0.1, False, False]]
    write_reports(study)
    assert status.sensitivity_file.stat().st_size > 1_000
    assert ("Sensitivity of lr: the 2 search trials of CORE-ave on tiny"
            in study_table(status))


def test_every_pieces_cost_is_listed_and_summed_once_per_group(tmp_path):
    study = load_study(write_study(tmp_path))
    results = StudyResults(study.results_dir)
    trials = pd.DataFrame({"trial_id": ["t0"], "outcome": ["completed"], "epochs": [2],
                           "best_epoch": [2], "best_valid_mrr_20": [0.1]})
    results.write_search(TINY, "ave", selection={
        "space": "ave", "variant": "ave", "trial_id": "t0", "metric": "valid_mrr_20",
        "value": 0.1, "max_epochs": 2, "config": {"model": "ave"}}, trials=trials,
        meta={"wall_s": 3600.0, "attempts": 2, "trial_epochs": 7, "device": "cpu x"})
    rng = np.random.default_rng(0)
    for seed in (1, 2):  # two runs side by side: one hour of wall time between them
        fake_seed(results, TINY, "ave", "full", seed, rng)
        json_path = results.seed_files(TINY, "ave", "full", seed)[0]
        record = json.loads(json_path.read_text())
        json_path.write_text(json.dumps({**record, "wall_s": 3600.0, "side_by_side": 2}))
    costs = results.piece_costs()
    assert costs["piece"].tolist() == [f"{TINY}/search/ave", f"{TINY}/seed/ave/full/1",
                                       f"{TINY}/seed/ave/full/2"]
    assert costs["attempts"].tolist() == [2, 1, 1] and costs["epochs"].tolist()[0] == 7
    write_reports(study)
    assert (study.results_dir / "pieces.csv").read_text().count("\n") == 4
    assert ("Compute so far: 3 pieces, 2.0 h of wall time (searches 1.0 h, seed runs 1.0 h"
            in study_table(study_status(study)))


def test_readme_table1_equals_the_study_files():
    """Every number of README's Table 1 is the one the committed study files give."""
    study = load_study(ROOT / "studies" / "table1.yaml")
    start, end = readme_markers(study.name)
    text = (ROOT / "README.md").read_text()
    assert start in text and end in text, "README.md has no Table 1 block"
    block = text.split(start, 1)[1].split(end, 1)[0].strip()
    assert block == study_table(study_status(study)).strip()
    numbers = re.findall(r"\d+\.\d\d", block)
    assert numbers == re.findall(r"\d+\.\d\d", study_table(study_status(study)))


# ---------------------------------------------------------------- end to end, with a kill


@pytest.mark.slow
def test_a_study_runs_resumes_a_killed_piece_and_rebuilds_its_report(tmp_path, tiny_data_dir):
    path = write_study(tmp_path)
    fixed = yaml.safe_load((ROOT / "search_spaces" / "ave.yaml").read_text())
    fixed["fixed"] = SMALL
    (tmp_path / "ave_small.yaml").write_text(yaml.safe_dump(fixed))
    raw = yaml.safe_load(path.read_text())
    raw["spaces"] = [str(tmp_path / "ave_small.yaml"), "sknn.yaml"]
    raw["ablate"] = [{"set": {"sess_dropout": 0.0}, "spaces": ["ave_small"]}]
    path.write_text(yaml.safe_dump(raw))
    out = tmp_path / "out"
    common = ["--study", str(path), "--data-dir", str(tiny_data_dir), "--output-dir", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    # The searches, then the first seed run killed while it trains its second epoch.
    driver, log = launch_driver([*common, "--only", "*/search/*"], tmp_path, env)
    assert wait_exit(driver, log, 600) == 0, log.read_text()[-3000:]
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    study = load_study(path)
    first = f"{TINY}/seed/ave_small/full/1"

    def paused_at_epoch_2() -> tuple[subprocess.Popen, Path]:
        (hooks / "train.paused").unlink(missing_ok=True)
        driver, log = launch_driver([*common, "--only", first], tmp_path, env,
                                    hook="pause@train::2", hook_dir=hooks)
        deadline = time.monotonic() + 600
        while not (hooks / "train.paused").exists():
            assert driver.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        assert json.loads((hooks / "train.paused").read_text())["epoch"] == 2
        return driver, log

    # Ctrl-C: Ray Tune stops and returns as if done; the piece must stay partial, unexported.
    driver, log = paused_at_epoch_2()
    driver.send_signal(signal.SIGINT)
    rc = wait_exit(driver, log, 300)
    kill_tree(driver)
    text = log.read_text()
    assert rc == launch.INTERRUPTED, text[-3000:]
    [line] = [t for t in text.splitlines() if t.startswith("interrupted: ")]
    assert "seed runs interrupted: 0 of 1 trials ended" in line and first in line
    assert {s.piece.id: s.state for s in pieces(study, out)}[first] == PARTIAL
    # Continued from epoch 1, then killed with its Ray workers, as a lost machine would be.
    driver, log = paused_at_epoch_2()
    kill_tree(driver)
    assert {s.piece.id: s.state for s in pieces(study, out)}[first] == PARTIAL

    # Rerun: the killed piece resumes from its last epoch; the rest runs; reports are written.
    rc, console = run_launch(common)
    assert rc == 0, console
    assert f"piece {first} (partial) starts" in console
    assert all(s.state in (DONE, SKIPPED) for s in pieces(study, out))
    results = StudyResults(study.results_dir)
    record = results.seed(TINY, "ave_small", "full", 1).record
    assert record["epochs"] == 2 and record["side_by_side"] == 1  # resumed in its own group
    # the other seed runs went side by side, as many as a search's trials at once, each with
    # its share of the CPUs
    others = [results.seed(TINY, space, arm, seed).record
              for space, arm, seed in [("ave_small", "full", 2), ("sknn", "full", 1),
                                       ("sknn", "full", 2), ("ave_small", "sess_dropout=0.0", 1)]]
    assert max(r["side_by_side"] for r in others) >= 2, console
    assert "seed runs side by side (1 thread(s) each)" in console
    client = MlflowClient(f"sqlite:///{out / 'studies' / 'mini' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(f"{TINY}/test")
    runs = client.search_runs([experiment.experiment_id],
                              filter_string="tags.seed = '1' and tags.space = 'ave_small' "
                                            "and tags.arm = 'full'")
    assert len(runs) == 1 and PARENT_TAG in runs[0].data.tags
    steps = [m.step for m in client.get_metric_history(runs[0].info.run_id, "train_loss")]
    assert steps == [1, 2]  # epoch 1 trained once, before the kill; epoch 2 after it

    # The kNN seed runs agree (nothing in them is random) and the report says so.
    knn = [results.seed(TINY, "sknn", "full", s).record["test_mrr_20"] for s in study.seeds]
    assert len(set(knn)) == 1
    report = study.results_dir / TINY / "report"
    written = {p.name: p.read_bytes() for p in report.iterdir() if p.suffix in (".md", ".csv")}
    assert "Deterministic: the seed runs of SKNN" in written["results.md"].decode()

    # Without the MLflow store or any working state, --report rebuilds the same report.
    shutil.rmtree(out)
    shutil.rmtree(report)
    rc, console = run_launch(["--study", str(path), "--report"])
    assert rc == 0, console
    rebuilt = {p.name: p.read_bytes() for p in report.iterdir() if p.suffix in (".md", ".csv")}
    assert rebuilt == written
