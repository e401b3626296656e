"""The committed notebooks follow the collection's rules (read from the files, nothing executed): nbval markers
that nbval actually reads, short code cells, a sentence after every figure, imports by full module name."""
from __future__ import annotations

import json
import re

import nbformat
import pytest

from helpers.harness import notebook as nb
from helpers.harness.notebook import NOTEBOOKS_DIR, is_progress_bar

NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))


def _cells(path):
    return nbformat.read(path, as_version=4).cells


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_nbval_markers_are_read_by_nbval(path):
    """nbval only honours a comment line that is exactly ``# NBVAL_CHECK_OUTPUT`` (a trailing or annotated marker
    is silently ignored), and every notebook checks at least one cell."""
    checked = 0
    for i, c in enumerate(_cells(path)):
        if c.cell_type != "code":
            continue
        lines = [ln.strip() for ln in c.source.splitlines()]
        exact = [ln for ln in lines if ln.startswith("#") and ln.lstrip("#").strip() == "NBVAL_CHECK_OUTPUT"]
        loose = [ln for ln in lines if "NBVAL_CHECK_OUTPUT" in ln and ln not in exact]
        assert not loose, f"cell {i}: marker nbval would ignore: {loose[0]!r}"
        checked += bool(exact)
    assert checked >= 1


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_code_cells_are_short(path):
    """Every code cell, the parameters cell included, stays within 30 lines."""
    long = [(i, len(c.source.splitlines())) for i, c in enumerate(_cells(path)) if c.cell_type == "code"
            and len(c.source.splitlines()) > 30]
    assert long == [], f"code cells over 30 lines (cell, lines): {long}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_figure_is_followed_by_a_sentence(path):
    cells = _cells(path)
    missing = []
    for i, c in enumerate(cells):
        has_fig = c.cell_type == "code" and any("image/png" in o.get("data", {}) for o in c.get("outputs", []))
        if has_fig:
            nxt = cells[i + 1] if i + 1 < len(cells) else None
            if nxt is None or nxt.cell_type != "markdown" or len(nxt.source.split()) < 8:
                missing.append(i)
    assert missing == [], f"figures without a sentence after them in cells {missing}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_imports_use_full_module_names(path):
    src = "\n".join(c.source for c in _cells(path) if c.cell_type == "code")
    one_letter = re.findall(r"^\s*(?:from\s+\S+\s+)?import\s+.*\bas\s+([A-Za-z])\b", src, re.M)
    assert one_letter == [], f"one-letter import aliases: {one_letter}"
    for m in re.finditer(r"from helpers\.studies import (\w+)(?: as (\w+))?", src):
        assert m.group(2) == "study", f"import the study as `study`: {m.group(0)}"
    assert not re.search(r"from helpers import (?!registry\b)", src), "import toolkit modules from helpers.core / .harness"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_frozen_progress_bars(path):
    frozen = [i for i, c in enumerate(_cells(path)) if c.cell_type == "code"
              and any(is_progress_bar(o) for o in c.get("outputs", []))]
    assert frozen == [], f"progress bars frozen in committed outputs of cells {frozen}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_cells_with_outputs_have_an_execution_count(path):
    """nbval fails any reference cell that has outputs but no execution count ("Unrun reference cell has
    outputs"), even under --nbval-lax; outputs pasted in by hand must carry a count (this failed CI once)."""
    unrun = [i for i, c in enumerate(_cells(path)) if c.cell_type == "code"
             and c.get("outputs") and c.get("execution_count") is None]
    assert unrun == [], f"cells with outputs but no execution_count: {unrun}"


def test_notebook_04_evidence_results_are_complete():
    """The committed evidence run (notebook 04 section 7 reads it): all ten items held out once, six conditions,
    four decision rules, >= 30 held-out responses per item, the paired contrasts, all three proposers in both folds
    (GEPA within the diagnosed loop's budget)."""
    res = json.loads((nb.RESULTS_DIR / "04_scoring_skills.evidence.json").read_text())
    assert res["profile"] == "evidence" and res["parameters"]["items"] == list(range(1, 11))
    t = res["tables"]
    conds = {"no rubric", "expert rubric", "initial skill", "optimized skill", "random-edit skill", "GEPA skill"}
    assert {(r["item"], r["condition"], r["decision"]) for r in t["per_item"]} == {
        (i, c, d) for i in range(1, 11) for c in conds for d in ("cutpoints", "calibrated", "argmax", "expected")}
    assert all(r["n"] >= 30 for r in t["per_item"])
    assert {r["contrast"] for r in t["contrasts"]} >= {"optimized skill − initial skill", "optimized skill − expert rubric",
                                                      "optimized skill − random-edit skill",
                                                      "optimized skill − GEPA skill"}
    assert all(r["n"] == 300 and r["n_items"] == 10 for r in t["contrasts"])
    assert set(res["optimisation"]) == {f"fold{f}/{p}" for f in (0, 1) for p in ("llm", "random", "gepa")}
    assert sorted(i for k in ("fold0/llm", "fold1/llm") for i in res["optimisation"][k]["train_items"]) == list(range(1, 11))
    for f in (0, 1):  # GEPA's budget: at most the diagnosed loop's candidates and the responses it scored (+ 1 minibatch)
        g, d = (res["optimisation"][f"fold{f}/{p}"]["history"][-1]["budget"] for p in ("gepa", "llm"))
        assert g["proposals"] <= 6 and g["metric_calls"] <= d["metric_calls"] + 2 * 3
    assert [r["item"] for r in t["ceiling"]] == list(range(1, 11))


def test_committed_outputs_show_no_local_paths():
    """No committed output shows a machine-specific path (e.g. the PosixPath a cell ending in a call that returns
    the saved figure's path would display)."""
    bad = []
    for name in nb.notebook_names():
        cells = json.loads((nb.NOTEBOOKS_DIR / f"{name}.ipynb").read_text())["cells"]
        for i, c in enumerate(cells):
            for o in c.get("outputs", []):
                text = "".join(o.get("text", "")) + "".join(o.get("data", {}).get("text/plain", ""))
                if "PosixPath(" in text or str(nb.PROJECT_ROOT) in text:
                    bad.append((name, i))
    assert bad == [], f"outputs showing local paths: {bad}"
