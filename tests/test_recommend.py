"""A tuned model can be used: the test stage's model bundle, logged to a real MLflow store the
way the test stage logs it, gives ``python -m models.recommend`` the model's own top-k; every
way of asking for a model that is not there is a clear error with exit code 2."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from ray import tune

import models.persona.hdgi as hdgi_module
from data.synthetic import make_dataset
from hpo.outcome import FINISHED_KEY
from hpo.tracking import TEST_PREFIXES, MLflowTrialLogger
from hpo.trainable import TEST_ROWS_FILE, _score_test
from models import recommend
from models.recommend import (
    MODEL_ARTIFACT,
    MODEL_ARTIFACT_DIR,
    MODEL_FILE,
    BundleError,
    load_bundle,
    rebuild_model,
)
from models.trainer import Trainer

SMALL = {"embedding_size": 16, "inner_size": 32, "batch_size": 256, "eval_batch_size": 64,
         "epochs": 3, "seed": 3}
CONFIGS = {
    "trm": {"model": "trm", **SMALL},
    "semsr_f": {"model": "semsr_f", **SMALL, "sem_size": 8},
    "persona": {"model": "persona", **SMALL, "hdgi_epochs": 30, "persona_size": 16,
                "n_candidates": 20},
}


class SeedTrial:
    """What the MLflow logger reads of a finished Ray Tune trial."""

    def __init__(self, trial_id: str, config: dict, checkpoint_dir=None):
        self.trial_id = trial_id
        self.config = config
        self.checkpoint = (tune.Checkpoint.from_directory(str(checkpoint_dir))
                           if checkpoint_dir is not None else None)
        self.last_result = {"epoch": config.get("epochs", 1), FINISHED_KEY: 1}

    def __str__(self) -> str:
        return f"retrain_trial_{self.trial_id}"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A real SQLite MLflow store with a test-stage parent run, and a logger like the stage's."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("tiny/test",
                                          artifact_location=(root / "artifacts").as_uri())
    parent = client.create_run(experiment, tags={"stage": "test"}).info.run_id
    logger = MLflowTrialLogger(uri, experiment, parent, tags={"stage": "test"},
                               metric_prefixes=TEST_PREFIXES,
                               checkpoint_artifacts={MODEL_FILE: MODEL_ARTIFACT_DIR})
    return uri, client, experiment, parent, logger


@pytest.fixture(scope="module")
def dataset():
    data = make_dataset("tiny", seed=0)
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(data.n_items, 12)).astype(np.float32)
    vectors[0] = 0
    return data.with_item_vectors(vectors, "random")


@pytest.fixture(scope="module")
def seed_runs(store, dataset, tmp_path_factory, monkeypatch_module):
    """Per variant: a trainer whose best checkpoint is not its last weights, and the seed run
    the test stage logged for it (its checkpoint written by the trainable's ``_score_test``)."""
    monkeypatch_module.setenv("CORE_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    monkeypatch_module.setattr(hdgi_module, "_MEMORY", {})
    _, client, _, _, logger = store
    runs = {}
    for variant, config in CONFIGS.items():
        trainer = Trainer(config, dataset, device="cpu", num_threads=1)
        trainer.run_epoch()
        trainer._train_epoch()  # the current weights move past the best (epoch 1) checkpoint
        directory = tmp_path_factory.mktemp(f"checkpoint_{variant}")
        _score_test(trainer, directory)
        trial = SeedTrial(f"{variant}_00000", config, directory)
        logger.on_trial_complete(0, [], trial)
        runs[variant] = (trainer, logger.run_id(trial), directory)
    return runs


@pytest.fixture(scope="module")
def monkeypatch_module():
    patch = pytest.MonkeyPatch()
    yield patch
    patch.undo()


def best_model(trainer: Trainer):
    model = copy.deepcopy(trainer.model)
    model.load_state_dict(trainer.best_state)
    return model.eval()


def printed(capsys) -> tuple[list[int], list[float]]:
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("# run ") and "session items not excluded" in lines[0]
    assert lines[1] == "rank\titem_id\tscore"
    rows = [line.split("\t") for line in lines[2:]]
    assert [int(r[0]) for r in rows] == list(range(1, len(rows) + 1))
    return [int(r[1]) for r in rows], [float(r[2]) for r in rows]


@pytest.mark.parametrize("variant", list(CONFIGS))
def test_recommend_prints_the_tuned_models_own_top_k(store, seed_runs, dataset, variant, capsys):
    uri, client, *_ = store
    trainer, run_id, directory = seed_runs[variant]
    assert MODEL_ARTIFACT in {a.path for a in client.list_artifacts(run_id, MODEL_ARTIFACT_DIR)}
    test = dataset.test
    session = test.prefixes[0, : test.lengths[0]].tolist()
    user = int(test.users[0]) if variant == "persona" else None
    args = ["--run-id", run_id, "--session", ",".join(map(str, session)), "-k", "20",
            "--mlflow-uri", uri] + (["--user", str(user)] if user is not None else [])

    assert recommend.main(args) == 0
    items, scores = printed(capsys)

    model = best_model(trainer)  # the best-validation checkpoint, not the last weights
    batch = torch.tensor([session])
    with torch.no_grad():
        logits = (model.predict(batch, torch.tensor([user])) if user is not None
                  else model.predict(batch))[0]
    top = logits.topk(20)
    assert items == top.indices.tolist()
    np.testing.assert_allclose(scores, top.values.numpy(), rtol=1e-4, atol=1e-4)
    assert 0 not in items
    # The same list the test stage's evaluation ranked for this row.
    with np.load(directory / TEST_ROWS_FILE) as rows:
        assert items == rows["topk"][0].tolist()
    with torch.no_grad():  # and not what the last (not selected) weights would say
        last = trainer.model.eval()
        last_logits = (last.predict(batch, torch.tensor([user])) if user is not None
                       else last.predict(batch))[0]
    assert not torch.allclose(last_logits[1:], logits[1:])


def test_bundle_is_weights_only_and_rebuilds_without_the_dataset(seed_runs):
    trainer, _, directory = seed_runs["persona"]
    bundle = torch.load(directory / MODEL_FILE, weights_only=True)
    assert bundle["n_items"] == trainer.dataset.n_items
    assert bundle["config"] == trainer.config
    for name, value in trainer.best_state.items():
        torch.testing.assert_close(bundle["state_dict"][name], value)
    assert {"semantic", "personas", "known", "profiles", "profile_personas"} <= set(
        bundle["buffers"])
    model = rebuild_model(load_bundle(directory / MODEL_FILE))
    for name, value in best_model(trainer).named_buffers():
        torch.testing.assert_close(dict(model.named_buffers())[name], value)
    del bundle["buffers"]["profiles"]
    with pytest.raises(BundleError, match=r"lacks \['profiles'\]"):
        rebuild_model(bundle)


def run_main(args, capsys) -> tuple[int, str]:
    code = recommend.main(args)
    return code, capsys.readouterr().err


def test_unknown_run_id_is_exit_2(store, capsys):
    uri, *_ = store
    code, err = run_main(["--run-id", "0" * 32, "--session", "1,2", "--mlflow-uri", uri], capsys)
    assert code == 2
    assert f"no run '{'0' * 32}'" in err


def test_run_without_a_model_is_exit_2(store, capsys):
    uri, client, experiment, parent, _ = store
    search = MLflowTrialLogger(uri, experiment, parent, tags={"stage": "search"})  # no artifacts
    trial = SeedTrial("search_00000", {"model": "trm"})
    search.on_trial_complete(0, [], trial)
    code, err = run_main(["--run-id", search.run_id(trial), "--session", "1,2",
                          "--mlflow-uri", uri], capsys)
    assert code == 2
    assert "(stage 'search') has no model/model.pt artifact" in err


@pytest.mark.parametrize("session", ["0,3", "3,{n}", "-1"])
def test_session_outside_the_catalog_is_exit_2(store, seed_runs, session, capsys):
    uri, *_ = store
    trainer, run_id, _ = seed_runs["trm"]
    n = trainer.dataset.n_items
    code, err = run_main(["--run-id", run_id, "--session", session.format(n=n),
                          "--mlflow-uri", uri], capsys)
    assert code == 2
    assert f"outside the model's catalog (1 .. {n - 1})" in err


def test_unparsable_session_and_missing_store_are_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        recommend.main(["--run-id", "x", "--session", "12,a"])
    assert info.value.code == 2
    assert "comma-separated item ids" in capsys.readouterr().err
    code, err = run_main(["--run-id", "x", "--session", "1",
                          "--mlflow-uri", f"sqlite:///{tmp_path / 'none.db'}"], capsys)
    assert code == 2 and "no MLflow store at" in err
