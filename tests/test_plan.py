"""Planning the test stage before anything runs: --baseline strongest, --ablate arms, options.

No Ray here: every check must fail (or pass) before a search or a retraining starts.
"""

from __future__ import annotations

import pytest

import launch
from hpo.ablation import AblationError, arm_jobs, parse_arm, parse_arms, validate_arms
from hpo.selection import Selection, SelectionError, strongest_baseline


def selection(space: str, value: float, config: dict | None = None,
              metric: str = "valid_mrr_20") -> Selection:
    return Selection(dataset="d", space=space, variant=space, search_run_id="s",
                     trial_run_id=f"run-{space}", trial_id="t", metric=metric, value=value,
                     max_epochs=3, config={"model": space, **(config or {})})


@pytest.fixture
def common(tiny_data_dir, tmp_path):
    return ["--dataset", "tiny", "--data-dir", str(tiny_data_dir), "--output-dir",
            str(tmp_path / "out")]


def run(argv, capsys):
    rc = launch.main(argv)
    return rc, capsys.readouterr()


# ---------------------------------------------------------------- --baseline strongest


def test_strongest_baseline_is_the_better_validation_score_of_ave_and_trm():
    chosen, note = strongest_baseline([selection("ave", 0.31), selection("trm", 0.30),
                                       selection("da", 0.40)])
    assert chosen == "ave"  # da scores higher but is not a baseline
    assert "ave 0.3100" in note and "trm 0.3000" in note and "valid_mrr_20" in note
    assert strongest_baseline([selection("ave", 0.2), selection("trm", 0.3)])[0] == "trm"
    assert strongest_baseline([selection("ave", 0.3), selection("trm", 0.3)])[0] == "trm"  # tie
    assert strongest_baseline([selection("ave", 0.2), selection("trm", 0.3)], "min")[0] == "ave"
    assert strongest_baseline([selection("ave", 0.2), selection("da", 0.3)])[0] == "ave"
    with pytest.raises(SelectionError, match="needs an ave, trm or kNN space"):
        strongest_baseline([selection("da", 0.2), selection("hn", 0.3)])
    with pytest.raises(SelectionError, match="different metrics"):
        strongest_baseline([selection("ave", 0.2), selection("trm", 0.3, metric="valid_r")])


def test_baseline_strongest_without_ave_or_trm_fails_before_anything_runs(common, capsys,
                                                                          tmp_path):
    rc, out = run(["--space", "da.yaml", "hn.yaml", "--stage", "all", "--baseline", "strongest",
                   *common], capsys)
    assert rc == 2 and "--baseline strongest" in out.err and "ave.yaml" in out.err
    assert not (tmp_path / "out").exists()  # no search, no tracking store
    rc, out = run(["--space", "da.yaml", "--stage", "test", "--baseline", "trm", *common], capsys)
    assert rc == 2 and "'trm' is not among the spaces" in out.err


# ---------------------------------------------------------------- --ablate


def test_parse_arms_one_arm_per_option_values_as_yaml():
    arms = parse_arms([["da_gating=false"], ["da_recent=False", "hn_lambda=0"], ["x=linear"]])
    assert [arm.name for arm in arms] == ["da_gating=false",
                                          "da_recent=false,hn_lambda=0", "x=linear"]
    assert arms[1].changes == (("da_recent", False), ("hn_lambda", 0))
    assert parse_arms(None) == ()
    with pytest.raises(AblationError, match="expected KEY=VALUE"):
        parse_arm(["da_gating"])
    with pytest.raises(AblationError, match="'seed' cannot be ablated"):
        parse_arm(["seed=3"])
    with pytest.raises(AblationError, match="more than once"):
        parse_arms([["da_gating=false"], ["da_gating=no"]])  # YAML: no == false


def test_validate_arms_names_key_and_value():
    validate_arms(parse_arms([["da_gating=false"], ["temperature=0.1"]]), ["ave", "trm", "da"])
    with pytest.raises(AblationError, match=r"nope=1: no compared variant has config key 'nope'"):
        validate_arms(parse_arms([["nope=1"]]), ["ave", "trm"])
    with pytest.raises(AblationError, match=r"da_gating=3: .*'da_gating' expects bool, got 3"):
        validate_arms(parse_arms([["da_gating=3"]]), ["trm", "da"])
    with pytest.raises(AblationError, match=r"hn_lambda=2.0: .*'hn_lambda' must be in \[0, 1\]"):
        validate_arms(parse_arms([["hn_lambda=2.0"]]), ["hn"])
    with pytest.raises(AblationError, match="all of the config keys"):
        validate_arms(parse_arms([["da_gating=false", "hn_k=8"]]), ["da", "hn"])


def test_arm_jobs_retrain_only_where_the_arm_changes_the_selection():
    arms = parse_arms([["da_gating=false"], ["n_heads=3"], ["n_layers=2"]])
    gated = selection("da", 0.3, {"da_gating": True, "embedding_size": 12})
    ungated = selection("dahn", 0.3, {"da_gating": False, "embedding_size": 12})
    jobs, skipped = arm_jobs(arms, [selection("ave", 0.2), gated, ungated])
    assert [(s.space, arm.name) for s, arm, _ in jobs] == [
        ("da", "da_gating=false"), ("da", "n_heads=3"), ("dahn", "n_heads=3")]
    assert jobs[0][2] == {"model": "da", "da_gating": False, "embedding_size": 12}
    assert set(skipped) == {("d", "dahn", "da_gating=false"), ("d", "da", "n_layers=2"),
                            ("d", "dahn", "n_layers=2")}  # n_layers=2 is the default
    bad = selection("trm", 0.3, {"embedding_size": 16})
    with pytest.raises(AblationError, match="n_heads=3: invalid for trm's selected configuration"):
        arm_jobs(parse_arms([["n_heads=3"]]), [bad])


@pytest.mark.parametrize("ablate, message", [
    (["nope=1"], "--ablate nope=1: no compared variant has config key 'nope'"),
    (["da_gating=3"], "'da_gating' expects bool, got 3"),
    (["temperature=-1"], "'temperature' must be > 0, got -1.0"),
    (["model=trm"], "'model' cannot be ablated"),
])
def test_launch_rejects_bad_arms_before_anything_runs(common, capsys, tmp_path, ablate, message):
    rc, out = run(["--space", "trm.yaml", "da.yaml", "--stage", "all", "--ablate", *ablate,
                   *common], capsys)
    assert rc == 2 and message in out.err
    assert not (tmp_path / "out").exists()


def test_ablate_needs_the_test_stage_and_dry_run_prints_the_test_plan(common, capsys):
    rc, out = run(["--space", "da.yaml", "--ablate", "da_gating=false", *common], capsys)
    assert rc == 2 and "--stage test or --stage all" in out.err
    rc, out = run(["--space", "ave.yaml", "trm.yaml", "da.yaml", "--stage", "all", "--dry-run",
                   "--baseline", "strongest", "--correction", "fdr_bh", "--seeds", "3",
                   "--ablate", "da_gating=false", "--ablate", "da_recent=false", *common], capsys)
    assert rc == 0
    assert "baseline strongest; fdr_bh correction, alpha 0.01" in out.out
    assert "seeds 1..3" in out.out and "da_gating=false, da_recent=false" in out.out


def test_correction_and_alpha_options(common, capsys):
    with pytest.raises(SystemExit):
        launch.build_parser().parse_args(["--space", "trm.yaml", "--correction", "sidak"])
    rc, out = run(["--space", "trm.yaml", "--stage", "test", "--alpha", "1.5", *common], capsys)
    assert rc == 2 and "--alpha must be in (0, 1)" in out.err
    args = launch.build_parser().parse_args(["--space", "trm.yaml"])
    assert (args.correction, args.alpha, args.baseline, args.ablate) == ("holm", 0.01, "trm",
                                                                         None)


# ---------------------------------------------------------------- what a variant needs of data


def test_semantic_variant_on_a_dataset_without_item_text_fails_before_anything_runs(
        tmp_path, capsys):
    from dataclasses import replace

    from data.atomic import write_dataset
    from data.synthetic import make_dataset

    plain = replace(make_dataset("tiny", seed=0, name="plain"), items=None)
    write_dataset(plain, tmp_path / "data" / "plain")
    common = ["--dataset", "plain", "--data-dir", str(tmp_path / "data"),
              "--output-dir", str(tmp_path / "out")]
    rc, out = run(["--space", "trm.yaml", "--dry-run", *common], capsys)
    assert rc == 0  # a non-semantic variant is fine on it
    rc, out = run(["--space", "trm.yaml", "semsr_f.yaml", "--dry-run", *common], capsys)
    assert rc == 2 and "no item text" in out.err and "plain.item" in out.err
    assert not (tmp_path / "out").exists()


def test_a_missing_text_model_fails_before_anything_runs(tiny_data_dir, tmp_path, capsys):
    rc, out = run(["--space", "semsr_i.yaml", "--text-model", str(tmp_path / "nowhere"),
                   "--dry-run", "--dataset", "tiny", "--data-dir", str(tiny_data_dir),
                   "--output-dir", str(tmp_path / "out")], capsys)
    assert rc == 2 and "text model" in out.err and "nowhere" in out.err
    assert not (tmp_path / "out").exists()
