"""The static site (``make site``) rendered in headless Chromium (Debian's package, ``make browser``): every notebook
page shows its figures and tables, no page shows a raw widget repr or a frozen progress bar; one screenshot per
notebook is kept in ``outputs/site-screenshots/`` as the test's artifact."""
from __future__ import annotations

import re
import shutil
import subprocess

import nbformat
import pytest

from helpers.harness import site
from helpers.harness.notebook import NOTEBOOKS_DIR, OUTPUTS_DIR, notebook_names

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--virtual-time-budget=4000"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    if CHROMIUM is None:
        pytest.fail("Debian's chromium is needed for the site test: `make browser` (or apt-get install chromium)")
    return site.build_site(tmp_path_factory.mktemp("site"), stage=tmp_path_factory.mktemp("stage"))


def _dom(url: str) -> str:
    res = subprocess.run([CHROMIUM, *FLAGS, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "<html" in res.stdout, f"chromium could not render {url}: {res.stderr[-500:]}"
    return res.stdout


def _text(dom: str) -> str:
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S)
    return re.sub(r"<[^>]+>", " ", dom)


def test_index_lists_every_notebook(built):
    dom = _dom((built / "index.html").as_uri())
    for name in notebook_names():
        assert f"notebooks/{name}.html" in dom, f"the index does not link {name}"


@pytest.mark.parametrize("name", notebook_names())
def test_notebook_page_renders_figures_and_tables(built, name):
    nb = nbformat.read(NOTEBOOKS_DIR / f"{name}.ipynb", as_version=4)
    n_figures = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    n_tables = sum("<table" in str(o.get("data", {}).get("text/html", "")) for c in nb.cells if c.cell_type == "code"
                   for o in c.outputs)
    url = (built / "notebooks" / f"{name}.html").as_uri()
    dom = _dom(url)
    imgs = re.findall(r"<img[^>]+src=\"([^\"]+)\"", dom)
    shown = [s for s in imgs if "_images/" in s]
    assert len(shown) >= n_figures, f"{name}: {n_figures} figures in the notebook, {len(shown)} rendered"
    for src in shown:
        assert (built / "notebooks" / src).resolve().exists(), f"{name}: broken image {src}"
    if n_tables:
        assert dom.count("<table") >= n_tables, f"{name}: {n_tables} HTML tables in the notebook, fewer rendered"
    text = _text(dom)
    assert not re.search(r"\b(VBox|HBox|Dropdown|IntSlider|FloatSlider)\(", text), f"{name}: a raw widget repr on the page"
    assert not re.search(r"\d+%\|", text), f"{name}: a frozen progress bar on the page"
    shots = OUTPUTS_DIR / "site-screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    res = subprocess.run([CHROMIUM, *FLAGS, "--window-size=1280,1800", f"--screenshot={shots / (name + '.png')}", url],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and (shots / f"{name}.png").stat().st_size > 10_000, f"{name}: no screenshot"


def test_static_outputs_drop_widgets_and_bars_only():
    nb = nbformat.v4.new_notebook()
    widget = nbformat.v4.new_output("display_data", data={"application/vnd.jupyter.widget-view+json": {"model_id": "x"},
                                                         "text/plain": "VBox(children=())"})
    bar = nbformat.v4.new_output("stream", name="stderr", text="steps:  40%|####      | 4/10")
    keep = nbformat.v4.new_output("display_data", data={"text/html": "<table></table>", "text/plain": "t"})
    nb.cells = [nbformat.v4.new_code_cell("x", outputs=[widget, bar, keep])]
    assert site.static_outputs(nb) == 2 and nb.cells[0].outputs == [keep]
