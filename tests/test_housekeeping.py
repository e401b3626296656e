"""What users expect beside the code: a licence, a citation file naming each notebook's paper, and a models table in
the README that matches the registry (package, file, sha256, upstream licence)."""
from __future__ import annotations

import re

import yaml

from helpers import registry
from helpers.harness.notebook import NOTEBOOKS_DIR, PROJECT_ROOT


def test_licence_file_matches_pyproject():
    text = (PROJECT_ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and 'license = { text = "MIT" }' in (PROJECT_ROOT / "pyproject.toml").read_text()


def test_citation_cff_cites_every_notebooks_paper():
    cff = yaml.safe_load((PROJECT_ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["license"] == "MIT" and cff["title"]
    cited = {ref["identifiers"][0]["value"].removeprefix("arXiv:") for ref in cff["references"]}
    for nb in NOTEBOOKS_DIR.glob("0[0-4]_*.ipynb"):
        first = nb.read_text()[:6000]
        for arxiv in re.findall(r"arXiv[ :]?(\d{4}\.\d{5})", first):
            assert arxiv in cited, f"{nb.name} reproduces arXiv {arxiv}, which CITATION.cff does not cite"


def test_readme_models_table_is_the_registry():
    readme = (PROJECT_ROOT / "README.md").read_text()
    block = readme.split("<!-- models:start -->")[1].split("<!-- models:end -->")[0]
    rows = [ln for ln in block.strip().splitlines()[2:]]
    names = registry.entries("models")
    assert len(rows) == len(names)
    for name, row in zip(names, rows):
        m = registry.model(name)
        for field in (name, m.pip, m.gguf, m.sha256, m.license):
            assert field in row, f"README models table row for {name} lacks {field!r}: regenerate it from models.yaml"


def test_every_install_path_uses_the_constraints_the_notebooks_were_published_with():
    """constraints.txt pins the published stack (transformers, peft, sae-lens, ... : their kernels and defaults move
    the committed numbers); make, conda and Binder install through it, and the suite runs on what it pins."""
    from importlib.metadata import version

    pins = dict(ln.split("==", 1) for ln in (PROJECT_ROOT / "constraints.txt").read_text().splitlines()
                if ln and not ln.startswith("#"))
    assert "torch" not in pins, "torch is installed first as torch==2.13.0 (a CPU build); do not pin it here"
    for pkg in ("transformers", "peft", "sae-lens", "sentence-transformers", "numpy", "scikit-learn", "xllamacpp"):
        assert pkg in pins, f"constraints.txt lacks {pkg}"
        assert version(pkg) == pins[pkg], (f"{pkg} {version(pkg)} is installed but constraints.txt pins {pins[pkg]}: "
                                           f"run `make setup` (it installs with -c constraints.txt)")
    for f in ("Makefile", "environment.yml", "binder/postBuild"):
        assert "-c constraints.txt" in (PROJECT_ROOT / f).read_text(), f"{f} installs without constraints.txt"
