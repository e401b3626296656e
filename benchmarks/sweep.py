"""Sweep benchmark: the same sweep of N smoke points with 1 job (cores threads per kernel, and 1 thread), 2 jobs
and the Dask engine (2 workers on a LocalCluster on 127.0.0.1), as wall-time ratios; and the per-point overhead of
papermill + kernel start, measured on a notebook whose only cell writes ``results.json``.

Every configuration runs into a fresh folder (nothing reused from the cache). The real points are the committed
example sweep (notebook 00, smoke profile). On a machine shared with other jobs the ratios are pessimistic.
Writes ``outputs/bench/sweep.json``. ``python -m benchmarks sweep``; ``SWEEP_BENCH_POINTS=2`` for a shorter run.
"""
from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

from helpers import PROJECT_ROOT
from helpers.harness import sweep as S
from helpers.harness.notebook import environment

from .common import OUT, write_result

EXAMPLE = PROJECT_ROOT / "notebooks" / "sweeps" / "example_00_smoke.yaml"
NOOP_PARAMS = 'i = 0\nprofile = "default"\noutput_dir = ""\nseed = 0\n'
NOOP_BODY = ('import json, pathlib\n'
             'pathlib.Path(output_dir, "results.json").write_text(json.dumps({"metrics": {"i": i}}))\n')


def _noop_notebook(folder: Path) -> Path:
    import nbformat

    (folder / "params" / "noop").mkdir(parents=True)
    (folder / "params" / "noop" / "default.yaml").write_text("i: 0\n")
    book = nbformat.v4.new_notebook()
    book.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    book.cells = [nbformat.v4.new_code_cell(NOOP_PARAMS, metadata={"tags": ["parameters"]}),
                  nbformat.v4.new_code_cell(NOOP_BODY)]
    nbformat.write(book, folder / "noop.ipynb")
    return folder / "noop.ipynb"


def point_overhead(n: int = 4) -> dict:
    """Papermill + kernel start + results.json for a point that does no work (1 job, 1 thread)."""
    with tempfile.TemporaryDirectory() as tmp:
        book = _noop_notebook(Path(tmp))
        spec = {"name": "noop", "notebook": str(book), "profile": "default", "grid": {"i": list(range(1, n + 1))}}
        rep = S.run_sweep(spec, jobs=1, threads=1, root=Path(tmp) / "out", progress=False)
        per_point = [float(s) for s in rep.table.seconds]
    return {"n_points": n, "per_point_s_median": round(statistics.median(per_point), 2),
            "per_point_s_max": round(max(per_point), 2), "sweep_wall_s": rep.wall_s,
            "sweep_wall_per_point_s": round(rep.wall_s / n, 2)}


def engines(n_points: int) -> dict:
    out, tables = {}, {}
    configs = (("local_1job", "local", 1, None), ("local_1job_1thread", "local", 1, 1), ("local_2jobs", "local", 2, None),
               ("dask_2workers", "dask", 2, None))
    for label, engine, jobs, threads in configs:
        with tempfile.TemporaryDirectory() as tmp:
            print(f"[bench] sweep of {n_points} smoke points: {label}")
            rep = S.run_sweep(EXAMPLE, jobs=jobs, engine=engine, threads=threads, root=tmp, limit=n_points,
                              progress=False)
            assert not rep.failed, rep.table[["point_id", "error"]]
            tables[label] = rep.table
            out[label] = {"wall_s": rep.wall_s, "point_s_median": round(float(rep.table.seconds.median()), 1),
                          "threads_per_kernel": threads or max(1, (os.cpu_count() or 1) // jobs)}
    base = out["local_1job"]["wall_s"]
    out["speedup_2jobs_vs_1"] = round(base / out["local_2jobs"]["wall_s"], 2)
    out["speedup_dask_vs_1"] = round(base / out["dask_2workers"]["wall_s"], 2)
    # the same per-kernel thread count on both sides: the gain of running points side by side, nothing else
    out["speedup_2jobs_vs_1job_1thread"] = round(out["local_1job_1thread"]["wall_s"] / out["local_2jobs"]["wall_s"], 2)
    out["dask_overhead_vs_2jobs"] = round(out["dask_2workers"]["wall_s"] / out["local_2jobs"]["wall_s"], 2)
    cols = ["point_id", "probe.acc_full", "probe.acc_pca2", "probe.acc_shuffled"]
    out["same_results_all_engines"] = all(t[cols].round(6).equals(tables["local_1job"][cols].round(6))
                                          for t in tables.values())
    return out


def main() -> dict:
    OUT.mkdir(parents=True, exist_ok=True)
    n = int(os.environ.get("SWEEP_BENCH_POINTS", "4"))
    print("[bench] per-point overhead (papermill + kernel start)")
    t0 = time.time()
    res = {"machine": environment(), "overhead": point_overhead(), "engines": engines(n),
           "load_average_1min_at_end": round(os.getloadavg()[0], 2)}
    res["bench_wall_s"] = round(time.time() - t0, 1)
    return write_result("sweep", res)


if __name__ == "__main__":
    main()
