"""Time one search end to end and account for where the time went.

    python benchmarks/bench_search.py -- --space dahn.yaml --dataset synthetic
    python benchmarks/bench_search.py -- --space ave.yaml --dataset tmall \
        --data-dir path/to/datasets --num-samples 6 --max-epochs 3 --train-rows 50000

Everything after `--` goes to launch.py unchanged. Printed: the wall time of the command, the
trial-epochs ASHA saved against running every trial to the full budget, and the overhead per
trial (a trial's wall time, from the driver's start to end of its MLflow run, minus the time its
epochs took to train and validate: Ray actor start-up, fetching the dataset from the object
store, model construction, checkpointing, reporting and MLflow logging).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hpo.tracking import PARENT_TAG  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("launch_args", nargs=argparse.REMAINDER,
                        help="arguments for launch.py, after --")
    args = parser.parse_args()
    launch_args = [a for a in args.launch_args if a != "--"]
    with tempfile.TemporaryDirectory() as tmp:
        if "--output-dir" not in launch_args:
            launch_args += ["--output-dir", tmp]
        output_dir = Path(launch_args[launch_args.index("--output-dir") + 1]).resolve()
        start = time.perf_counter()
        subprocess.run([sys.executable, str(ROOT / "launch.py"), *launch_args], check=True,
                       stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - start
        report(MlflowClient(f"sqlite:///{output_dir / 'mlflow.db'}"), wall)


def report(client: MlflowClient, wall: float) -> None:
    print(f"command wall time: {wall:.1f} s")
    for experiment in client.search_experiments():
        runs = client.search_runs([experiment.experiment_id], "tags.stage = 'search'")
        parents = [r for r in runs if PARENT_TAG not in r.data.tags]
        for parent in parents:
            children = [r for r in runs if r.data.tags.get(PARENT_TAG) == parent.info.run_id]
            budget = int(parent.data.params["budget.max_epochs"]) * len(children)
            run_epochs, overheads = 0, []
            for child in children:
                epochs = int(child.data.tags.get("epochs_trained", 0))
                run_epochs += epochs
                history = client.get_metric_history(child.info.run_id, "epoch_time")
                trial_wall = (child.info.end_time - child.info.start_time) / 1000
                overheads.append(trial_wall - sum(m.value for m in history))
            outcomes = [c.data.tags.get("outcome") for c in children]
            print(f"search {experiment.name}: {len(children)} trials "
                  f"({outcomes.count('completed')} completed, {outcomes.count('stopped')} "
                  f"stopped by ASHA, {outcomes.count('failed')} failed)")
            print(f"  trial-epochs run {run_epochs} of {budget} at full budget: ASHA saved "
                  f"{budget - run_epochs} ({(budget - run_epochs) / budget:.0%})")
            print(f"  overhead per trial (trial wall - epoch time): median "
                  f"{np.median(overheads):.1f} s, max {np.max(overheads):.1f} s")


if __name__ == "__main__":
    main()
