"""Shared benchmark plumbing: median wall time of a callable, and writing ``outputs/bench/<name>.json``."""
from __future__ import annotations

import json
import statistics
import time

from helpers import PROJECT_ROOT

OUT = PROJECT_ROOT / "outputs" / "bench"


def median_time(fn, repeats: int = 3) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs, after one untimed warm-up call."""
    fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def write_result(name: str, res: dict) -> dict:
    """Write ``res`` to ``outputs/bench/<name>.json`` (read by the README generator), print it, return it."""
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.json"
    path.write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))
    print(f"[bench] wrote {path}")
    return res
