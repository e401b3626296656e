"""helpers.harness.sweep: sweep files, bad input, resumable runs, failures, parallel and Dask engines, aggregation.

Most tests drive a tiny test-only notebook (the ``tiny_nb`` fixture of conftest.py, written into tmp_path with
its own params/ folder) whose kernel does no real work, so a point costs only papermill + kernel start; ``test_real_notebook_point`` runs notebook 00.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import nbformat
import pandas as pd
import pytest
import yaml

from helpers import PROJECT_ROOT
from helpers.core import memo
from helpers.harness import notebook as nb
from helpers.harness import sweep as S


def _spec(tiny_nb, **kw):
    return {"name": "tiny", "notebook": str(tiny_nb), "profile": "smoke", "grid": {"x": [1.0, 2.0, 3.0]},
            "plot": {"x": "x", "y": "y", "kind": "line"}, **kw}


# --------------------------------------------------------------------------------------------------
# bad input: a clear error before anything runs
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("change, message", [
    ({"notebook": "99_nothing"}, r"Unknown notebook '99_nothing'"),
    ({"notebook": "missing.ipynb"}, r"Unknown notebook 'missing.ipynb'"),
    ({"profile": "huge"}, r"No profile 'huge'"),
    ({"grid": {"xx": [1.0]}}, r"unknown parameter 'xx' \(did you mean 'x'\?\)"),
    ({"grid": {"n": ["three"]}}, r"'n' must be int like the default 2, got str 'three'"),
    ({"grid": {"x": [1.0]}, "fixed": {"fail": "yes"}}, r"'fail' must be bool"),
    ({"grid": {"words": ["a", "b"]}}, r"'words' must be list"),
    ({"grid": {}}, r"the sweep is empty"),
    ({"grid": {"x": []}}, r"grid axis 'x' must be a non-empty list"),
    ({"grid": {"x": [1, 1.0]}}, r"resolve to the same parameters"),
    ({"grid": {}, "points": [{"n": 3}, {}]}, r"points 0 \{'n': 3\} and 1 \{\} resolve to the same parameters"),
    ({"grid": {"output_dir": ["a", "b"]}}, r"cannot be swept"),
    ({"grids": {"x": [1.0]}}, r"unknown key\(s\) \['grids'\]"),
    ({"plot": {"x": "n", "y": "y"}}, r"plot x 'n' is not a parameter varied by the sweep"),
    ({"plot": {"x": "x", "y": "y", "kind": "pie"}}, r"plot kind 'pie' is not one of"),
    ({"plot": {"y": "y"}}, r"needs at least 'x' and 'y'"),
    ({"name": "../escape"}, r"sweep name '../escape' becomes a folder name"),
    ({"warmup": "yes"}, r"'warmup' must be true or false"),
])
def test_bad_sweep_fails_before_anything_runs(tiny_nb, tmp_path, change, message):
    spec = _spec(tiny_nb, **change)
    with pytest.raises(S.SweepError, match=message):
        S.run_sweep(spec, root=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_bad_engine_and_jobs(tiny_nb, tmp_path):
    with pytest.raises(S.SweepError, match="Unknown engine 'ray'"):
        S.run_sweep(_spec(tiny_nb), engine="ray", root=tmp_path / "out")
    with pytest.raises(S.SweepError, match="jobs must be a positive integer"):
        S.run_sweep(_spec(tiny_nb), jobs=0, root=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_point_id_is_a_stable_hash_of_notebook_and_resolved_parameters(tiny_nb):
    sw = S.load_sweep(_spec(tiny_nb))
    assert [p.overrides for p in sw.points] == [{"x": 1.0}, {"x": 2.0}, {"x": 3.0}]
    assert sw.points[0].params["n"] == 3 and sw.points[0].params["profile"] == "smoke"  # profile applied
    again = S.load_sweep(_spec(tiny_nb, grid={"x": [3, 1, 2]}))  # ints widened, order does not matter
    assert {p.id for p in again.points} == {p.id for p in sw.points}
    assert S.point_id("a", {"x": 1, "output_dir": "/elsewhere"}) == S.point_id("a", {"x": 1})
    assert S.point_id("a", {"x": 1}) != S.point_id("b", {"x": 1}) != S.point_id("a", {"x": 2})
    assert len(sw.points[0].id) == 12
    assert sw.points[0].id == S.point_id("tiny_sweep", sw.points[0].params, code=S.helpers_code_hash())
    assert S.point_id("a", {"x": 1}, code="h1") != S.point_id("a", {"x": 1}, code="h2")


def test_cli_bad_sweep_file_exit_code_2(tmp_path, tiny_nb):
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump({"notebook": str(tiny_nb), "profile": "smoke", "grid": {"n": [1, "x"]}}))
    for cmd in (["validate", str(f)], ["run", str(f), "--root", str(tmp_path / "out")]):
        r = subprocess.run([sys.executable, "-m", "helpers", "sweep", *cmd], capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and "'n' must be int" in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()


def test_committed_sweep_files_validate():
    files = sorted(S.SWEEPS_DIR.glob("*.yaml"))
    assert {"sae_width_k.yaml", "steering_n_method.yaml", "scoring_model_condition.yaml",
            "example_00_smoke.yaml"} <= {f.name for f in files}
    skipped = []
    for f in files:
        target = yaml.safe_load(f.read_text())["notebook"]
        prefix = target.split("_")[0] + "_"
        if not any(n.startswith(prefix) for n in nb.notebook_names()):
            skipped.append(f"{f.name} ({target} is not in this checkout)")
            continue
        sw = S.load_sweep(f)  # fails on an unknown notebook name / parameter / type once the notebook exists
        assert len(sw.points) >= 2 and sw.plot["y"]
    if skipped:
        pytest.skip("notebook absent for: " + "; ".join(skipped))


# --------------------------------------------------------------------------------------------------
# running, failures, resume
# --------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_failing_point_does_not_stop_the_others_and_is_reported(tiny_nb, tmp_path):
    spec = _spec(tiny_nb, points=[{"x": 9.0, "fail": True}, {"x": 7.0, "write": False}])
    rep = S.run_sweep(spec, jobs=1, threads=1, root=tmp_path / "out", progress=False)
    t = rep.table.set_index("x")
    assert list(t.status) == ["ok", "ok", "ok", "failed", "failed"] and len(rep.failed) == 2
    assert t.loc[9.0, "error"] == "ValueError: point asked to fail at x=9.0"
    assert "results.json" in t.loc[7.0, "error"]
    import random

    random.seed(0)
    noise = random.random()
    assert t.loc[[1.0, 2.0, 3.0], "y"].tolist() == pytest.approx([3 + noise, 6 + noise, 9 + noise])
    assert t.loc[2.0, "nested.n_words"] == 1 and t.loc[2.0, "threads"] == 1  # kernel pinned to 1 thread
    assert t.loc[2.0, "x2"] == 4.0
    failed = rep.folder / t.loc[9.0, "point_id"]
    tb = (failed / "traceback.txt").read_text()
    assert "point asked to fail" in tb and "ValueError" in tb
    assert (failed / "tiny_sweep.ipynb").exists()  # the executed notebook with the error, for debugging
    assert not rep.table.code_changed.any()
    book = nbformat.read(tiny_nb, as_version=4)  # editing the notebook's code flags the points computed before
    book.cells.append(nbformat.v4.new_code_cell("print('changed')"))
    nbformat.write(book, tiny_nb)
    assert S.aggregate(spec, root=tmp_path / "out", write=False).code_changed.all()
    csv = pd.read_csv(rep.folder / "sweep.csv")
    assert sorted(csv.status) == sorted(rep.table.status) and (csv.error.fillna("") != "").sum() == 2
    # re-run: finished points are reused; failed ones retried (still failing), unless told not to
    rep2 = S.run_sweep(spec, jobs=1, root=tmp_path / "out", progress=False)
    assert sorted(rep2.ran) == sorted(rep.failed) and len(rep2.skipped) == 3
    rep3 = S.run_sweep(spec, jobs=1, root=tmp_path / "out", retry_failed=False, progress=False)
    assert rep3.ran == [] and len(rep3.skipped) == 5


@pytest.mark.slow
def test_two_jobs_give_the_same_table_as_one(tiny_nb, tmp_path):
    spec = _spec(tiny_nb, grid={"x": [1.0, 2.0], "n": [1, 4]})
    one = S.run_sweep(spec, jobs=1, root=tmp_path / "one", progress=False).table
    two = S.run_sweep(spec, jobs=2, root=tmp_path / "two", progress=False).table
    cols = ["point_id", "status", "x", "n", "y", "k", "nested.n_words"]
    pd.testing.assert_frame_equal(one[cols], two[cols])
    assert set(two.threads) == {max(1, os.cpu_count() // 2)}  # default: cores // jobs threads per kernel
    pids = {json.loads((tmp_path / "two" / "tiny" / p / "status.json").read_text())["pid"] for p in two.point_id}
    assert os.getpid() not in pids  # points ran in pool workers, not in the caller


@pytest.mark.slow
def test_killed_sweep_resumes_without_recomputing_finished_points(tiny_nb, tmp_path):
    f = tmp_path / "slow.yaml"
    f.write_text(yaml.safe_dump(_spec(tiny_nb, grid={"x": [1.0, 2.0, 3.0, 4.0]}, fixed={"sleep": 1.5})))
    root = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "helpers", "sweep", "run", str(f), "--root", str(root)],
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    folder = root / "tiny"
    deadline = time.time() + 240
    try:
        while time.time() < deadline and not any(S._finished(p) for p in folder.glob("*/")):
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the CLI, its pool worker and the kernel
        proc.wait()
    done = {p.name for p in folder.glob("*/") if S._finished(p)}
    assert 1 <= len(done) < 4, "the sweep should have been killed mid-way"
    stamps = {p: [(folder / p / n).stat().st_mtime_ns for n in ("results.json", "status.json", "tiny_sweep.ipynb")]
              for p in done}
    rep = S.run_sweep(f, root=root, progress=False)
    assert set(rep.skipped) == done and set(rep.ran).isdisjoint(done) and len(rep.ran) == 4 - len(done)
    assert stamps == {p: [(folder / p / n).stat().st_mtime_ns for n in ("results.json", "status.json",
                                                                        "tiny_sweep.ipynb")] for p in done}
    assert (rep.table.status == "ok").all() and len(rep.table) == 4
    rep2 = S.run_sweep(f, root=root, progress=False)
    assert rep2.ran == [] and len(rep2.skipped) == 4


# --------------------------------------------------------------------------------------------------
# the distributed engine on a local cluster on 127.0.0.1
# --------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_dask_engine_local_cluster_matches_the_process_pool(tiny_nb, tmp_path):
    pytest.importorskip("distributed")
    spec = _spec(tiny_nb, points=[{"x": 5.0, "fail": True}])
    local = S.run_sweep(spec, jobs=1, threads=1, root=tmp_path / "local", progress=False).table
    threads_before = {v: os.environ.get(v) for v in S.THREAD_ENV}
    rep = S.run_sweep(spec, jobs=2, engine="dask", threads=1, root=tmp_path / "dask", progress=False)
    # Dask's nanny sets OMP_NUM_THREADS=1 etc. in this process; the sweep puts them back (else nbval kernels run on 1 core)
    assert {v: os.environ.get(v) for v in S.THREAD_ENV} == threads_before
    cols = ["point_id", "status", "error", "x", "y", "threads"]
    pd.testing.assert_frame_equal(local[cols], rep.table[cols])
    assert rep.failed and (rep.folder / rep.failed[0] / "traceback.txt").exists()


@pytest.mark.slow
def test_dask_engine_on_a_running_scheduler_address(tiny_nb, tmp_path):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, host="127.0.0.1", dashboard_address=None,
                                  processes=True) as cluster, distributed.Client(cluster) as client:
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        rep = S.run_sweep(_spec(tiny_nb, grid={"x": [1.0, 2.0]}), engine="dask", address=cluster.scheduler_address,
                          threads=1, root=tmp_path / "out", progress=False)
        worker_pids = set(client.run(os.getpid).values())
    assert (rep.table.status == "ok").all() and len(rep.ran) == 2
    ran_on = {json.loads((rep.folder / p / "status.json").read_text())["pid"] for p in rep.ran}
    assert ran_on == worker_pids


# --------------------------------------------------------------------------------------------------
# aggregation and plot
# --------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_records_are_exploded_into_a_tidy_table_and_plotted(tiny_nb, tmp_path):
    spec = _spec(tiny_nb, grid={"x": [1.0, 2.0], "words": [["a", "b", "c"], ["d"]]}, records="records",
                 plot={"x": "x", "y": "score", "hue": "words", "kind": "bar"})
    rep = S.run_sweep(spec, jobs=2, root=tmp_path / "out", progress=False)
    t = rep.table
    assert len(t) == 2 * 3 + 2 * 1 and set(t.word) == {"a", "b", "c", "d"}
    assert t[(t.x == 2.0) & (t.word == "c")].score.item() == 4.0 and set(t.words) == {"a, b, c", "d"}
    g = S.plot_sweep(rep.sweep, t)
    g.savefig(tmp_path / "fig.png")
    assert (tmp_path / "fig.png").stat().st_size > 5000
    with pytest.raises(S.SweepError, match=r"plot columns \['nope'\] are not in the sweep table"):
        S.plot_sweep(rep.sweep, t, y="nope")
    assert pd.read_parquet(rep.folder / "sweep.parquet").shape[0] == 8


def test_pending_points_are_listed_not_hidden(tiny_nb, tmp_path):
    t = S.aggregate(_spec(tiny_nb), root=tmp_path / "out")
    assert list(t.status) == ["pending"] * 3 and (tmp_path / "out" / "tiny" / "sweep.csv").exists()
    with pytest.raises(S.SweepError, match="no finished point to plot"):
        S.plot_sweep(S.load_sweep(_spec(tiny_nb)), t)


# --------------------------------------------------------------------------------------------------
# a real notebook
# --------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_real_notebook_point_through_the_cli(tmp_path):
    """One point of the committed example sweep (notebook 00, smoke) through `python -m helpers sweep run`."""
    sweep_file = PROJECT_ROOT / "notebooks" / "sweeps" / "example_00_smoke.yaml"
    r = subprocess.run([sys.executable, "-m", "helpers", "sweep", "run", str(sweep_file), "--limit", "1", "--threads",
                        "1", "--root", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    table = pd.read_csv(tmp_path / "example_00_smoke" / "sweep.csv", dtype={"point_id": str})  # a hex id can read as a float
    row = table.iloc[0]
    assert row.status == "ok" and row.pca_depth == 0.25 and row.n_per_set == 8
    assert 0.5 < row["probe.acc_pca2"] <= 1.0 and row["probe.block"] == 7  # int(0.25 * 30)
    res = json.loads((tmp_path / "example_00_smoke" / row.point_id / "results.json").read_text())
    assert res["environment"]["threads"] == 1  # torch in the kernel honoured the pinning
    assert res["parameters"]["max_new_tokens"] == 4 and res["profile"] == "smoke"
    assert (tmp_path / "example_00_smoke" / "sweep.png").stat().st_size > 5000


@pytest.mark.slow
def test_warmup_runs_the_first_point_alone_before_the_others(tiny_nb, tmp_path):
    rep = S.run_sweep(_spec(tiny_nb, warmup=True, fixed={"sleep": 0.5}), jobs=2, root=tmp_path / "out",
                      progress=False)
    st = [json.loads((rep.folder / p.id / "status.json").read_text()) for p in rep.sweep.points]
    first_end = st[0]["started"] + st[0]["seconds"]
    assert all(s["started"] >= first_end for s in st[1:]) and (rep.table.status == "ok").all()
    with pytest.raises(S.SweepError, match="'warmup' must be true or false"):
        S.load_sweep(_spec(tiny_nb, warmup="yes"))


@pytest.mark.slow
def test_a_point_whose_worker_dies_is_reported_and_the_sweep_finishes(tiny_nb, tmp_path):
    """A kernel that kills its own worker process (as the OOM killer would) breaks the pool: that point and the
    ones it took down are reported as failed with the reason; the points finished before are kept."""
    book = nbformat.read(tiny_nb, as_version=4)
    book.cells.insert(1, nbformat.v4.new_code_cell("import os, signal\nif x == 2.0:\n    os.kill(os.getppid(), signal.SIGKILL)"))
    nbformat.write(book, tiny_nb)
    spec = _spec(tiny_nb)
    rep = S.run_sweep(spec, jobs=1, root=tmp_path / "out", progress=False)
    t = rep.table.set_index("x")
    assert t.loc[1.0, "status"] == "ok" and t.loc[2.0, "status"] == "failed"
    assert t.loc[2.0, "error"].startswith("worker died: BrokenProcessPool")
    assert (rep.folder / t.loc[2.0, "point_id"] / "traceback.txt").exists()


def test_changing_a_helper_changes_point_ids(tiny_nb, tmp_path, monkeypatch):
    """The toolkit's code is part of a point's id: edit a helper and the sweep computes its points again."""
    src = tmp_path / "helpers_copy"
    (src / "core").mkdir(parents=True)
    (src / "core" / "m.py").write_text("x = 1\n")
    h1 = S.helpers_code_hash(str(src))
    (src / "core" / "m.py").write_text("x = 2\n")
    memo.tree_hash.cache_clear()  # the hash is computed once per process
    assert S.helpers_code_hash(str(src)) != h1
    before = [p.id for p in S.load_sweep(_spec(tiny_nb)).points]
    monkeypatch.setattr(S, "helpers_code_hash", lambda root=None: "edited")
    after = [p.id for p in S.load_sweep(_spec(tiny_nb)).points]
    assert len(before) == len(after) and not set(before) & set(after)
