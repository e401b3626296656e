"""The static site (``make site``): an HTML book of the README and every committed notebook with its outputs, built
by Sphinx + myst-nb with execution off (``docs/conf.py``) into ``outputs/site/``.

Staging (``outputs/site-src/``): the README becomes the index page with a table of contents of the notebooks; each
notebook is copied with nbformat, dropping only live-widget outputs (an ipywidgets view cannot run in a static
page, and without a kernel it renders as its ``VBox(...)`` repr; every widget cell shows a static rendering beside
it) and frozen progress bars.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from .notebook import NOTEBOOKS_DIR, OUTPUTS_DIR, PROJECT_ROOT, is_progress_bar, notebook_names

__all__ = ["build_site", "stage_site", "static_outputs"]

WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


def static_outputs(nb):
    """Drop live-widget views and progress bars from a notebook's outputs (in place); returns how many went."""
    dropped = 0
    for c in nb.cells:
        if c.cell_type != "code":
            continue
        keep = []
        for o in c.outputs:
            if WIDGET_MIME in o.get("data", {}) or is_progress_bar(o):
                dropped += 1
            else:
                keep.append(o)
        c.outputs = keep
    return dropped


def stage_site(stage: Path | None = None) -> Path:
    """Write the site's sources (conf.py, index.md, notebooks) to ``stage`` (default ``outputs/site-src``)."""
    import nbformat

    stage = Path(stage) if stage else OUTPUTS_DIR / "site-src"
    if stage.exists():
        shutil.rmtree(stage)
    (stage / "notebooks").mkdir(parents=True)
    shutil.copyfile(PROJECT_ROOT / "docs" / "conf.py", stage / "conf.py")
    names = notebook_names()
    readme = (PROJECT_ROOT / "README.md").read_text()
    toc = "\n".join(["", "```{toctree}", ":maxdepth: 1", ":caption: Notebooks", "", *[f"notebooks/{n}" for n in names], "```", ""])
    (stage / "index.md").write_text(readme + "\n" + toc)
    for n in names:
        nb = nbformat.read(NOTEBOOKS_DIR / f"{n}.ipynb", as_version=4)
        static_outputs(nb)
        nbformat.write(nb, stage / "notebooks" / f"{n}.ipynb")
    for extra in ("LICENSE", "CITATION.cff"):
        if (PROJECT_ROOT / extra).exists():
            shutil.copyfile(PROJECT_ROOT / extra, stage / extra)
    return stage


def build_site(out_dir: Path | None = None, *, stage: Path | None = None) -> Path:
    """Stage and build the site with ``sphinx-build -b html``; returns the folder holding ``index.html``."""
    out_dir = Path(out_dir) if out_dir else OUTPUTS_DIR / "site"
    src = stage_site(stage)
    cmd = [sys.executable, "-m", "sphinx", "-b", "html", "-q", "-j", "1", str(src), str(out_dir)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0 or not (out_dir / "index.html").exists():
        raise RuntimeError(f"sphinx-build failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return out_dir


def main(argv: list[str] | None = None) -> int:
    """``python -m helpers site [--out DIR]``."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m helpers site", description="static HTML book of README + notebooks")
    ap.add_argument("--out", default=None, help="output folder (default outputs/site)")
    a = ap.parse_args(argv)
    out = build_site(Path(a.out) if a.out else None)
    print(f"[site] {out / 'index.html'}")
    return 0
