"""Fair arms: spaces compared together search the knobs they share alike (hpo.fairness)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hpo.fairness import UnequalSpacesError, arm_differences, check_fair_arms, shared_keys
from hpo.space import SPACES_DIR, load_space

ROOT = Path(__file__).resolve().parent.parent


def variant_of(tmp_path, name: str, edit) -> Path:
    """A copy of a bundled space with ``edit(raw)`` applied, under a new file name."""
    raw = yaml.safe_load((SPACES_DIR / f"{name}.yaml").read_text())
    edit(raw)
    path = tmp_path / f"{name}_edited.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.mark.parametrize("dataset", ["synthetic", "tmall", "diginetica", "ml-100k"])
def test_the_bundled_spaces_are_fair_arms_of_one_comparison(dataset):
    spaces = [load_space(path) for path in sorted(SPACES_DIR.glob("*.yaml"))]
    assert arm_differences(spaces, [space.budget_for(dataset) for space in spaces]) == []


def test_trm_searches_only_what_every_transformer_variant_shares():
    trm, dahn = load_space("trm.yaml"), load_space("dahn.yaml")
    searched = {p.name for p in trm.parameters}
    assert {"pos_encoding", "ema_decay"}.isdisjoint(searched)
    assert searched <= set(shared_keys(trm, dahn))


def test_a_different_range_is_named_with_the_key_and_both_files(tmp_path):
    def widen(raw):
        raw["parameters"]["lr"]["low"] = 0.0001

    edited = load_space(variant_of(tmp_path, "da", widen))
    with pytest.raises(UnequalSpacesError) as caught:
        check_fair_arms([load_space("trm.yaml"), edited])
    message = str(caught.value)
    assert "lr" in message and "trm.yaml" in message and "da_edited.yaml" in message
    assert "[0.0003, 0.003]" in message and "[0.0001, 0.003]" in message
    # Overridden: the difference is returned (for the report) instead.
    (difference,) = check_fair_arms([load_space("trm.yaml"), edited], allow=True)
    assert difference.key == "lr"


def test_searched_in_one_arm_and_left_at_the_default_in_the_other_is_unfair(tmp_path):
    def search_positions(raw):
        raw["parameters"]["pos_encoding"] = {"type": "categorical",
                                             "choices": ["absolute", "relative"]}

    edited = load_space(variant_of(tmp_path, "trm", search_positions))
    (difference,) = arm_differences([edited, load_space("da.yaml")])
    assert difference.key == "pos_encoding"
    assert "the default" in difference.detail


def test_a_key_the_space_is_about_is_left_out(tmp_path):
    enhanced = load_space("enhanced.yaml")
    assert "pos_encoding" in enhanced.about
    assert "pos_encoding" not in shared_keys(enhanced, load_space("trm.yaml"))

    def forget_about(raw):
        del raw["about"]

    edited = load_space(variant_of(tmp_path, "enhanced", forget_about))
    keys = {d.key for d in arm_differences([edited, load_space("trm.yaml")])}
    assert keys == {"pos_encoding", "ema_decay"}


def test_a_fixed_value_equal_to_the_other_arms_default_is_fair(tmp_path):
    def fix_default(raw):
        raw["fixed"] = {"n_layers": 2}

    def fix_other(raw):
        raw["fixed"] = {"n_layers": 3}

    trm = load_space("trm.yaml")
    assert arm_differences([load_space(variant_of(tmp_path, "da", fix_default)), trm]) == []
    (difference,) = arm_differences([load_space(variant_of(tmp_path, "hn", fix_other)), trm])
    assert difference.key == "n_layers" and "3" in difference.detail


def test_own_knobs_differ_freely_but_knobs_two_variants_share_do_not(tmp_path):
    hn, dahn = load_space("hn.yaml"), load_space("dahn.yaml")
    assert "hn_k" in shared_keys(hn, dahn)  # both are about the hybrid loss: searched alike
    assert "hn_k" not in shared_keys(hn, load_space("trm.yaml"))

    def narrow(raw):
        raw["parameters"]["hn_k"]["high"] = 64

    keys = {d.key for d in arm_differences([load_space(variant_of(tmp_path, "dahn", narrow)),
                                            hn])}
    assert keys == {"hn_k"}


def test_budgets_must_match(tmp_path):
    def fewer(raw):
        raw["budget"]["num_samples"] = 10

    edited = load_space(variant_of(tmp_path, "da", fewer))
    trm = load_space("trm.yaml")
    keys = {d.key for d in arm_differences([trm, edited], [trm.budget, edited.budget])}
    assert keys == {"budget.num_samples"}


def test_launch_refuses_unequal_arms_before_ray_starts(tmp_path):
    def widen(raw):
        raw["parameters"]["lr"]["low"] = 0.0001

    edited = variant_of(tmp_path, "da", widen)
    command = [sys.executable, "launch.py", "--space", "trm.yaml", "da.yaml", "--dataset",
               "synthetic", "--dry-run", "--output-dir", str(tmp_path / "out")]
    fair = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert fair.returncode == 0, fair.stderr
    command[4] = str(edited)
    unfair = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert unfair.returncode == 2
    lines = unfair.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in unfair.stderr
    assert "lr" in lines[0] and "trm.yaml" in lines[0] and "da_edited.yaml" in lines[0]
    allowed = subprocess.run([*command, "--allow-unequal-spaces"], cwd=ROOT,
                             capture_output=True, text=True, timeout=120)
    assert allowed.returncode == 0, allowed.stderr
    assert "unequal arms" in allowed.stderr
