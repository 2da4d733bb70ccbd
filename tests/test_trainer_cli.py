"""The `python -m models.train` command trains, prints per-epoch lines and scores test on demand."""

import pytest

from models.train import main

ARGS = ["--epochs", "2", "--threads", "1", "--set", "embedding_size=16", "--set", "batch_size=256"]


def test_cli_trains_and_reports(tiny_data_dir, capsys, tmp_path):
    result = main(
        [
            "--model",
            "trm",
            "--dataset",
            "tiny",
            "--data-dir",
            str(tiny_data_dir),
            *ARGS,
            "--set",
            "inner_size=32",
            "--test",
            "--save",
            str(tmp_path / "final.pt"),
        ]
    )
    out = capsys.readouterr().out
    assert out.count("rows/s") == 2 and "valid" in out and "test (best checkpoint)" in out
    assert 0 <= result["test_recall_20"] <= 1 and result["epoch"] in (1, 2)
    assert (tmp_path / "final.pt").exists()


def test_cli_withholds_test_unless_asked_and_rejects_bad_keys(tiny_data_dir):
    result = main(["--model", "ave", "--dataset", "tiny", "--data-dir", str(tiny_data_dir), *ARGS])
    assert not any(key.startswith("test_") for key in result)
    with pytest.raises(ValueError, match="n_layers"):
        main(
            [
                "--model",
                "ave",
                "--dataset",
                "tiny",
                "--data-dir",
                str(tiny_data_dir),
                "--set",
                "n_layers=3",
            ]
        )
