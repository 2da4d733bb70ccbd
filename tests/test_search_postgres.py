"""End to end on PostgreSQL: `python launch.py --mlflow-uri` logs a small search (tiny data, local
Ray) to a tracking server started with `python -m hpo.tracking_server` on a fresh PostgreSQL
database with several workers; the parent and every trial's run land there, finished, with their
per-epoch metrics, and the rows are in that database."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import sqlalchemy
import yaml
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_tracking  # noqa: E402

from hpo.optuna_study import RAY_TRIAL_ATTR  # noqa: E402
from hpo.tracking import PARENT_TAG, TRIAL_TAG  # noqa: E402

pytestmark = pytest.mark.slow

TINY = "tiny"  # written by the tiny_data_dir fixture
NUM_SAMPLES, MAX_EPOCHS = 2, 2
SERVER_WORKERS = 2


def space_file(tmp_path: Path) -> Path:
    raw = yaml.safe_load((ROOT / "search_spaces" / "trm.yaml").read_text())
    raw["fixed"] = {**raw.get("fixed", {}), "embedding_size": 16, "inner_size": 32,
                    "batch_size": 256}
    path = tmp_path / "trm_pg.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_search_logs_to_a_postgresql_backed_tracking_server(postgres_admin_url, tiny_data_dir,
                                                            tmp_path):
    out = tmp_path / "outputs"
    # The Optuna study in its own database on the same server (MLflow and Optuna would both
    # keep an `alembic_version` table in a shared one).
    with bench_tracking.temporary_database(postgres_admin_url) as database, \
            bench_tracking.temporary_database(postgres_admin_url) as study_database, \
            bench_tracking.tracking_server(database, tmp_path / "server",
                                           SERVER_WORKERS) as uri:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        env.update(RAY_ADDRESS="", PYTHONPATH=str(ROOT))
        search = subprocess.run(
            [sys.executable, str(ROOT / "launch.py"), "--space", str(space_file(tmp_path)),
             "--dataset", TINY, "--data-dir", str(tiny_data_dir),
             "--num-samples", str(NUM_SAMPLES), "--max-epochs", str(MAX_EPOCHS),
             "--grace-period", str(MAX_EPOCHS), "--seed", "3", "--output-dir", str(out),
             "--mlflow-uri", uri, "--optuna-storage", study_database],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
        )
        assert search.returncode == 0, (search.stdout + search.stderr)[-4000:]

        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name(f"{TINY}/trm_pg")
        assert experiment is not None
        runs = client.search_runs([experiment.experiment_id])
        [parent] = [r for r in runs if PARENT_TAG not in r.data.tags]
        children = [r for r in runs if r.data.tags.get(PARENT_TAG) == parent.info.run_id]
        assert parent.info.status == "FINISHED"
        assert len(children) == NUM_SAMPLES
        assert len({r.data.tags[TRIAL_TAG] for r in children}) == NUM_SAMPLES
        for child in children:
            assert child.info.status == "FINISHED"
            for key in ("train_loss", "valid_recall_20", "valid_mrr_20"):
                steps = [m.step for m in client.get_metric_history(child.info.run_id, key)]
                assert sorted(steps) == list(range(1, MAX_EPOCHS + 1)), (key, steps)

        # What the server returned is what PostgreSQL holds.
        engine = sqlalchemy.create_engine(database, poolclass=sqlalchemy.pool.NullPool)
        try:
            with engine.connect() as connection:
                [[stored_runs]] = connection.execute(sqlalchemy.text(
                    "SELECT count(*) FROM runs WHERE experiment_id = :e"),
                    {"e": int(experiment.experiment_id)})
                [[stored_points]] = connection.execute(sqlalchemy.text(
                    "SELECT count(*) FROM metrics m JOIN runs r ON m.run_uuid = r.run_uuid "
                    "WHERE r.experiment_id = :e AND m.key = 'train_loss'"),
                    {"e": int(experiment.experiment_id)})
        finally:
            engine.dispose()
        assert stored_runs == 1 + NUM_SAMPLES
        assert stored_points == NUM_SAMPLES * MAX_EPOCHS

        # The study is in PostgreSQL too, with every trial told.
        study = optuna.load_study(study_name=parent.data.params["optuna.study_name"],
                                  storage=study_database)
        trials = study.get_trials()
        assert sorted(t.user_attrs[RAY_TRIAL_ATTR] for t in trials) == sorted(
            r.data.tags[TRIAL_TAG] for r in children)
        assert all(t.state.is_finished() for t in trials)
