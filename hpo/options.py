"""What the command line offers for the search and the seed runs, import-light so
``launch.py --help`` needs no heavy library: the protocol's choices (one source, imported by the
modules that implement them) and the search-space files there are. The verdict's own choices
(corrections, significance level) are in ``verdict.options``."""

from __future__ import annotations

from pathlib import Path

from models.metrics import METRIC_NAMES

SPACES_DIR = Path(__file__).resolve().parent.parent / "search_spaces"
METRICS = tuple(f"valid_{name}" for name in METRIC_NAMES)  # what a search may optimise
# What --baseline strongest chooses between: CORE's own two and the tuned kNN baselines.
BASELINE_VARIANTS = ("ave", "trm", "sknn", "vsknn", "stan", "vstan")
STRONGEST = "strongest"
DEFAULT_RETRAIN_MAX_EPOCHS = 300  # the CORE protocol's training budget (patience stops it)


def list_spaces(spaces_dir: Path = SPACES_DIR) -> list[tuple[str, str, str]]:
    """The bundled search-space files: (file name, variant, first line of its description).

    Read as plain YAML (not validated: ``hpo.space.load_space`` does that when one is used); a
    file that does not parse is listed with the problem as its description.

    Args:
        spaces_dir: the folder of space files.
    """
    import yaml

    rows = []
    for path in sorted(spaces_dir.glob("*.yaml")):
        try:
            raw = yaml.safe_load(path.read_text()) or {}
            model = str(raw.get("model", "?"))
            text = str(raw.get("description", "")).strip().splitlines()
            rows.append((path.name, model, text[0] if text else ""))
        except (OSError, yaml.YAMLError, AttributeError) as exc:
            rows.append((path.name, "?", f"unreadable: {exc.__class__.__name__}"))
    return rows
