"""Trainer: protocol (best checkpoint, early stopping, test only on request), determinism,
exact resume, divergence detection, and that training actually learns."""

import warnings

import numpy as np
import pytest
import torch

import models.trainer as trainer_module
from data.arrays import keep_last
from data.synthetic import make_dataset
from models.metrics import metrics_from_ranks, rank_and_top_
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


def test_bf16_training_runs_and_stays_close_to_fp32(dataset):
    results = {}
    for precision in ("fp32", "bf16"):
        with warnings.catch_warnings():  # the slow-bf16 warning, on CPUs without native bf16
            warnings.simplefilter("ignore", RuntimeWarning)
            trainer = Trainer({**TRM, "epochs": 2, "precision": precision}, dataset, **CPU)
        results[precision] = trainer.fit()
    assert np.isfinite(results["bf16"]["train_loss"])
    assert abs(results["bf16"]["train_loss"] - results["fp32"]["train_loss"]) < 0.05
    assert abs(results["bf16"]["valid_recall_20"] - results["fp32"]["valid_recall_20"]) < 0.05


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
    monkeypatch.setattr(trainer_module, "CPUINFO", cpuinfo)
    assert native_bf16(torch.device("cpu")) is native
    monkeypatch.setattr(trainer_module, "CPUINFO", tmp_path / "missing")
    assert native_bf16(torch.device("cpu")) is False


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
