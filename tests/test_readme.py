"""README's and docs/'s examples stay true: their search-space YAML validates, their paths and
links stay in the repo, README stays short, and launch.py's --help lists what it says it lists."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hpo.space import SpaceError, parse_space

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
         *sorted((ROOT / "studies").glob("*/README.md"))]
README = "\n".join(page.read_text() for page in PAGES)
README_MAX_LINES = 200


def yaml_blocks() -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", README, flags=re.S)


def test_readme_is_short_and_starts_with_the_two_commands():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= README_MAX_LINES
    first = re.search(r"```bash\n(.*?)```", text, flags=re.S).group(1).splitlines()
    assert first == ['pip install -e ".[dev]" && python launch.py --space dahn.yaml '
                     "--dataset synthetic", "python -m pytest -q"]


def test_relative_links_of_readme_and_docs_lead_to_files():
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken


def test_readme_has_a_search_space_example():
    assert any("parameters:" in block for block in yaml_blocks())


@pytest.mark.parametrize("index", range(len(yaml_blocks())))
def test_readme_yaml_blocks_validate(index, tmp_path):
    raw = yaml.safe_load(yaml_blocks()[index])
    if isinstance(raw, dict) and "model" in raw:  # a search-space file
        parse_space(raw, tmp_path / "readme_example.yaml")


def test_the_validator_would_catch_a_broken_example(tmp_path):
    """Guard that the test above can fail: the same block with a wrong key is refused."""
    block = next(b for b in yaml_blocks() if "parameters:" in b)
    raw = yaml.safe_load(block)
    raw["parameters"]["hn_k"] = {"type": "int", "low": 8, "high": 256}  # not an enhanced key
    with pytest.raises(SpaceError):
        parse_space(raw, tmp_path / "broken.yaml")


def test_no_paths_outside_the_repository():
    """README, code and benchmark defaults never point outside the repository."""
    outside = re.compile(r"\.\./shared|/work/|\.\./datasets")
    files = [*PAGES, *ROOT.glob("*.py"), *ROOT.glob("hpo/**/*.py"), *ROOT.glob("verdict/**/*.py"),
             *ROOT.glob("models/**/*.py"), *ROOT.glob("data/**/*.py"),
             *ROOT.glob("benchmarks/*"), *ROOT.glob("deploy/*"), *ROOT.glob("studies/*.yaml")]
    offenders = [f"{path.relative_to(ROOT)}:{n}" for path in files if path.is_file()
                 for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
                 if outside.search(line)]
    assert not offenders


def test_help_lists_spaces_and_datasets(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "mine.train.inter").write_text("session_id:token\n")
    result = subprocess.run([sys.executable, str(ROOT / "launch.py"), "--help"], cwd=tmp_path,
                            env={"CORE_DATA_DIR": str(tmp_path), "PATH": ""},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    for space in ROOT.glob("search_spaces/*.yaml"):
        assert space.name in result.stdout
    assert "synthetic, mine" in result.stdout
    # --help imports no heavy library (what keeps it fast).
    probe = subprocess.run(
        [sys.executable, "-c", "import sys, launch; launch.build_parser();"
         "print(sorted(m for m in ('torch', 'ray', 'mlflow', 'optuna', 'pandas') "
         "if m in sys.modules))"],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert probe.stdout.strip() == "[]", probe.stderr
