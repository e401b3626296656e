"""Course mode: student and solution copies of every notebook from one source (``make course``).

Convention (nbgrader's markers, ARENA / scikit-learn MOOC style tags), all in the committed notebooks:

* a markdown cell tagged ``exercise`` states the task;
* the code cell that solves it is tagged ``solution``; the solution lines sit between ``# BEGIN SOLUTION`` and
  ``# END SOLUTION`` comment lines (several blocks per cell allowed, indentation kept);
* the next code cell, tagged ``check``, calls a checker from :mod:`helpers.harness.exercises` that fails on a wrong
  answer and prints a line on a right one.

The **student copy** replaces every solution block by the stub ``raise NotImplementedError("Exercise: ...")`` at the
block's indentation, removes the outputs of solution and check cells (nbstripout does the stripping; cells that keep
their outputs are marked ``keep_output`` for it), and tags check cells ``raises-exception`` so the copy runs from
top to bottom and each check stops cleanly on its stub. The **solution copy** is the notebook as committed. Both
are written with nbformat.
"""
from __future__ import annotations

import re
from pathlib import Path

from .notebook import NOTEBOOKS_DIR, OUTPUTS_DIR, notebook_names

__all__ = ["BEGIN", "END", "STUB", "build_course", "exercise_cells", "student_notebook", "student_source"]

BEGIN, END = "# BEGIN SOLUTION", "# END SOLUTION"
STUB = 'raise NotImplementedError("Exercise: replace this line with your solution")'
_BLOCK = re.compile(rf"^(?P<indent>[ \t]*){re.escape(BEGIN)}[^\n]*\n.*?^[ \t]*{re.escape(END)}[^\n]*(\n|$)", re.S | re.M)


class CourseError(ValueError):
    pass


def student_source(source: str, *, where: str = "") -> str:
    """A solution cell's source with each ``BEGIN/END SOLUTION`` block replaced by the stub (same indentation)."""
    if source.count(BEGIN) != source.count(END) or BEGIN not in source:
        raise CourseError(f"{where}: a solution cell needs matching '{BEGIN}' / '{END}' lines "
                          f"(found {source.count(BEGIN)} / {source.count(END)})")
    out = _BLOCK.sub(lambda m: f"{m.group('indent')}{STUB}\n", source)
    if BEGIN in out or END in out:
        raise CourseError(f"{where}: nested or unclosed solution block")
    return out.rstrip("\n")


def exercise_cells(nb) -> list[tuple[int, int]]:
    """(solution cell index, check cell index) pairs; raises when a solution cell has no check cell after it."""
    pairs = []
    for i, c in enumerate(nb.cells):
        if "solution" in c.metadata.get("tags", []):
            j = next((k for k in range(i + 1, len(nb.cells)) if nb.cells[k].cell_type == "code"), None)
            if j is None or "check" not in nb.cells[j].metadata.get("tags", []):
                raise CourseError(f"cell {i} is tagged 'solution' but the next code cell is not tagged 'check'")
            pairs.append((i, j))
    return pairs


def student_notebook(nb, *, name: str = "notebook"):
    """The student copy of a notebook (a new object; ``nb`` is left untouched)."""
    import copy

    from nbstripout import strip_output

    out = copy.deepcopy(nb)
    pairs = exercise_cells(out)
    solution = {i for i, _ in pairs}
    check = {j for _, j in pairs}
    for i, c in enumerate(out.cells):
        if c.cell_type != "code":
            continue
        if i in solution:
            c.source = student_source(c.source, where=f"{name} cell {i}")
        elif i in check:
            c.metadata["tags"] = [*c.metadata.get("tags", []), "raises-exception"]
        else:
            c.metadata["keep_output"] = True
    strip_output(out, keep_output=False, keep_count=False, keep_id=True)
    for c in out.cells:
        c.metadata.pop("keep_output", None)
    out.metadata["course"] = {"copy": "student", "exercises": len(pairs)}
    return out


def build_course(out_dir: str | Path | None = None, notebooks: list[str] | None = None) -> dict[str, int]:
    """Write ``<out_dir>/student/<nb>.ipynb`` and ``<out_dir>/solutions/<nb>.ipynb`` for every notebook (default
    ``outputs/course``); returns the number of exercises per notebook."""
    import nbformat

    out_dir = Path(out_dir) if out_dir else OUTPUTS_DIR / "course"
    (out_dir / "student").mkdir(parents=True, exist_ok=True)
    (out_dir / "solutions").mkdir(parents=True, exist_ok=True)
    counts = {}
    for name in notebooks or notebook_names():
        nb = nbformat.read(NOTEBOOKS_DIR / f"{name}.ipynb", as_version=4)
        student = student_notebook(nb, name=name)
        nbformat.validate(student)
        nbformat.write(nb, out_dir / "solutions" / f"{name}.ipynb")
        nbformat.write(student, out_dir / "student" / f"{name}.ipynb")
        counts[name] = student.metadata["course"]["exercises"]
    return counts


def main(argv: list[str] | None = None) -> int:
    """``python -m helpers course [--out DIR]``."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m helpers course", description="student + solution copies of the notebooks")
    ap.add_argument("--out", default=None, help="output folder (default outputs/course)")
    a = ap.parse_args(argv)
    out = Path(a.out) if a.out else OUTPUTS_DIR / "course"
    for name, n in build_course(out).items():
        print(f"[course] {name}: {n} exercises -> {out}/student/{name}.ipynb, {out}/solutions/{name}.ipynb")
    return 0
