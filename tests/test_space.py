"""Search-space files: every bundled space is valid, and each kind of mistake is named clearly."""

from __future__ import annotations

import optuna
import pytest
import yaml

import hpo.space
from hpo.space import SPACES_DIR, ConfigSampler, SpaceError, load_space, resolve_space_path
from models.registry import VARIANTS, config_keys


def write_space(tmp_path, parameters, **top):
    raw = {"model": "enhanced", "parameters": parameters, **top}
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_every_variant_has_a_valid_bundled_space():
    names = {p.stem for p in SPACES_DIR.glob("*.yaml")}
    # ips.yaml is CORE-trm with inverse-propensity weighting: a space, not a variant
    assert names == set(VARIANTS) | {"ips"}
    ips = load_space("ips.yaml")
    assert ips.model == "trm" and ips.fixed == {"pop_weighting": "ips"}
    for name in VARIANTS:
        space = load_space(f"{name}.yaml")
        assert space.model == name
        assert {p.name for p in space.parameters} <= config_keys(name)
        assert space.budget_for("synthetic").num_samples <= space.budget.num_samples


def test_space_found_by_name_stem_or_path(tmp_path):
    assert resolve_space_path("dahn.yaml") == resolve_space_path("dahn")
    path = write_space(tmp_path, {"temperature": {"type": "loguniform", "low": 0.03, "high": 0.2}})
    assert resolve_space_path(str(path)) == path.resolve()
    with pytest.raises(SpaceError, match="not found.*available: ave.yaml"):
        resolve_space_path("nope.yaml")


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"temprature": {"type": "uniform", "low": 0.1, "high": 0.2}},
         r"parameter 'temprature' is not a config key of variant 'enhanced'; did you mean "
         r"'temperature'"),
        ({"temperature": {"type": "uniform", "low": 0.2, "high": 0.2}},
         r"parameter 'temperature': low \(0.2\) must be < high \(0.2\)"),
        ({"temperature": {"type": "loguniform", "low": 0.0, "high": 0.2}},
         r"parameter 'temperature': a log-scale range must be > 0"),
        ({"hidden_dropout": {"type": "categorical", "choices": []}},
         r"parameter 'hidden_dropout': 'choices' must be a non-empty list"),
        ({"temperature": {"type": "logunifrom", "low": 0.03, "high": 0.2}},
         r"unknown distribution type 'logunifrom' \(did you mean 'loguniform'\?\)"),
        ({"temperature": {"type": "uniform", "low": 0.03, "hgh": 0.2}},
         r"unknown uniform option\(s\) \['hgh'\]"),
        ({"beta": {"type": "uniform", "low": 0.1, "high": 1.0, "condition": {"enh_inbatch": True}}},
         r"parameter 'beta': condition refers to 'enh_inbatch', which is not a parameter"),
        ({"n_layers": {"type": "int", "low": 1.5, "high": 3}},
         r"parameter 'n_layers': 'low' must be a number|int bounds must be integers"),
        ({"seed": {"type": "int", "low": 1, "high": 3}},
         r"'seed' is set by the search itself"),
    ],
)
def test_invalid_parameter_is_reported_with_file_and_name(tmp_path, parameters, message):
    path = write_space(tmp_path, parameters)
    with pytest.raises(SpaceError, match=message) as info:
        load_space(path)
    assert str(path) in str(info.value)


def test_invalid_top_level_and_budget(tmp_path):
    ok = {"temperature": {"type": "loguniform", "low": 0.03, "high": 0.2}}
    with pytest.raises(SpaceError, match="'model' must be one of"):
        load_space(write_space(tmp_path, ok, model="gru4rec"))
    with pytest.raises(SpaceError, match=r"unknown top-level key\(s\) \['paramters'\]"):
        load_space(write_space(tmp_path, ok, paramters={}))
    with pytest.raises(SpaceError, match="metric 'valid_auc' is not one of"):
        load_space(write_space(tmp_path, ok, budget={"metric": "valid_auc"}))
    with pytest.raises(SpaceError, match=r"dataset_budgets.synthetic: grace_period \(5\) exceeds"):
        load_space(write_space(tmp_path, ok, dataset_budgets={"synthetic": {"max_epochs": 3,
                                                                             "grace_period": 5}}))
    with pytest.raises(SpaceError, match="'hidden_dropout' is both fixed and searched"):
        load_space(write_space(tmp_path, {"hidden_dropout": {"type": "uniform", "low": 0.1,
                                                             "high": 0.5}},
                               fixed={"hidden_dropout": 0.2}))


def test_unknown_key_for_this_variant_is_rejected(tmp_path):
    path = tmp_path / "ave.yaml"
    path.write_text(yaml.safe_dump({"model": "ave", "parameters": {
        "hn_k": {"type": "int", "low": 8, "high": 64}}}))
    with pytest.raises(SpaceError, match="'hn_k' is not a config key of variant 'ave'"):
        load_space(path)


def sample_configs(space, seed: int, n: int) -> list[dict]:
    sampler = ConfigSampler(space, {"epochs": 3, "seed": 0})
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed), direction="maximize")
    configs = []
    for _ in range(n):
        trial = study.ask()
        constants = sampler(trial)
        configs.append({**trial.params, **constants})
        study.tell(trial, 0.0)
    return configs


def test_conditional_parameter_only_present_when_condition_holds():
    space = load_space("enhanced.yaml")
    configs = sample_configs(space, seed=3, n=30)
    with_term = [c for c in configs if c["enh_inbatch"]]
    without = [c for c in configs if not c["enh_inbatch"]]
    assert with_term and without
    assert all("beta" in c for c in with_term)
    assert all("beta" not in c for c in without)
    for c in configs:
        assert c["model"] == "enhanced" and c["epochs"] == 3
        assert 0.03 <= c["temperature"] <= 0.2


def test_sampled_configs_reproducible_for_a_seed():
    space = load_space("dahn.yaml")
    first, again, other = (sample_configs(space, s, 6) for s in (7, 7, 8))
    assert first == again
    assert first != other
    assert all(8 <= c["hn_k"] <= 256 and isinstance(c["hn_k"], int) for c in first)


# -- values checked against the registry when the file is read ----------------------------------


def test_fixed_value_of_the_wrong_type_is_rejected_naming_file_key_and_value(tmp_path):
    path = write_space(tmp_path, {"lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}},
                       fixed={"embedding_size": "big"})
    message = r"fixed key 'embedding_size' = 'big'.*expects int"
    with pytest.raises(SpaceError, match=message) as info:
        load_space(path)
    assert str(info.value).startswith(f"{path}: ")


def test_dropout_range_reaching_one_is_rejected(tmp_path):
    path = write_space(tmp_path, {"hidden_dropout": {"type": "uniform", "low": 0.1, "high": 1.0}})
    with pytest.raises(SpaceError, match=r"parameter 'hidden_dropout' = 1.0.*must be in \[0, 1\)"):
        load_space(path)
    load_space(write_space(tmp_path, {"hidden_dropout": {"type": "uniform", "low": 0.1,
                                                         "high": 0.9}}))


@pytest.mark.parametrize(
    "n_heads",
    [{"type": "categorical", "choices": [2, 3, 4]}, {"type": "int", "low": 1, "high": 8}],
)
def test_n_heads_that_do_not_divide_embedding_size_are_rejected(tmp_path, n_heads):
    path = write_space(tmp_path, {"n_heads": n_heads}, fixed={"embedding_size": 64})
    with pytest.raises(SpaceError, match=r"parameter 'n_heads' = 3, which is invalid: "
                                         r"embedding_size must be a multiple of n_heads; "
                                         r"embedding_size = 64 \(fixed\)"):
        load_space(path)
    load_space(write_space(tmp_path, {"n_heads": {"type": "categorical", "choices": [1, 2, 4, 8]}},
                           fixed={"embedding_size": 64}))


def test_searched_values_are_checked_together(tmp_path):
    sizes = {"type": "categorical", "choices": [64, 96]}
    path = write_space(tmp_path, {"embedding_size": sizes,
                                  "n_heads": {"type": "categorical", "choices": [2, 3]}})
    with pytest.raises(SpaceError, match=r"'embedding_size' = 64, parameter 'n_heads' = 3"):
        load_space(path)
    # A fixed value that only fails with the default of a key every trial sets is fine.
    load_space(write_space(tmp_path, {"embedding_size": {"type": "categorical",
                                                         "choices": [96, 192]}},
                           fixed={"n_heads": 3}))


def test_conditional_value_only_checked_where_its_condition_holds(tmp_path):
    sizes = {"type": "categorical", "choices": [64, 96]}
    heads = {"type": "categorical", "choices": [2, 3]}
    # n_heads = 3 only exists in trials with embedding_size 96: valid (with 64 or the default
    # 100 it would not be).
    space = load_space(write_space(tmp_path, {
        "embedding_size": sizes, "n_heads": {**heads, "condition": {"embedding_size": 96}}}))
    assert space.parameters[1].condition == {"embedding_size": (96,)}
    with pytest.raises(SpaceError, match=r"'embedding_size' = 64, parameter 'n_heads' = 3"):
        load_space(write_space(tmp_path, {
            "embedding_size": sizes, "n_heads": {**heads, "condition": {"embedding_size": 64}}}))
    # The out-of-range beta of a conditional parameter is caught when its condition can hold.
    with pytest.raises(SpaceError, match=r"parameter 'beta' = -0.5"):
        load_space(write_space(tmp_path, {
            "enh_inbatch": {"type": "categorical", "choices": [True, False]},
            "beta": {"type": "uniform", "low": -0.5, "high": 1.0,
                     "condition": {"enh_inbatch": True}}}))


def test_every_value_checked_when_combinations_exceed_the_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(hpo.space, "COMBINATION_LIMIT", 4)
    parameters = {
        "n_layers": {"type": "int", "low": 1, "high": 3},
        "enh_gate": {"type": "categorical", "choices": [True, False]},
        "sess_dropout": {"type": "uniform", "low": 0.0, "high": 0.5},
        "inner_size": {"type": "int", "low": 16, "high": 64, "step": 16},
        "n_heads": {"type": "categorical", "choices": [1, 2, 4, 5, 8]},
    }
    blamed = r"parameter 'n_heads' = 5, fixed key 'embedding_size' = 64, which is invalid"
    with pytest.raises(SpaceError, match=blamed):
        load_space(write_space(tmp_path, parameters, fixed={"embedding_size": 64}))
    with pytest.raises(SpaceError, match=r"parameter 'sess_dropout' = 1.0"):
        load_space(write_space(tmp_path, {**parameters, "n_heads": {
            "type": "categorical", "choices": [1, 2]}, "sess_dropout": {
            "type": "uniform", "low": 0.0, "high": 1.0}}, fixed={"embedding_size": 64}))


@pytest.mark.parametrize("path", sorted(SPACES_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_space_loads(path):
    assert load_space(path.name).path == path
