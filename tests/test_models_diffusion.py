"""The diffaug variant: DDPM noising in closed form, classifier-free guidance, rows mapped to valid
items, counterfactuals anchored to observed rows, the stages seeing the training split only, and
the stage cache."""

from __future__ import annotations

import math
import warnings
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from data.dataset import SessionDataset, Split
from models.diffusion import augment as augment_module
from models.diffusion import stages
from models.diffusion.augment import augment_training, stage_keys
from models.diffusion.denoiser import Denoiser
from models.diffusion.schedule import Schedule, guided_eps, make_betas
from models.diffusion.spec import base_config
from models.diffusion.stages import HEAD, MID, TAIL, DenoiserSettings
from models.item_groups import head_item_mask
from models.registry import build_model, resolve_config
from models.weighting import training_rows

# ------------------------------------------------------------------ schedule


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_forward_noising_matches_the_closed_form_exactly_with_fixed_noise(kind):
    schedule = Schedule.create(kind, 20)
    betas = make_betas(kind, 20)
    x0 = torch.randn(5, 3, 4, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(5, 3, 4, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0, 3, 7, 12, 19])
    abar = torch.cumprod(1 - betas, 0)[t].float().view(-1, 1, 1)  # computed here, not taken
    expected = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
    assert torch.allclose(schedule.q_sample(x0, t, noise), expected, atol=1e-6)


def test_step_by_step_noising_has_the_closed_form_mean_and_variance():
    """Running q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I) t times from a fixed x_0
    gives N(sqrt(abar_t) x_0, (1 - abar_t) I); q_sample must draw from the same law."""
    steps, t = 30, 17
    schedule = Schedule.create("linear", steps)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.tensor([1.5, -2.0, 0.5])
    n = 200_000
    x = x0.expand(n, 3).clone()
    for beta in schedule.betas[: t + 1]:
        x = (1 - beta).sqrt() * x + beta.sqrt() * torch.randn(n, 3, generator=gen)
    direct = schedule.q_sample(x0.expand(n, 3), torch.full((n,), t),
                               torch.randn(n, 3, generator=gen))
    abar = float(schedule.alpha_bars[t])
    for sample in (x, direct):
        assert torch.allclose(sample.mean(0), math.sqrt(abar) * x0, atol=0.01)
        assert torch.allclose(sample.var(0), torch.full((3,), 1 - abar), atol=0.01)
    assert 0.0 < abar < 1.0


def test_schedules_are_valid_and_the_linear_one_is_ddpms_rescaled():
    linear = make_betas("linear", 1000)
    assert linear[0].item() == pytest.approx(1e-4) and linear[-1].item() == pytest.approx(0.02)
    short = make_betas("linear", 100)
    assert short[0].item() == pytest.approx(1e-3) and short[-1].item() == pytest.approx(0.2)
    cosine = make_betas("cosine", 50)
    assert torch.all(cosine > 0) and torch.all(cosine <= 0.999)
    assert torch.all(cosine[1:] >= cosine[:-1])  # noise grows along the chain
    schedule = Schedule.create("cosine", 50)
    assert schedule.alpha_bars[-1] < 0.01  # the chain ends near pure noise
    with pytest.raises(ValueError, match="beta schedule"):
        make_betas("quadratic", 10)


def test_reverse_step_recovers_x0_when_the_noise_prediction_is_exact():
    schedule = Schedule.create("linear", 10)
    x0 = torch.randn(4, 2, 3)
    noise = torch.randn(4, 2, 3)
    x_t = schedule.q_sample(x0, torch.zeros(4, dtype=torch.long), noise)
    # at t = 0 (the paper's t = 1) the step returns its mean, which is x_0 for the exact noise
    assert torch.allclose(schedule.p_step(x_t, 0, noise, None), x0, atol=1e-5)


# ------------------------------------------------------------------ guidance


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_a_respaced_chain_keeps_the_full_chains_abar_at_evenly_spaced_steps(kind):
    full = Schedule.create(kind, 50)
    assert torch.equal(Schedule.respaced(kind, 50, 50).betas, full.betas)
    assert torch.equal(Schedule.respaced(kind, 50, 80).timesteps, torch.arange(50))
    short = Schedule.respaced(kind, 50, 10)
    assert short.steps == 10 and short.timesteps[0] == 0 and short.timesteps[-1] == 49
    assert (short.timesteps.diff() >= 5).all()
    torch.testing.assert_close(short.alpha_bars, full.alpha_bars[short.timesteps])
    # each respaced step makes the jump between two kept steps of the full chain
    torch.testing.assert_close(short.alphas[1:], short.alpha_bars[1:] / short.alpha_bars[:-1])
    assert torch.equal(short.betas[0], full.betas[0])
    assert (short.betas[1:] > full.betas[short.timesteps[1:]]).all()
    with pytest.raises(ValueError, match="sample steps"):
        Schedule.respaced(kind, 50, 0)


def test_sampling_calls_the_network_once_per_respaced_step_with_the_original_timesteps():
    model = Denoiser(4, 2, 3, hidden=8).eval()
    seen = []
    model.register_forward_pre_hook(lambda _, args: seen.append(args[1].unique().tolist()))
    schedule = Schedule.respaced("linear", 40, 5)
    stages.generate(model, schedule, 3, group=TAIL, guidance_scale=2.0,
                    device=torch.device("cpu"))
    assert seen == [[t] for t in reversed(schedule.timesteps.tolist())]
    assert seen[0] == [39] and seen[-1] == [0]


def test_guidance_scale_0_is_unconditional_and_1_is_conditional():
    torch.manual_seed(0)
    model = Denoiser(dim=8, window=3, n_classes=3, hidden=16).eval()
    x = torch.randn(6, 4, 8)
    t = torch.randint(0, 10, (6,))
    c = torch.tensor([0, 1, 2, 2, 1, 0])
    null = torch.full_like(c, model.null_class)
    with torch.no_grad():
        cond, uncond = model(x, t, c), model(x, t, null)
        assert not torch.allclose(cond, uncond)  # the condition matters
        assert torch.allclose(model.guided(x, t, c, 0.0), uncond, atol=1e-5)
        assert torch.allclose(model.guided(x, t, c, 1.0), cond, atol=1e-5)
        assert torch.allclose(model.guided(x, t, c, 3.0), uncond + 3 * (cond - uncond), atol=1e-4)
    assert torch.equal(guided_eps(torch.ones(2), torch.zeros(2), 2.5), torch.full((2,), 2.5))


# ------------------------------------------------------------------ rows and groups


def test_popularity_groups_rank_the_targeted_items_by_training_target_count():
    # counts: item 1: 9, 3: 8, 2: 7, 4..10: 6, 5, 4, 3, 2, 1, 1; items 11..20: never a target
    counts = {1: 9, 3: 8, 2: 7, 4: 6, 5: 5, 6: 4, 7: 3, 8: 2, 9: 1, 10: 1}
    targets = np.repeat(list(counts), list(counts.values()))
    groups = stages.popularity_groups(targets, 21, tail_quantile=0.3)
    assert groups[0] == -1
    assert np.flatnonzero(groups == HEAD).tolist() == [1, 3]  # 20% of the 10 targeted items
    assert np.flatnonzero(groups == MID).tolist() == [2, 4, 5, 6, 7]
    # the 3 least popular targeted items (the tie 9 / 10 goes to the lower id first), and every
    # never-targeted item
    assert np.flatnonzero(groups == TAIL).tolist() == [8, 9, 10, *range(11, 21)]
    # the tail has training rows even when most of the catalog is never a target
    assert (groups[targets] == TAIL).sum() == 4
    # the head is models.item_groups' (the report's head too)
    assert np.array_equal(groups == HEAD, head_item_mask(np.bincount(targets, minlength=21)))
    with pytest.raises(ValueError, match="tail_quantile"):
        stages.popularity_groups(targets, 21, tail_quantile=0.9)


def test_row_windows_left_pad_the_last_items_and_append_the_target():
    train = Split.from_rows([[1, 2, 3, 4], [5], [6, 7]], [8, 9, 10])
    windows = stages.row_windows(train, 3)
    assert windows.tolist() == [[2, 3, 4, 8], [0, 0, 5, 9], [0, 6, 7, 10]]
    split = stages.windows_to_split(windows, max_len=5)
    assert split.prefixes.tolist() == [[2, 3, 4, 0, 0], [5, 0, 0, 0, 0], [6, 7, 0, 0, 0]]
    assert split.lengths.tolist() == [3, 1, 2] and split.targets.tolist() == [8, 9, 10]
    assert stages.windows_to_split(windows, max_len=2).prefixes.tolist()[0] == [3, 4]


def test_filter_rows_drops_invalid_off_group_and_duplicate_rows():
    groups = np.array([-1, HEAD, MID, TAIL, TAIL])
    windows = np.array([
        [0, 1, 3],  # kept
        [1, 0, 3],  # an empty slot after an item: the same row, compacted: duplicate
        [1, 2, 4],  # a training row: duplicate
        [2, 0, 4],  # kept, compacted to [0, 2, 4]
        [0, 0, 3],  # no prefix item: invalid
        [0, 2, 0],  # no target: invalid
        [0, 2, 1],  # head target: off-group
        [2, 2, 4],  # kept
    ])
    known = {np.array([1, 2, 4]).tobytes()}
    kept, counts = stages.filter_rows(windows, groups, TAIL, known)
    assert kept.tolist() == [[0, 1, 3], [0, 2, 4], [2, 2, 4]]
    assert counts == {"invalid": 2, "off_group": 1, "duplicate": 2, "kept": 3}
    assert known >= {np.array(row).tobytes() for row in kept.tolist()}


def test_nearest_items_maps_to_the_closest_candidate_or_an_empty_slot():
    table = stages.scaled_vectors(np.eye(5, 4, k=-1, dtype=np.float32) + 0.01)
    candidates = torch.tensor([1, 2, 3])  # item 4 is not a candidate
    x = torch.stack([table[2] * 0.9, table[4], torch.zeros(4), table[3] * 0.1])
    ids = stages.nearest_items(x, table, candidates)
    assert ids[0] == 2 and ids[2] == 0 and ids[3] == 0  # short vectors are empty slots
    assert ids[1] in (1, 2, 3)  # never a non-candidate


def test_generated_rows_map_to_valid_item_ids():
    torch.manual_seed(0)
    n_items, d = 30, 8
    vectors = np.random.default_rng(0).normal(size=(n_items, d)).astype(np.float32)
    table = stages.scaled_vectors(vectors)
    settings = DenoiserSettings(steps=5, window=3, hidden=16)
    model = Denoiser(d, settings.window, 3, settings.hidden).eval()  # untrained: noisy rows
    candidates = np.arange(1, 25)  # ids 25..29 are not training items
    groups = np.where(np.arange(n_items) >= 10, TAIL, MID)
    groups[0] = -1
    rows, counts = stages.sample_rows(model, settings, table, candidates=candidates,
                                      groups=groups, real_windows=np.zeros((0, 4), np.int64),
                                      n_wanted=50, guidance_scale=2.0, seed=0,
                                      device=torch.device("cpu"))
    assert counts["generated"] >= 50 and len(rows) == min(counts["kept"], 50) > 0
    assert counts["generated"] == sum(counts[k] for k in ("invalid", "off_group", "duplicate",
                                                          "kept"))
    assert stages.valid_rows(rows).all()
    real = rows[rows != 0]
    assert real.min() >= 1 and real.max() <= n_items - 1 and np.isin(real, candidates).all()
    assert (rows[:, -1] >= 10).all()  # targets in the conditioned (tail) group, never padding
    split = stages.windows_to_split(rows, 50)
    assert (split.lengths >= 1).all() and (split.targets >= 1).all()


def test_an_anchored_counterfactual_keeps_its_prefix_closer_to_the_observed_row():
    dataset = tiny_dataset()
    train = dataset.train
    vectors = np.random.default_rng(0).normal(size=(dataset.n_items, 8)).astype(np.float32)
    table = stages.scaled_vectors(vectors)
    settings = DenoiserSettings(steps=50, window=3, epochs=3, hidden=32)  # the default chain
    windows = stages.row_windows(train, settings.window)
    groups = stages.popularity_groups(train.targets, dataset.n_items, settings.tail_quantile)
    model, _ = stages.train_denoiser(windows, groups[train.targets], table, settings, seed=0,
                                     device=torch.device("cpu"), log=lambda _: None)
    anchors = stages.anchor_rows(windows, groups, train.targets)
    assert len(anchors) and (groups[anchors[:, -1]] != TAIL).all()  # real rows, non-tail ends
    observed = table[torch.from_numpy(anchors[:200])]
    schedule = Schedule.respaced(settings.schedule, settings.steps, 10)
    cpu = torch.device("cpu")

    def prefix_similarity(x: torch.Tensor) -> float:
        """Mean cosine, in item-vector space, between generated and observed prefix slots that
        hold an item."""
        filled = observed[:, :-1].norm(dim=-1) > 0
        cosine = F.cosine_similarity(x[:, :-1], observed[:, :-1], dim=-1)
        return cosine[filled].mean().item()

    def anchored(t0: float) -> float:
        torch.manual_seed(0)
        return prefix_similarity(stages.counterfactual(
            model, schedule, observed, t0=t0, group=TAIL, guidance_scale=3.0, device=cpu))

    torch.manual_seed(0)
    from_noise = prefix_similarity(stages.generate(model, schedule, len(observed), group=TAIL,
                                                   guidance_scale=3.0, device=cpu))
    # The less noise, the more of the observed prefix the counterfactual keeps; a sample from
    # noise keeps nothing of it (about 0 here), and neither does t0 = 1 (pure noise, nearly).
    assert anchored(0.2) > anchored(0.3) > from_noise + 0.25
    assert abs(anchored(1.0) - from_noise) < 0.15
    with pytest.raises(ValueError, match="t0"):
        stages.counterfactual(model, schedule, observed, t0=0.0, group=TAIL,
                              guidance_scale=3.0, device=cpu)


# ------------------------------------------------------------------ pipeline

TINY = {
    "model": "diffaug", "embedding_size": 8, "inner_size": 16, "n_heads": 2,
    "diff_base_epochs": 1, "diffusion_steps": 4, "diff_window": 3, "diff_epochs": 1,
    "diff_hidden": 16, "aug_ratio": 0.5, "guidance_scale": 1.5, "batch_size": 64,
}


def tiny_dataset(n_train_items: int = 30, poison: bool = False) -> SessionDataset:
    """Sessions over items 1..n_train_items; with ``poison`` the valid and test rows use items
    n_train_items + 1.. that no training row contains."""
    rng = np.random.default_rng(0)
    popular = rng.zipf(1.5, size=2000) % n_train_items + 1
    prefixes = [list(popular[i : i + 1 + i % 4]) for i in range(300)]
    targets = list(popular[1000:1300])
    train = Split.from_rows(prefixes, targets)
    n_items = n_train_items + 1 + (10 if poison else 0)
    if poison:
        foreign = np.arange(n_train_items + 1, n_items)
        other = Split.from_rows([[int(foreign[i % 10]), int(foreign[(i + 3) % 10])]
                                 for i in range(20)], [int(foreign[i % 10]) for i in range(20)])
    else:
        other = train.subset(slice(0, 20))
    return SessionDataset("tiny", n_items, train, other, other)


def config_of(**overrides):
    return resolve_config({**TINY, **overrides})


def test_the_stages_see_the_training_split_only(monkeypatch, tmp_path):
    from models.trainer import Trainer

    monkeypatch.setenv("CORE_CACHE_DIR", str(tmp_path))
    dataset = tiny_dataset(poison=True)
    foreign = set(range(31, dataset.n_items))
    seen = {}

    def spy(name, function):
        def wrapper(*args, **kwargs):
            seen[name] = (args, kwargs)
            return function(*args, **kwargs)
        monkeypatch.setattr(stages, name, wrapper)

    for name in ("train_base_vectors", "train_denoiser", "sample_rows"):
        spy(name, getattr(stages, name))
    trainer = Trainer(TINY, dataset, device="cpu", num_threads=1)
    rows = trainer._split_rows("train")
    assert set(seen) == {"train_base_vectors", "train_denoiser", "sample_rows"}
    assert seen["train_base_vectors"][0][0] is dataset.train  # the split itself, nothing else
    windows, classes = seen["train_denoiser"][0][:2]
    assert not foreign & set(windows.ravel().tolist())
    candidates, real_windows = (seen["sample_rows"][1][k] for k in ("candidates",
                                                                    "real_windows"))
    assert not foreign & set(candidates.tolist())
    assert not foreign & set(real_windows.ravel().tolist())
    every_argument = [a for args, kwargs in seen.values() for a in (*args, *kwargs.values())]
    assert not any(a is dataset.valid or a is dataset.test for a in every_argument)
    generated = rows.prefixes[len(dataset.train):].cpu().numpy()
    assert len(rows) > len(dataset.train) and not foreign & set(generated.ravel().tolist())


def test_anchored_sampling_starts_from_training_rows_only(monkeypatch, tmp_path):
    from models.trainer import Trainer

    monkeypatch.setenv("CORE_CACHE_DIR", str(tmp_path))
    dataset = tiny_dataset(poison=True)
    foreign = set(range(31, dataset.n_items))
    seen = {}
    sample_rows = stages.sample_rows

    def spy(*args, **kwargs):
        seen["args"], seen["kwargs"] = args, kwargs
        return sample_rows(*args, **kwargs)

    monkeypatch.setattr(stages, "sample_rows", spy)
    config = {**TINY, "diff_anchor": "observed", "diff_anchor_t0": 0.8}  # 4 steps: noise 3
    rows = Trainer(config, dataset, device="cpu", num_threads=1)._split_rows("train")
    anchors, t0 = seen["kwargs"]["anchors"], seen["kwargs"]["anchor_t0"]
    training = {row.tobytes() for row in stages.row_windows(dataset.train, TINY["diff_window"])}
    assert t0 == 0.8 and len(anchors) and all(row.tobytes() in training for row in anchors)
    assert not foreign & set(anchors.ravel().tolist())
    assert not any(a is dataset.valid or a is dataset.test
                   for a in (*seen["args"], *seen["kwargs"].values()))
    generated = rows.prefixes[len(dataset.train):].cpu().numpy()
    assert len(rows) > len(dataset.train) and not foreign & set(generated.ravel().tolist())


def test_the_base_stage_trains_on_read_only_arrays_without_copying_or_warning():
    # Ray hands a trial its dataset as read-only views of the object store: the base stage
    # batches them as the trainer does (models.batches.Rows), with no copy and no warning.
    train = tiny_dataset().train
    for array in (train.prefixes, train.lengths, train.targets):
        array.setflags(write=False)
    config = resolve_config({"model": "trm", "embedding_size": 8, "inner_size": 16, "n_heads": 2,
                             "batch_size": 64, "epochs": 1, "max_seq_length": train.max_len})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        vectors = stages.train_base_vectors(train, 31, config, build_model,
                                            device=torch.device("cpu"), log=lambda line: None)
    assert vectors.shape == (31, 8) and np.isfinite(vectors).all()


def test_training_rows_append_generated_rows_with_aug_weight(tmp_path, monkeypatch):
    monkeypatch.setenv("CORE_CACHE_DIR", str(tmp_path))
    dataset = tiny_dataset()
    config = config_of(aug_weight=0.25)
    rows = training_rows(config, dataset.train, dataset.n_items, name="tiny")
    n = len(dataset.train)
    assert rows.n_real == n and len(rows.split) == n + rows.augmentation.counts["added"]
    assert np.array_equal(rows.split.targets[:n], dataset.train.targets)
    assert (rows.weights[:n] == 1).all() and (rows.weights[n:] == 0.25).all()
    assert 0 < rows.augmentation.counts["added"] <= round(0.5 * n)
    with_ips = training_rows(config_of(pop_weighting="ips", ips_power=1.0), dataset.train,
                             dataset.n_items, name="tiny")
    assert with_ips.weights[:n].mean() == pytest.approx(1.0) and with_ips.weights[:n].std() > 0


def test_every_epoch_records_the_rows_the_augmentation_added_and_mlflow_logs_them(
    tmp_path, monkeypatch
):
    from hpo.tracking import LOGGED_PREFIXES, metric_batch
    from models.trainer import Trainer

    monkeypatch.setenv("CORE_CACHE_DIR", str(tmp_path))
    dataset = tiny_dataset()
    trainer = Trainer({**TINY, "epochs": 1}, dataset, device="cpu", num_threads=1)
    metrics = trainer.run_epoch()
    counts = trainer.augmentation.counts
    assert metrics["aug_added"] == len(trainer._split_rows("train")) - len(dataset.train) > 0
    assert {f"aug_{name}": value for name, value in counts.items()}.items() <= metrics.items()
    logged = {m.key: m.value for m in metric_batch(metrics, 1, 0, LOGGED_PREFIXES)}
    assert logged["aug_kept"] == counts["kept"] and logged["aug_generated"] == counts["generated"]
    plain = Trainer({"model": "trm", "embedding_size": 8, "inner_size": 16, "n_heads": 2,
                     "epochs": 1}, dataset, device="cpu", num_threads=1)
    assert not [key for key in plain.run_epoch() if key.startswith("aug_")]


def test_the_cache_is_reused_on_the_second_call(tmp_path, monkeypatch):
    calls = {"train_base_vectors": 0, "train_denoiser": 0, "sample_rows": 0}
    for name in calls:
        function = getattr(stages, name)

        def counted(*args, _name=name, _function=function, **kwargs):
            calls[_name] += 1
            return _function(*args, **kwargs)
        monkeypatch.setattr(stages, name, counted)
    dataset = tiny_dataset()
    config = config_of()
    settings = augment_settings_of(config)

    def run(settings, **kwargs):
        return augment_training(dataset.train, dataset.n_items, base_config(config), settings,
                                build_model, name="tiny", cache_dir=tmp_path, log=lambda _: None,
                                **kwargs)

    first = run(settings)
    assert first.status == dict.fromkeys(("base", "diffusion", "sampling"), "computed")
    second = run(settings)
    assert calls == {"train_base_vectors": 1, "train_denoiser": 1, "sample_rows": 1}
    assert second.status == {"base": "skipped", "diffusion": "skipped", "sampling": "reused"}
    assert np.array_equal(first.rows.prefixes, second.rows.prefixes)
    assert first.counts == second.counts
    # A downstream change (the guidance scale) reuses the upstream stages.
    third = run(replace(settings, guidance_scale=0.5))
    assert third.status == {"base": "reused", "diffusion": "reused", "sampling": "computed"}
    assert calls == {"train_base_vectors": 1, "train_denoiser": 1, "sample_rows": 2}
    # A change of the diffusion settings retrains the diffusion model only.
    fourth = run(replace(settings, denoiser=replace(settings.denoiser, epochs=2)))
    assert fourth.status == {"base": "reused", "diffusion": "computed", "sampling": "computed"}
    # Without the cache everything is computed again.
    run(settings, use_cache=False)
    assert calls["train_base_vectors"] == 2
    written = sorted(p.name.split(".")[1] for p in tmp_path.iterdir())
    assert written == ["base", "diffusion", "diffusion", "sampling", "sampling", "sampling"]


def augment_settings_of(config):
    from models.diffusion.spec import augment_settings

    return augment_settings(config)


def test_stage_keys_follow_content_and_upstream_settings():
    dataset = tiny_dataset()
    config = config_of()
    settings = augment_settings_of(config)
    base = base_config(config)
    keys = stage_keys(dataset.train, dataset.n_items, base, settings)
    guided = stage_keys(dataset.train, dataset.n_items, base, replace(settings, guidance_scale=5))
    assert guided["base"] == keys["base"] and guided["diffusion"] == keys["diffusion"]
    assert guided["sampling"] != keys["sampling"]
    steps = settings.denoiser.steps
    fewer = stage_keys(dataset.train, dataset.n_items, base, replace(settings, sample_steps=2))
    assert fewer["diffusion"] == keys["diffusion"] and fewer["sampling"] != keys["sampling"]
    whole = [stage_keys(dataset.train, dataset.n_items, base, replace(settings, sample_steps=k))
             for k in (steps, steps + 7)]  # both sample the whole chain: one result
    assert whole[0] == whole[1]
    targets = dataset.train.targets.copy()
    targets[0] = targets[0] % 30 + 1
    changed = stage_keys(replace(dataset.train, targets=targets), dataset.n_items, base, settings)
    assert all(changed[stage] != keys[stage] for stage in keys)
    reseeded = stage_keys(dataset.train, dataset.n_items, {**base, "seed": 1}, settings)
    assert reseeded["base"] != keys["base"]
    # The start of the chain is a sampling setting; t0 only matters for anchored sampling, and
    # noise sampling keeps the key it had before anchors existed.
    def keys_of(**changes):
        return stage_keys(dataset.train, dataset.n_items, base, replace(settings, **changes))

    assert keys_of(anchor_t0=0.9) == keys
    anchored = keys_of(anchor="observed")
    assert anchored["diffusion"] == keys["diffusion"] and anchored["sampling"] != keys["sampling"]
    deeper = keys_of(anchor="observed", anchor_t0=0.9)
    assert deeper["sampling"] != anchored["sampling"]
    # Keys added to the configs later are left out of the base key at their default value.
    later = {**base, **augment_module.LATER_KEYS}
    assert stage_keys(dataset.train, dataset.n_items, later, settings) == keys
    assert stage_keys(dataset.train, dataset.n_items, {**base, "grad_accum": 2},
                      settings)["base"] != keys["base"]
    assert augment_module.data_digest(dataset.train, 31) != augment_module.data_digest(
        dataset.train, 32)


def test_registry_validates_diffaug_keys_and_builds_the_base_backbone():
    config = resolve_config({"model": "diffaug"})
    assert (config["base"], config["beta_schedule"], config["pop_weighting"]) == (
        "trm", "linear", "none")
    assert type(build_model(config, 30).encoder).__name__ == "TrmEncoder"
    ave = resolve_config({"model": "diffaug", "base": "ave"})
    assert type(build_model(ave, 30).encoder).__name__ == "AveEncoder"
    for bad in ({"base": "hn"}, {"tail_quantile": 0.8}, {"cond_dropout": 0.0},
                {"beta_schedule": "quadratic"}, {"aug_ratio": 0.0}, {"diff_hidden": 30},
                {"guidance_scale": -1.0}, {"diff_anchor": "prior"}, {"diff_anchor_t0": 0.0},
                {"diff_anchor_t0": 1.5}):
        with pytest.raises(ValueError):
            resolve_config({"model": "diffaug", **bad})
