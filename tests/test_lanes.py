"""tests/lanes.py: `make test` as pytest sessions in parallel lanes, and the cache lock that makes that safe."""
from __future__ import annotations

import multiprocessing as mp
import os
import sys
import time

import pytest

from helpers.core.paths import cache_lock
from tests import lanes
from tests.notebooks.claims import CLAIMS


def test_units_cover_the_suite_once_with_each_claims_check_beside_its_nbval():
    units = lanes.units(["--durations=5"])
    names = [u.name for u in units]
    assert sorted(names) == sorted(["tests", "tests-slow", *lanes.notebooks()]) and len(set(names)) == len(names)
    # 01 trains the SAE that 02 and 03 read: it goes first, and the units that need nothing from it next
    assert names[:3] == ["01_sparse_autoencoders", "tests", "tests-slow"]
    by = {u.name: u.args for u in units}
    assert by["tests"][:3] == ["tests", "-m", "not slow and not after_nbval"] and by["tests"][-1] == "--durations=5"
    assert by["tests-slow"][:3] == ["tests", "-m", "slow and not after_nbval"]
    for nb in lanes.notebooks():
        assert by[nb][0] == f"notebooks/{nb}.ipynb" and "--nbval-lax" in by[nb]
        assert (f"{lanes.CLAIMS_TEST}[{nb}]" in by[nb]) == (nb in CLAIMS)
    assert set(CLAIMS) <= set(lanes.notebooks())


def test_lanes_deal_out_the_cores_and_reject_bad_counts(monkeypatch):
    cores = sorted(os.sched_getaffinity(0))
    ls = lanes.lanes(2)
    assert sorted(c for ln in ls for c in ln.cores) == cores
    assert len(ls) == min(2, len(cores)) and all(ln.cores for ln in ls)
    assert len(lanes.lanes(1)) == 1 and lanes.lanes(1)[0].cores == cores
    monkeypatch.delenv("XAI_TEST_LANES", raising=False)
    assert len(lanes.lanes()) == max(1, min(4, len(cores) // 2))  # every lane keeps 2+ cores where it can
    assert all(len(ln.cores) >= 2 for ln in lanes.lanes()) or len(cores) < 2
    monkeypatch.setenv("XAI_TEST_LANES", "1")
    assert len(lanes.lanes()) == 1
    monkeypatch.setenv("XAI_TEST_LANES", "two")
    with pytest.raises(ValueError, match="XAI_TEST_LANES must be a positive integer"):
        lanes.lanes()
    with pytest.raises(ValueError, match="positive integer"):
        lanes.lanes(0)


def test_run_units_runs_everything_pins_each_lane_and_reports_failures(tmp_path):
    script = ("import os, sys, time; time.sleep(0.3); "
              "print('cores', sorted(os.sched_getaffinity(0))); print('===== 1 passed in 0.3s ====='); "
              "sys.exit(int(sys.argv[1]))")
    todo = [lanes.Unit(f"u{i}", [str(rc)]) for i, rc in enumerate([0, 0, 1, 5])]
    shown = []
    done = lanes.run_units(todo, lanes.lanes(2), log_dir=tmp_path,
                           command=lambda u: [sys.executable, "-c", script, *u.args],
                           echo=lambda *a, **k: shown.append(" ".join(map(str, a))))
    assert [u.returncode for u in done] == [0, 0, 1, 5]
    assert [u.ok for u in done] == [True, True, False, True]  # 5: no test selected is not a failure
    assert all(u.summary == "1 passed in 0.3s" and u.log.exists() for u in done)
    if len(lanes.lanes(2)) == 2:  # each lane's children see only that lane's cores
        seen = {u.lane: u.log.read_text().splitlines()[0] for u in done}
        assert seen[0] != seen[1] and all(s.startswith("cores [") for s in seen.values())
        assert len({u.lane for u in done}) == 2
    table = lanes.report(done, 1.0)
    assert "FAILED" in table.splitlines()[3] and table.count("FAILED") == 1
    assert any("===== u2" in s for s in shown)


def _hold(name, cache, hold_s, out):
    os.environ["XAI_CACHE"] = cache
    with cache_lock(name):
        out.put(("in", time.time()))
        time.sleep(hold_s)
        out.put(("out", time.time()))


def test_cache_lock_serializes_processes_and_rejects_bad_names(tmp_path, monkeypatch):
    monkeypatch.setenv("XAI_CACHE", str(tmp_path))
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    ps = [ctx.Process(target=_hold, args=("sae-x", str(tmp_path), 0.8, out)) for _ in range(2)]
    for p in ps:
        p.start()
    for p in ps:
        p.join(60)
    events = sorted((out.get(timeout=5) for _ in range(4)), key=lambda e: e[1])
    assert [e[0] for e in events] == ["in", "out", "in", "out"]  # never both inside at once
    assert (tmp_path / "locks" / "sae-x.lock").exists()
    with pytest.raises(ValueError, match="without '/'"):
        with cache_lock("a/b"):
            pass
