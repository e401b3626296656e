"""`make test` as independent pytest sessions ("units"), run one after another or side by side in lanes.

Units (each its own pytest session, so that a notebook's claims check runs in the session whose nbval re-executed it):

* ``tests``: the unit tests (not ``slow``); ``tests-slow``: the papermill smoke and paper-path runs, sweeps, site;
* one per committed notebook: nbval over it, then ``test_fresh_run_reproduces_the_claims[<notebook>]``.

Lanes: ``cores // 2`` of them (at most 4, at least 1), each pinned to its own cores, so that every notebook runs on
2 threads or more, as the published runs did. On 2 cores that is one lane: the units run one after another on
both cores. Two lanes of one core each were measured on 2026-12-07 (AMD EPYC, AVX2, cold) and rejected: the
Python-bound stretches overlapped, but the compute-bound cells ran ~2x slower on one thread (notebook 03's
generation cell over 30 min instead of 19, 01 45.5 min instead of 23 with live LLM calls), and notebook 03 alone
became the critical path. One thread also changes an SAE trained from scratch in its last bits, and with it
the prompts of notebook 01's explanations. ``XAI_TEST_LANES=N`` forces N lanes.

Lanes take the next unit from one queue as they free up. The queue starts notebook 01 (its SAE feeds 02 and 03)
beside the unit tests and the slow runs, which need nothing from it; then notebook 03 (the longest unit), then the
rest longest first. The order is for speed only: a process that needs an SAE (or model, or GGUF) another is still
building waits on its cache lock (``helpers.core.paths.cache_lock``) and then loads it.

Each unit's whole output is printed when it ends (never interleaved) and kept in ``outputs/test-logs/<unit>.log``;
a table of units, lanes, minutes and outcomes closes the run, and the exit status is 1 when any unit failed.
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOG_DIR = ROOT / "outputs" / "test-logs"
#: queue order (see the module doc)
ORDER = ["01_sparse_autoencoders", "tests", "tests-slow", "03_steering_refinement", "02_reasoning_features",
         "04_scoring_skills", "00_inside_a_language_model", "05_sweeps"]
#: nbval's own cell timeout (default 2,000 s) raised: notebook 03's generation cell took 1,131 s cold on two cores of
#: an AVX2-only AMD EPYC, and over 1,800 s on one (XAI_TEST_LANES=2 there)
NBVAL_ARGS = ["--nbval-lax", "--nbval-current-env", "--nbval-sanitize-with", "tests/nbval_sanitize.cfg",
              "--nbval-cell-timeout", "3600"]
CLAIMS_TEST = "tests/notebooks/test_results.py::test_fresh_run_reproduces_the_claims"


@dataclass
class Unit:
    name: str
    args: list[str]
    lane: int | None = None
    seconds: float | None = None
    returncode: int | None = None
    log: Path | None = None
    summary: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode in (0, 5)  # 5: pytest selected no test (e.g. a -k that matches nothing here)


@dataclass
class Lane:
    index: int
    cores: list[int] = field(default_factory=list)


def notebooks() -> list[str]:
    return sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def units(extra: list[str]) -> list[Unit]:
    """The suite as units in queue order (see the module doc); ``extra`` goes to every pytest session."""
    from tests.notebooks.claims import CLAIMS

    names = [n for n in ORDER if n.startswith("tests") or n in notebooks()] + [n for n in notebooks() if n not in ORDER]
    out = []
    for name in names:
        if name == "tests":
            args = ["tests", "-m", "not slow and not after_nbval"]
        elif name == "tests-slow":
            args = ["tests", "-m", "slow and not after_nbval"]
        else:
            args = [f"notebooks/{name}.ipynb", *NBVAL_ARGS]
            if name in CLAIMS:
                args.append(f"{CLAIMS_TEST}[{name}]")
        out.append(Unit(name, args + list(extra)))
    return out


def lanes(n: int | None = None) -> list[Lane]:
    """``n`` lanes (default: ``XAI_TEST_LANES``, else ``cores // 2`` between 1 and 4), the usable cores dealt out
    between them in turn."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    if n is None:
        env = os.environ.get("XAI_TEST_LANES", "")
        if env and not env.isdigit():
            raise ValueError(f"XAI_TEST_LANES must be a positive integer, got {env!r}.")
        n = int(env) if env else max(1, min(4, len(cores) // 2))
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"the number of lanes must be a positive integer, got {n!r}.")
    n = min(n, len(cores))
    return [Lane(i, cores[i::n]) for i in range(n)]


def _summary_line(text: str) -> str:
    lines = [ln.strip("= ") for ln in text.splitlines() if ln.startswith("=") and (" in " in ln)]
    return lines[-1] if lines else ""


def run_units(todo: list[Unit], lane_list: list[Lane], *, python: str = sys.executable, log_dir: Path = LOG_DIR,
              command=None, echo=print) -> list[Unit]:
    """Run every unit, each lane taking the next from the queue; ``command(unit)`` (default: pytest with the unit's
    arguments) is the child's argv. A lane's children run on its cores only (Linux; elsewhere they share)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    q: queue.Queue[Unit] = queue.Queue()
    for u in todo:
        q.put(u)
    printing = threading.Lock()
    pin = hasattr(os, "sched_setaffinity") and len(lane_list) > 1
    command = command or (lambda u: [python, "-m", "pytest", *u.args])

    def work(lane: Lane) -> None:
        env = dict(os.environ)
        if len(lane_list) > 1 and not pin:  # no affinity here: at least keep each lane's thread pools apart
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(len(lane.cores))
        while True:
            try:
                u = q.get_nowait()
            except queue.Empty:
                return
            u.lane, u.log = lane.index, log_dir / f"{u.name}.log"
            with printing:
                echo(f"[lanes] {time.strftime('%H:%M:%S')} lane {lane.index} (cores {lane.cores}) starts {u.name}",
                     flush=True)
            t0 = time.time()
            with u.log.open("w") as f:
                proc = subprocess.Popen(command(u), cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT,
                                        preexec_fn=(lambda c=lane.cores: os.sched_setaffinity(0, c)) if pin else None)
                u.returncode = proc.wait()
            u.seconds = time.time() - t0
            text = u.log.read_text(errors="replace")
            u.summary = _summary_line(text)
            with printing:
                echo(f"\n[lanes] ===== {u.name} (lane {lane.index}, {u.seconds / 60:.1f} min, exit {u.returncode}) =====",
                     flush=True)
                echo(text.rstrip(), flush=True)

    threads = [threading.Thread(target=work, args=(lane,), daemon=True) for lane in lane_list]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return todo


def report(done: list[Unit], wall: float) -> str:
    rows = [f"{'unit':<28} {'lane':>4} {'min':>6}  outcome"]
    for u in done:
        outcome = "not run" if u.returncode is None else (u.summary or f"exit {u.returncode}")
        rows.append(f"{u.name:<28} {u.lane if u.lane is not None else '-':>4} "
                    f"{(u.seconds or 0) / 60:>6.1f}  {'' if u.ok else 'FAILED: '}{outcome}")
    busy = sum(u.seconds or 0 for u in done)
    rows.append(f"wall {wall / 60:.1f} min; unit time {busy / 60:.1f} min")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.lanes", description=__doc__.splitlines()[0])
    ap.add_argument("--lanes", type=int, default=None, help="parallel pytest sessions (default: cores // 2, 1 to 4)")
    ap.add_argument("pytest_args", nargs=argparse.REMAINDER, help="after --: passed to every pytest session")
    a = ap.parse_args(argv)
    extra = [x for x in a.pytest_args if x != "--"] if a.pytest_args[:1] == ["--"] else a.pytest_args
    lane_list = lanes(a.lanes)
    todo = units(extra)
    print(f"[lanes] {len(todo)} units on {len(lane_list)} lane(s): "
          + "; ".join(f"lane {ln.index} cores {ln.cores}" for ln in lane_list), flush=True)
    t0 = time.time()
    done = run_units(todo, lane_list)
    wall = time.time() - t0
    table = report(done, wall)
    print("\n[lanes] summary\n" + table, flush=True)
    (LOG_DIR / "lanes.json").write_text(json.dumps(
        {"wall_s": round(wall, 1), "lanes": [ln.cores for ln in lane_list],
         "units": [{"name": u.name, "lane": u.lane, "seconds": round(u.seconds or 0, 1), "returncode": u.returncode,
                    "summary": u.summary} for u in done]}, indent=1))
    failed = [u.name for u in done if not u.ok]
    if failed:
        print(f"[lanes] FAILED: {', '.join(failed)} (logs: outputs/test-logs/)", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
