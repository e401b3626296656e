"""Course mode: student copies from the committed notebooks (stubs in, solutions and their outputs out), and every
exercise's checker passes the solution, fails a wrong answer and lets the stub's NotImplementedError through."""
from __future__ import annotations

import nbformat
import numpy as np
import pytest
import torch

from helpers.harness import course, exercises
from helpers.harness.notebook import NOTEBOOKS_DIR

COURSE_NOTEBOOKS = ["00_inside_a_language_model", "01_sparse_autoencoders", "02_reasoning_features", "03_steering_refinement"]


def _nb(name):
    return nbformat.read(NOTEBOOKS_DIR / f"{name}.ipynb", as_version=4)


def test_student_source_replaces_each_block_at_its_indentation():
    src = ("def f(x):\n    '''doc'''\n    # BEGIN SOLUTION\n    y = x + 1\n    return y\n    # END SOLUTION\n\n"
           "z = 1\n# BEGIN SOLUTION\nz = 2\n# END SOLUTION")
    out = course.student_source(src)
    assert out == f"def f(x):\n    '''doc'''\n    {course.STUB}\n\nz = 1\n{course.STUB}"
    with pytest.raises(course.CourseError, match="matching"):
        course.student_source("x = 1\n# BEGIN SOLUTION\nx = 2\n")
    with pytest.raises(course.CourseError, match="matching"):
        course.student_source("x = 1")


def test_a_solution_without_a_check_cell_is_refused():
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("# BEGIN SOLUTION\nx = 1\n# END SOLUTION", metadata={"tags": ["solution"]}),
                nbformat.v4.new_code_cell("print(x)")]
    with pytest.raises(course.CourseError, match="check"):
        course.exercise_cells(nb)


@pytest.mark.parametrize("name", COURSE_NOTEBOOKS)
def test_student_copy_of_each_notebook(name):
    nb = _nb(name)
    pairs = course.exercise_cells(nb)
    assert len(pairs) >= 3, f"{name} has {len(pairs)} exercises; the course needs at least 3"
    student = course.student_notebook(nb, name=name)
    nbformat.validate(student)
    sol, chk = {i for i, _ in pairs}, {j for _, j in pairs}
    for i, (c, s) in enumerate(zip(nb.cells, student.cells)):
        if c.cell_type != "code":
            assert s.source == c.source
            continue
        if i in sol:
            assert course.BEGIN not in s.source and course.STUB in s.source and s.outputs == []
        elif i in chk:
            assert s.source == c.source and s.outputs == [] and "raises-exception" in s.metadata["tags"]
        else:  # everything else is kept, outputs included
            assert s.source == c.source and len(s.outputs) == len(c.outputs) and "keep_output" not in s.metadata
    assert nb.cells[pairs[0][0]].source != student.cells[pairs[0][0]].source  # the original is untouched


def test_build_course_writes_both_copies(tmp_path):
    counts = course.build_course(tmp_path, notebooks=COURSE_NOTEBOOKS[:1])
    assert counts == {COURSE_NOTEBOOKS[0]: 3}
    solution = nbformat.read(tmp_path / "solutions" / f"{COURSE_NOTEBOOKS[0]}.ipynb", as_version=4)
    assert solution == _nb(COURSE_NOTEBOOKS[0])  # the solution copy is the committed notebook
    student = nbformat.read(tmp_path / "student" / f"{COURSE_NOTEBOOKS[0]}.ipynb", as_version=4)
    assert student.metadata["course"] == {"copy": "student", "exercises": 3}


def _exercise_pairs():
    for name in COURSE_NOTEBOOKS:
        nb = _nb(name)
        for i, j in course.exercise_cells(nb):
            yield pytest.param(name, nb.cells[i].source, nb.cells[j].source, id=f"{name}-cell{i}")


@pytest.fixture(scope="module")
def namespace(smol):
    return {"np": np, "torch": torch, "model": smol[0], "exercises": exercises}


@pytest.mark.parametrize("name,solution,check", list(_exercise_pairs()))
def test_each_check_passes_the_solution_and_stops_cleanly_on_the_stub(name, solution, check, namespace, capsys):
    ns = dict(namespace)
    exec(solution, ns)
    exec(check, ns)
    assert "✓" in capsys.readouterr().out
    stub_ns = dict(namespace)
    exec(course.student_source(solution), stub_ns)
    with pytest.raises(NotImplementedError, match="Exercise"):
        exec(check, stub_ns)


WRONG = [
    (exercises.check_sink_ratio, lambda h: float(h.norm(dim=-1)[0] / h.norm(dim=-1)[1:].mean())),
    (exercises.check_mean_difference_probe, lambda xt, yt, xe: (xe @ (xt[yt == 1].mean(0) - xt[yt == 0].mean(0)) > 0).long()),
    (exercises.check_topk_encode, lambda x, W, b, bd, k: torch.relu(x @ W + b)),
    (exercises.check_variance_explained, lambda x, xh: float(1 - (x - xh).pow(2).sum() / x.pow(2).sum())),
    (exercises.check_ce_loss_recovered, lambda c, s, z: (s - c) / (z - c)),
    (exercises.check_entropy_term, lambda mu: -(mu / mu.sum(0)).clamp_min(1e-9).log().mean(0)),
    (exercises.check_reasoning_windows, lambda n, m, b, a: torch.zeros(n, dtype=torch.bool)),
    (exercises.check_reason_score, lambda r, o, h, a: r / r.sum() * h - o / o.sum()),
    (exercises.check_caa_vector, lambda p, n: p.mean(0)),
    (exercises.check_projection_auroc, lambda v, p, n: 0.5),
    (exercises.check_sdcv_select, lambda p, n, k: torch.arange(k)),
]


@pytest.mark.parametrize("check,wrong", WRONG, ids=[c.__name__ for c, _ in WRONG])
def test_checks_fail_on_a_wrong_answer(check, wrong):
    with pytest.raises(AssertionError):
        check(wrong)


def test_logit_lens_check_fails_without_the_final_norm(smol):
    with pytest.raises(AssertionError, match="logit lens"):
        exercises.check_logit_lens(lambda m, h: m.get_output_embeddings()(h).float(), smol[0])
