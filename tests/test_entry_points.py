"""Every command answers bad input with one line on stderr and exit code 2, before it does any
expensive work: no traceback, no usage block."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def bad_inter(folder: Path) -> Path:
    """A dataset whose training file has a non-numeric item id on line 3."""
    data = folder / "broken"
    data.mkdir(parents=True, exist_ok=True)
    header = "session_id:token\titem_id_list:token_seq\titem_id:token\n"
    (data / "broken.train.inter").write_text(header + "1\t1\t2\n2\t3 x\t4\n")
    for split in ("valid", "test"):
        (data / f"broken.{split}.inter").write_text(header + "1\t1\t2\n")
    return folder


CASES = [
    # (command, arguments, what the line must say)
    (["launch.py"], ["--space", "trm.yaml", "--num-samples", "-3", "--dry-run"], "--num-samples"),
    (["launch.py"], ["--space", "trm.yaml", "--max-epochs", "0", "--dry-run"], "--max-epochs"),
    (["launch.py"], ["--space", "nope.yaml", "--dry-run"], "nope.yaml"),
    (["launch.py"], ["--space", "trm.yaml", "--dataset", "broken", "--data-dir", "{data}",
                     "--dry-run"], "broken.train.inter"),
    (["launch.py"], ["--study", "missing.yaml", "--dry-run"], "missing.yaml"),
    (["launch.py"], ["--space", "trm.yaml", "--only", "x"], "--only"),
    (["-m", "models.train"], ["--model", "trm", "--dataset", "synthetic", "--epochs", "0"],
     "--epochs"),
    (["-m", "models.train"], ["--model", "gru", "--dataset", "synthetic"], "--model"),
    (["-m", "models.train"], ["--model", "trm", "--dataset", "synthetic", "--set", "hn_k=3"],
     "hn_k"),
    (["-m", "models.train"], ["--model", "trm", "--dataset", "broken", "--data-dir", "{data}"],
     "broken.train.inter"),
    (["-m", "models.train"], ["--model", "semsr_f", "--dataset", "broken", "--data-dir",
                              "{data}"], "broken"),
    (["-m", "data.prepare"], ["--dataset", "retailrocket", "--out", "{data}/out"], "--raw"),
    (["-m", "data.prepare"], ["--dataset", "tmall", "--raw", "{data}/none.csv", "--out",
                              "{data}/out"], "none.csv"),
    (["-m", "data.prepare"], ["--dataset", "nope", "--out", "{data}/out"], "--dataset"),
    (["-m", "models.recommend"], ["--run-id", "abc", "--session", "1,x"], "--session"),
    (["-m", "models.recommend"], ["--run-id", "abc", "--session", "1,2", "-k", "0"], "-k"),
    (["-m", "models.recommend"], ["--run-id", "abc", "--session", "1,2", "--mlflow-uri",
                                  "sqlite:///{data}/empty.db"], "empty.db"),
]


@pytest.mark.parametrize(("command", "arguments", "names"), CASES,
                         ids=[f"{c[-1]} {' '.join(a)}"[:60] for c, a, _ in CASES])
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, command, arguments, names):
    data = bad_inter(tmp_path / "datasets")
    arguments = [a.replace("{data}", str(data)) for a in arguments]
    result = subprocess.run([sys.executable, *command, *arguments], cwd=ROOT,
                            capture_output=True, text=True, timeout=180,
                            env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
                                 "PYTHONPATH": str(ROOT), "MLFLOW_DISABLE_TELEMETRY": "true"})
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert len(lines) == 1, result.stderr
    assert names in lines[0]
    assert "error" in lines[0]
    assert not (ROOT / "outputs" / "broken").exists()
