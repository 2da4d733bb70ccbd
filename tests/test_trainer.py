"""Trainer: protocol (best checkpoint, early stopping, test only on request), determinism,
exact resume, divergence detection, and that training actually learns."""

import os
import warnings

import numpy as np
import pytest
import torch
from trainer_runs import straight_and_resumed

import models.core as core_module
import models.precision as precision_module
import models.trainer as trainer_module
from data.arrays import keep_last
from data.synthetic import make_dataset
from models.metrics import metrics_from_ranks, rank_and_top_
from models.precision import choose_loss_impl
from models.trainer import NonFiniteLossError, Trainer, native_bf16

SMALL = {"embedding_size": 16, "batch_size": 256, "eval_batch_size": 64, "seed": 7}
TRM = {**SMALL, "model": "trm", "inner_size": 32}
TIMES = ("epoch_time", "train_time")
CPU = {"device": "cpu", "num_threads": 1}  # tiny data: one thread is fastest, even on a busy box


@pytest.fixture(scope="module")
def dataset():
    return make_dataset("tiny", seed=0)


def without_times(history):
    return [{k: v for k, v in m.items() if k not in TIMES} for m in history]


def test_same_seed_gives_identical_metrics(dataset):
    runs = []
    for _ in range(2):
        trainer = Trainer({**TRM, "epochs": 2}, dataset, **CPU)
        trainer.fit()
        runs.append(without_times(trainer.history))
    assert runs[0] == runs[1]
    other = Trainer({**TRM, "epochs": 2, "seed": 8}, dataset, **CPU)
    other.fit()
    assert without_times(other.history) != runs[0]


@pytest.mark.parametrize("variant", ["trm", "contrastive"])
def test_resume_from_checkpoint_is_exact(dataset, tmp_path, variant):
    config = {**TRM, "model": variant, "epochs": 3}
    straight = Trainer(config, dataset, **CPU)
    straight.fit()

    first = Trainer(config, dataset, **CPU)
    first.run_epoch()
    first.run_epoch()
    first.save_checkpoint(tmp_path / "ckpt.pt")
    resumed = Trainer(config, dataset, **CPU)
    resumed.load_checkpoint(tmp_path / "ckpt.pt")
    assert resumed.epoch == 2
    resumed.run_epoch()
    assert resumed.should_stop
    assert without_times(resumed.history) == without_times(straight.history)
    for name, value in straight.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], value), name
    assert resumed.evaluate("test") == straight.evaluate("test")


def test_resume_is_exact_with_clipping_accumulation_and_the_guides_options(dataset, tmp_path):
    config = {**TRM, "model": "enhanced", "epochs": 2, "grad_clip": 1.0, "grad_accum": 2,
              "ema_target": 0.9, "aux_length_weight": 0.1, "aux_order_weight": 0.1}
    straight, resumed = straight_and_resumed(config, dataset, tmp_path, **CPU)
    assert without_times(resumed.history) == without_times(straight.history)
    for name, value in straight.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], value), name
    timing = Trainer(config, dataset, **CPU).time_epoch(batches=1)  # still times an epoch
    assert timing["epoch_s"] > 0 and timing["train_batches"] >= 1


NO_DROPOUT = {"sess_dropout": 0.0, "item_dropout": 0.0, "hidden_dropout": 0.0,
              "attn_dropout": 0.0}


def step_gradients(trainer: Trainer, index: torch.Tensor) -> tuple[float, dict, list[int]]:
    """One ``_train_step`` on the training rows ``index``: its loss, the gradients the optimiser
    steps with, and the number of rows of each forward pass."""
    seen, sizes = {}, []

    def record(optimizer, args, kwargs):
        seen.update({name: p.grad.clone() for name, p in trainer.model.named_parameters()
                     if p.grad is not None})

    trainer.optimizer.register_step_pre_hook(record)
    trainer.model.register_forward_pre_hook(lambda module, args: sizes.append(len(args[0])))
    loss = trainer._train_step(trainer._split_rows("train"), index, 0, 1)
    return loss, seen, sizes


@pytest.mark.parametrize("weighting", ["none", "ips"])
def test_gradient_accumulation_steps_with_the_whole_batchs_gradient(dataset, weighting):
    index = torch.arange(250)
    # fp32: under bf16 (auto on a CPU with AMX) each micro-batch's loss rounds differently.
    runs = [step_gradients(Trainer({**TRM, **NO_DROPOUT, "epochs": 1, "grad_accum": k,
                                    "pop_weighting": weighting, "precision": "fp32"},
                                   dataset, **CPU), index)
            for k in (1, 3)]
    (whole, reference, sizes), (accumulated, gradients, micro) = runs
    assert sizes == [250] and micro == [84, 83, 83]  # three micro-batches, one step
    assert accumulated == pytest.approx(whole, rel=1e-5)
    assert gradients.keys() == reference.keys()
    for name, value in reference.items():
        torch.testing.assert_close(gradients[name], value, rtol=1e-4, atol=1e-7)


def test_grad_clip_scales_the_gradients_to_the_global_norm(dataset):
    index = torch.arange(256)
    _, raw, _ = step_gradients(Trainer({**TRM, "epochs": 1}, dataset, **CPU), index)
    norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in raw.values()])).item()
    clip = norm / 4
    _, clipped, _ = step_gradients(
        Trainer({**TRM, "epochs": 1, "grad_clip": clip}, dataset, **CPU), index)
    for name, value in raw.items():  # the same draws: the same gradients, scaled c / ||g||
        torch.testing.assert_close(clipped[name], value * (clip / norm), rtol=1e-4, atol=1e-8)
    _, loose, _ = step_gradients(
        Trainer({**TRM, "epochs": 1, "grad_clip": 4 * norm}, dataset, **CPU), index)
    assert all(torch.equal(loose[name], value) for name, value in raw.items())


def test_checkpoint_of_another_config_is_refused(dataset):
    state = Trainer({**TRM, "epochs": 1}, dataset, **CPU).state_dict()
    with pytest.raises(ValueError, match="lr"):
        Trainer({**TRM, "lr": 0.01}, dataset, **CPU).load_state_dict(state)
    Trainer({**TRM, "epochs": 9}, dataset, **CPU).load_state_dict(state)  # run length ok


def test_non_finite_loss_stops_with_epoch_batch_and_config(dataset):
    trainer = Trainer({**SMALL, "model": "ave", "epochs": 2}, dataset, **CPU)
    with torch.no_grad():
        trainer.model.item_embedding[5] = float("nan")
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, batch 1/\d+.*'model': 'ave'"):
        trainer.run_epoch()


def test_best_checkpoint_early_stopping_and_callback(dataset):
    seen = []
    trainer = Trainer(
        {**SMALL, "model": "ave", "epochs": 50, "patience": 2},
        dataset,
        **CPU,
        callback=lambda metrics: seen.append(
            (metrics, trainer.model.state_dict()["item_embedding"].clone())
        ),
    )
    # Compared at 4 decimal places, ties to the later epoch: 0.30004 and 0.29996 tie 0.3 and
    # become the best; 0.29994 is below it; patience 2 then stops after epoch 7.
    scores = iter([0.1, 0.3, 0.2, 0.30004, 0.29996, 0.2, 0.29994, 0.5])
    real_evaluate = trainer.evaluate
    trainer.evaluate = lambda split, use_best: {"mrr_20": next(scores)}  # scripted validation
    best = trainer.fit()
    assert trainer.epoch == 7 and trainer.best_epoch == 5
    assert best["epoch"] == 5 and best["valid_mrr_20"] == 0.29996
    assert [m["best_epoch"] for m, _ in seen] == [1, 2, 2, 4, 5, 5, 5]
    assert [m["best_valid_mrr_20"] for m, _ in seen] == [0.1, 0.3, 0.3, 0.30004] + [0.29996] * 3
    assert {"epoch", "train_loss", "epoch_time", "valid_mrr_20"} <= set(seen[0][0])
    assert torch.equal(trainer.best_state["item_embedding"], seen[4][1])
    assert not torch.equal(seen[4][1], seen[3][1])
    # Evaluation with the best checkpoint leaves the current weights in place.
    trainer.evaluate = real_evaluate
    current = trainer.model.state_dict()["item_embedding"].clone()
    trainer.evaluate("valid")
    assert torch.equal(trainer.model.state_dict()["item_embedding"], current)


def test_evaluate_detailed_is_consistent_and_uses_the_best_checkpoint(dataset):
    trainer = Trainer({**TRM, "epochs": 3}, dataset, **CPU)
    trainer.fit()
    metrics, ranks, top = trainer.evaluate_detailed("valid")
    n = len(dataset.valid)
    assert ranks.dtype == np.int64 and ranks.shape == (n,) and ranks.min() >= 1
    assert top.dtype == np.int32 and top.shape == (n, 20) and not (top == 0).any()
    assert metrics == metrics_from_ranks(ranks) == trainer.evaluate("valid")
    in_top = (top == dataset.valid.targets[:, None]).any(axis=1)
    assert np.array_equal(in_top, ranks <= 20)
    best = trainer.best_metrics
    assert metrics == {k[len("valid_") :]: v for k, v in best.items() if k.startswith("valid_")}


def test_test_split_is_scored_only_when_present(dataset):
    trainer = Trainer({**SMALL, "model": "ave", "epochs": 1}, dataset.without_test(), **CPU)
    trainer.fit()
    with pytest.raises(PermissionError):
        trainer.evaluate("test")


def test_training_beats_popularity_on_validation(dataset):
    counts = np.bincount(dataset.train.targets, minlength=dataset.n_items).astype(np.float32)
    scores = torch.from_numpy(np.tile(counts, (len(dataset.valid), 1)))
    scores[:, 0] = float("-inf")
    ranks, _ = rank_and_top_(scores, torch.from_numpy(dataset.valid.targets))
    popularity = metrics_from_ranks(ranks.numpy())
    trainer = Trainer(
        {**SMALL, "model": "ave", "batch_size": 128, "epochs": 6, "embedding_size": 32},
        dataset,
        **CPU,
    )
    best = trainer.fit()
    assert best["valid_recall_20"] > popularity["recall_20"] + 0.03
    assert best["valid_mrr_20"] > popularity["mrr_20"] + 0.02


@pytest.mark.parametrize("scope", ["all", "loss"])
def test_bf16_training_runs_and_stays_close_to_fp32(dataset, scope):
    """bf16 changes the numbers by its rounding only. The dropouts are off: with them the whole
    step (scope all) draws other masks than fp32 (its padded token blocks and bf16 residual
    stream), which moves a tiny run as far as another seed would (train loss ~0.08 here);
    docs/performance.md checks that over seeds on real data."""
    no_dropout = dict.fromkeys(("sess_dropout", "item_dropout", "hidden_dropout",
                                "attn_dropout"), 0.0)
    results = {}
    for precision in ("fp32", "bf16"):
        with warnings.catch_warnings():  # the slow-bf16 warning, on CPUs without native bf16
            warnings.simplefilter("ignore", RuntimeWarning)
            trainer = Trainer({**TRM, **no_dropout, "epochs": 2, "precision": precision,
                               "bf16_scope": scope}, dataset, **CPU)
        results[precision] = trainer.fit()
    assert trainer.precision == "bf16"
    assert np.isfinite(results["bf16"]["train_loss"])
    assert abs(results["bf16"]["train_loss"] - results["fp32"]["train_loss"]) < 0.01
    assert abs(results["bf16"]["valid_recall_20"] - results["fp32"]["valid_recall_20"]) < 0.02


def test_prefixes_longer_than_max_seq_length_keep_their_last_items():
    prefixes = np.array([[1, 2, 3, 4, 5], [6, 7, 0, 0, 0], [8, 9, 10, 11, 0]], dtype=np.int32)
    lengths = np.array([5, 2, 4], dtype=np.int32)
    cut, kept = keep_last(prefixes, lengths, 3)
    assert cut.tolist() == [[3, 4, 5], [6, 7, 0], [9, 10, 11]]
    assert kept.tolist() == [3, 2, 3]
    same, _ = keep_last(prefixes, lengths, 5)
    assert same is prefixes


def test_best_valid_metrics_are_all_taken_at_the_mrr_selected_checkpoint(dataset):
    trainer = Trainer({**SMALL, "model": "ave", "epochs": 3, "patience": 5}, dataset, **CPU)
    # Epoch 2 has the best MRR@20 but the worst recall: best_valid_recall_20 must follow MRR.
    scripted = iter([
        {"mrr_20": 0.1, "recall_20": 0.5},
        {"mrr_20": 0.2, "recall_20": 0.1},
        {"mrr_20": 0.15, "recall_20": 0.9},
    ])
    trainer.evaluate = lambda split, use_best: next(scripted)
    history = [trainer.run_epoch() for _ in range(3)]
    assert [m["best_valid_recall_20"] for m in history] == [0.5, 0.1, 0.1]
    assert [m["best_valid_mrr_20"] for m in history] == [0.1, 0.2, 0.2]


def test_read_only_arrays_from_the_object_store_are_used_without_copy_or_warning():
    dataset = make_dataset("tiny", seed=0)
    for split in (dataset.train, dataset.valid):
        for array in (split.prefixes, split.lengths, split.targets):
            array.setflags(write=False)  # what Ray's object store hands to a worker
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        trainer = Trainer({**SMALL, "model": "ave", "epochs": 1}, dataset, **CPU)
        trainer.run_epoch()
    targets = trainer._split_rows("train").targets
    assert targets.data_ptr() == dataset.train.targets.ctypes.data  # shared, not copied


@pytest.mark.parametrize(("flags", "native"), [
    ("fpu sse avx2 fma", False),
    ("fpu avx2 avx512f avx512_bf16", True),
    ("fpu avx2 amx_bf16 amx_tile", True),
])
def test_native_bf16_reads_the_cpu_flags(tmp_path, monkeypatch, flags, native):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {flags}\n")
    monkeypatch.setattr(precision_module, "CPUINFO", cpuinfo)
    assert native_bf16(torch.device("cpu")) is native
    monkeypatch.setattr(precision_module, "CPUINFO", tmp_path / "missing")
    assert native_bf16(torch.device("cpu")) is False


@pytest.mark.parametrize(("flags", "label"), [
    ("fpu sse avx2 fma", "AMD EPYC (AVX2; family 23, model 1)"),
    ("fpu avx2 avx512f", "AMD EPYC (AVX-512; family 23, model 1)"),
    ("fpu avx2 avx512f avx512_bf16", "AMD EPYC (AVX-512 BF16; family 23, model 1)"),
    ("fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile", "AMD EPYC (AMX; family 23, model 1)"),
    ("fpu sse", "AMD EPYC (no AVX2; family 23, model 1)"),
])
def test_the_cpu_label_names_its_vector_tier_and_generation(tmp_path, monkeypatch, flags, label):
    """A virtual machine's model name ("AMD EPYC") hides its generation: the label every study
    piece and timing records adds the widest vector unit and the family and model numbers."""
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\ncpu family\t: 23\nmodel\t\t: 1\n"
                       f"model name\t: AMD EPYC\nflags\t\t: {flags}\n")
    monkeypatch.setattr(precision_module, "CPUINFO", cpuinfo)
    assert precision_module.device_label(torch.device("cpu")) == label
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Some CPU\n")  # no flags, no family
    assert precision_module.device_label(torch.device("cpu")) == "Some CPU (unknown)"
    monkeypatch.setattr(precision_module, "CPUINFO", tmp_path / "missing")
    assert precision_module.device_label(torch.device("cpu")) == "unknown CPU"


@pytest.mark.parametrize("native", [False, True])
def test_precision_auto_is_bf16_only_where_native_and_is_recorded(dataset, monkeypatch, native):
    monkeypatch.setattr(trainer_module, "native_bf16", lambda device: native)
    trainer = Trainer({**TRM, "loss_impl": "chunked"}, dataset, **CPU)
    assert trainer.config["precision"] == "auto"  # as given, the run's param
    assert trainer.precision == ("bf16" if native else "fp32")  # as used
    assert Trainer({**TRM, "precision": "fp32"}, dataset, **CPU).precision == "fp32"


def test_bf16_scope_loss_keeps_the_encoder_in_fp32(dataset, monkeypatch):
    """With bf16_scope loss only the full-catalog loss runs under bf16 autocast: the encoder's
    products and its residual stream (every layer norm's output) stay fp32, while scope all
    computes both in bf16; the session vectors are fp32 either way."""
    monkeypatch.setattr(trainer_module, "native_bf16", lambda device: True)
    seen = {}

    def hook(module, inputs, output):
        if module.training:  # validation runs without autocast
            seen.setdefault(type(module).__name__, set()).add(output.dtype)

    for scope, expected in (("all", torch.bfloat16), ("loss", torch.float32)):
        seen.clear()
        trainer = Trainer({**TRM, "precision": "bf16", "bf16_scope": scope,
                           "loss_impl": "chunked"}, dataset, **CPU)
        assert trainer.model.objective.loss_autocast is (scope == "loss")
        watched = [m for m in trainer.model.encoder.modules()
                   if isinstance(m, torch.nn.Linear | torch.nn.LayerNorm)]
        handles = [m.register_forward_hook(hook) for m in watched]
        sessions = trainer.model.register_forward_hook(
            lambda model, inputs, output: seen.setdefault("loss", set()).add(output.dtype))
        trainer.time_epoch(batches=1)
        for handle in (*handles, sessions):
            handle.remove()
        # the first layer norm (of the item embeddings) is fp32 in both scopes, the rest not
        assert seen["Linear"] == {expected}
        assert expected in seen["LayerNorm"] and len(seen["LayerNorm"]) == 1 + (scope == "all")
        assert seen["loss"] == {torch.float32}


@pytest.mark.parametrize(("precision", "scope", "bf16_loss"), [
    ("bf16", "all", True), ("bf16", "loss", True), ("fp32", "all", False),
])
def test_the_full_catalog_loss_runs_under_bf16_in_both_scopes(dataset, monkeypatch, precision,
                                                              scope, bf16_loss):
    """The loss is where bf16 pays most: with scope all it must stay under the step's autocast
    (an ``autocast(enabled=False)`` around it once switched it off), with scope loss it gets
    its own; in fp32 it never runs under autocast."""
    monkeypatch.setattr(trainer_module, "native_bf16", lambda device: True)
    seen = []

    def spy(*args, **kwargs):
        seen.append(torch.is_autocast_enabled("cpu"))
        return catalog_loss(*args, **kwargs)

    catalog_loss = core_module.catalog_loss
    monkeypatch.setattr(core_module, "catalog_loss", spy)
    trainer = Trainer({**TRM, "precision": precision, "bf16_scope": scope,
                       "loss_impl": "chunked"}, dataset, **CPU)
    trainer.time_epoch(batches=1)
    assert seen and all(enabled is bf16_loss for enabled in seen)


def test_loss_impl_auto_takes_the_faster_and_keeps_the_choice(tmp_path):
    calls = []

    def timer(impl):
        calls.append(impl)
        return {"dense": 1.0, "chunked": 2.0}[impl]

    options = {"n_items": 500, "batch_size": 64, "dim": 8, "precision": "fp32",
               "hard_negatives": False, "device": torch.device("cpu"), "cache_dir": tmp_path}
    assert choose_loss_impl(**options, timer=timer) == "dense"
    assert sorted(calls) == ["chunked", "dense"]
    assert choose_loss_impl(**options, timer=lambda impl: 1 / 0) == "dense"  # from the cache
    assert choose_loss_impl(**{**options, "dim": 16},
                            timer=lambda impl: {"dense": 3.0, "chunked": 2.0}[impl]) == "chunked"
    # timed for real on tiny shapes, the choice is one of the two
    assert choose_loss_impl(**{**options, "cache_dir": None}) in ("dense", "chunked")


def test_trainer_resolves_loss_impl_auto_through_the_cache(dataset, monkeypatch, tmp_path):
    monkeypatch.setenv("CORE_CACHE_DIR", str(tmp_path))
    trainer = Trainer({**TRM}, dataset, **CPU)
    assert trainer.config["loss_impl"] == "auto"
    assert trainer.loss_impl in ("dense", "chunked")
    assert trainer.model.objective.loss_impl == trainer.loss_impl
    assert (tmp_path / "loss_impl.json").is_file()


@pytest.mark.parametrize("native", [False, True])
def test_bf16_without_native_matrix_products_warns(dataset, monkeypatch, native):
    monkeypatch.setattr(trainer_module, "native_bf16", lambda device: native)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Trainer({**TRM, "precision": "bf16"}, dataset, **CPU)
        Trainer({**TRM, "precision": "fp32"}, dataset, **CPU)
    slow = [w for w in caught if "without native bf16" in str(w.message)]
    assert len(slow) == (0 if native else 1)
    assert all(w.category is RuntimeWarning for w in slow)


def test_trainer_caps_onednn_primitive_cache_unless_the_user_chose(dataset, monkeypatch):
    """Every batch's products have new shapes; oneDNN's default cache of 1,024 primitives kept
    their buffers resident (bf16 peaked above dense fp32), so a Trainer sets a small cap before
    its first product, and a user's own setting stands."""
    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    Trainer(TRM, dataset, **CPU)
    capacity = os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"]
    assert capacity == str(trainer_module.ONEDNN_CACHE_CAPACITY)
    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "7")
    Trainer(TRM, dataset, **CPU)
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "7"
