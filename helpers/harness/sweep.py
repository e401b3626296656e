"""Parameter sweeps over any notebook: a YAML grid -> one papermill run per point -> one tidy table + a figure.

A sweep file (``notebooks/sweeps/<name>.yaml``) names a notebook, a base profile and the points::

    notebook: 01_sparse_autoencoders      # a notebook name, or a path to an .ipynb (relative to the sweep file)
    profile: smoke                        # base profile; every point = profile + fixed + its overrides
    fixed: {n_train_tokens: 40960}        # optional overrides shared by all points
    grid: {d_sae: [512, 1024], k: [8, 16]}  # cartesian product (each value is one value of the parameter)
    points: [{d_sae: 2048, k: 32}]        # optional explicit points, appended to the grid's
    records: null                         # optional: a list-of-records metric to explode into rows
    warmup: false                         # true: with jobs > 1, run the first pending point alone first
    plot: {x: k, y: variance_explained, hue: d_sae, kind: line}

``python -m helpers sweep run notebooks/sweeps/<name>.yaml --jobs 2`` (``make sweep SWEEP=...``) executes every
point into ``outputs/sweeps/<name>/<point-id>/`` (executed notebook, ``results.json``, ``status.json``, and
``traceback.txt`` when it failed). The point id is a hash of the notebook and the point's fully resolved parameters
(profile + overrides), so a finished point is never recomputed: re-running, or resuming a killed sweep, only runs
what has no ``status.json`` saying ``ok``. Then every point's ``results.json`` is flattened into ``sweep.csv`` (and
``sweep.parquet`` when pyarrow is installed) with the varied parameters as columns, ``status`` / ``error`` columns
listing failures, and the sweep file's figure is drawn into ``sweep.png``.

Engines. ``local``: a :class:`concurrent.futures.ProcessPoolExecutor` with ``--jobs`` workers (spawned), each
point's kernel pinned to ``--threads`` (default cores // jobs) through ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS``
/ ... in the environment the kernel inherits (torch reads them at import). ``dask``: the same point function
submitted to a Dask distributed cluster: a ``LocalCluster`` on 127.0.0.1 (one single-threaded worker process per
job) or, with ``--address tcp://host:8786``, any running Dask scheduler (SSH, SLURM via dask-jobqueue,
Kubernetes), whose workers must see the project checkout and the output folder on a shared filesystem.

Why Dask distributed rather than Ray: it is pure Python (wheels of a few MB, no CUDA or torch pulled in), its
``LocalCluster`` starts in about a second on 127.0.0.1 (cheap enough for unit tests on 2 cores), and the same
``Client`` code reaches HPC schedulers through dask-jobqueue; Ray ships a large binary wheel with its own
GCS/raylet daemons that take several seconds to start and would double the moving parts for a job that is
"run this function on N machines". Neither engine's scheduling is re-implemented here.
"""
from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import re
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from helpers import PROJECT_ROOT
from helpers.core import memo

from . import notebook as nb

__all__ = ["ENGINES", "PLOT_KINDS", "Point", "Sweep", "SweepError", "SweepReport", "aggregate", "load_sweep",
           "helpers_code_hash", "notebook_code_hash", "plot_sweep", "point_id", "run_point", "run_sweep", "sweep_dir"]

SWEEPS_DIR = nb.NOTEBOOKS_DIR / "sweeps"
ENGINES = ("local", "dask")
PLOT_KINDS = ("line", "scatter", "point", "bar", "box", "strip")
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS",
              "VECLIB_MAXIMUM_THREADS")
_KEYS = {"name", "description", "notebook", "profile", "fixed", "grid", "points", "records", "plot", "warmup"}


class SweepError(ValueError):
    """A sweep file is malformed or names an unknown notebook / parameter / value; raised before anything runs."""


@dataclass(frozen=True)
class Point:
    """One run of a sweep: ``overrides`` on top of the base profile, ``params`` fully resolved, ``id`` their hash."""

    id: str
    overrides: dict[str, Any]
    params: dict[str, Any]


@dataclass
class Sweep:
    name: str
    notebook: str  # a notebook name in notebooks/ or an absolute path to an .ipynb
    profile: str
    points: list[Point]
    varied: list[str]  # parameter names set by grid / points (the table's parameter columns)
    plot: dict[str, Any]
    records: str | None = None
    warmup: bool = False  # run the first pending point alone (fills caches the points share) before the rest
    description: str = ""
    path: Path | None = None


@dataclass
class SweepReport:
    sweep: Sweep
    folder: Path
    table: Any  # pandas DataFrame, one row per point (or per record)
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    engine: str = "local"
    jobs: int = 1

    def summary(self) -> str:
        n = len(self.sweep.points)
        return (f"sweep {self.sweep.name}: {n} points; ran {len(self.ran)}, reused {len(self.skipped)} finished, "
                f"failed {len(self.failed)}; {self.wall_s:.1f} s with engine={self.engine} jobs={self.jobs}")


# --------------------------------------------------------------------------------------------------
# Sweep files
# --------------------------------------------------------------------------------------------------

def point_id(notebook: str, params: dict[str, Any], digits: int = 12, *, code: str = "") -> str:
    """Stable id of a point: sha256 of the notebook name, its resolved parameters (minus ``output_dir``) and
    ``code`` (:func:`helpers_code_hash` when the sweep is loaded: changing a helper gives new ids, so the points
    are computed again instead of being reused)."""
    key = {"notebook": Path(notebook).stem, "params": {k: v for k, v in params.items() if k != "output_dir"}}
    if code:
        key["code"] = code
    blob = json.dumps(key, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:digits]


def helpers_code_hash(root: str | None = None) -> str:
    """sha256 over the toolkit's source (``helpers/**`` .py, .yaml and .txt files, by relative path): the code a
    point runs besides its notebook. Computed once per process."""
    return memo.tree_hash(str(Path(root) if root else PROJECT_ROOT / "helpers"))


def notebook_code_hash(notebook: str) -> str:
    """sha256 of a notebook's code cells (not its outputs). Recorded per point: the table's ``code_changed``
    column flags points computed with code that has changed since (the id only hashes parameters, so
    re-publishing a notebook's outputs does not invalidate its points; delete a point folder to recompute it)."""
    import nbformat

    book = nbformat.read(nb._notebook_path(notebook), as_version=4)
    src = "\n# ---\n".join(c.source for c in book.cells if c.cell_type == "code")
    return hashlib.sha256(src.encode()).hexdigest()


def _resolve_notebook(value: Any, sweep_path: Path | None) -> str:
    if not isinstance(value, str) or not value:
        raise SweepError("'notebook' must be a notebook name like '01_sparse_autoencoders' or a path to an .ipynb.")
    if value.endswith(".ipynb"):
        for base in ([sweep_path.parent] if sweep_path else []) + [PROJECT_ROOT, Path.cwd()]:
            if (base / value).exists():
                return str((base / value).resolve())
        raise SweepError(f"Unknown notebook {value!r}: no such file next to the sweep file or in the project.")
    return value


def _read_yaml(path: Path) -> dict:
    import yaml

    if not path.exists():
        known = sorted(p.name for p in SWEEPS_DIR.glob("*.yaml")) if SWEEPS_DIR.exists() else []
        raise FileNotFoundError(f"No sweep file {path} (committed sweeps in notebooks/sweeps/: {known}).")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise SweepError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise SweepError(f"{path} must be a mapping with keys notebook, profile, grid/points, plot.")
    return data


def load_sweep(spec: str | Path | dict, *, name: str | None = None) -> Sweep:
    """Read and fully validate a sweep (a YAML path or the same mapping): notebook, profile, every point's
    parameters (names and types, via :func:`helpers.harness.notebook.validate_params`), a non-empty set of points with
    distinct ids, the engine-independent plot section. Raises :class:`SweepError` (or FileNotFoundError for a
    missing file / notebook / profile) before anything runs."""
    path = Path(spec) if not isinstance(spec, dict) else None
    data = _read_yaml(path) if path else dict(spec)
    where = str(path) if path else "sweep"
    unknown = set(data) - _KEYS
    if unknown:
        raise SweepError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_KEYS)}.")
    notebook = _resolve_notebook(data.get("notebook"), path)
    try:
        nb._notebook_path(notebook)
    except FileNotFoundError as e:
        raise SweepError(f"{where}: {e}") from None
    profile = data.get("profile", "default")
    try:
        base = nb.load_profile(notebook, profile)
    except FileNotFoundError as e:
        raise SweepError(f"{where}: {e}") from None
    fixed = data.get("fixed") or {}
    grid = data.get("grid") or {}
    extra = data.get("points") or []
    if not isinstance(fixed, dict) or not isinstance(grid, dict) or not isinstance(extra, list):
        raise SweepError(f"{where}: 'fixed' and 'grid' must be mappings and 'points' a list of mappings.")
    for k, vals in grid.items():
        if not isinstance(vals, list) or not vals:
            raise SweepError(f"{where}: grid axis {k!r} must be a non-empty list of values, got {vals!r} "
                             f"(a list-valued parameter needs a list of lists, e.g. {k}: [[8], [32]]).")
    combos = [dict(zip(grid, vs)) for vs in itertools.product(*grid.values())] if grid else []
    if any(not isinstance(p, dict) for p in extra):
        raise SweepError(f"{where}: every entry of 'points' must be a mapping of parameter: value.")
    overrides = combos + [dict(p) for p in extra]
    if not overrides:
        raise SweepError(f"{where}: the sweep is empty; give a non-empty 'grid' and/or 'points'.")
    stem = Path(notebook).stem
    reserved = {"output_dir", "profile"} & (set(fixed) | {k for o in overrides for k in o})
    if reserved:
        raise SweepError(f"{where}: {sorted(reserved)} cannot be swept (the sweep sets the output folder; use "
                         f"'profile:' for the base profile).")
    try:
        nb.validate_params(notebook, fixed, source=f"{where} 'fixed'")
    except nb.ParameterError as e:
        raise SweepError(str(e)) from None
    points, seen = [], {}
    for i, o in enumerate(overrides):
        try:
            ov = nb.validate_params(notebook, {**fixed, **o}, source=f"{where} point {i} {o}")
        except nb.ParameterError as e:
            raise SweepError(str(e)) from None
        params = {**base, **ov}
        pid = point_id(stem, params, code=helpers_code_hash())
        if pid in seen:
            raise SweepError(f"{where}: points {seen[pid]} {overrides[seen[pid]]} and {i} {o} resolve to the same "
                             f"parameters (id {pid}); remove the duplicate or make them differ.")
        seen[pid] = i
        points.append(Point(pid, ov, params))
    varied = list(dict.fromkeys(k for o in overrides for k in o))
    records = data.get("records")
    if records is not None and not isinstance(records, str):
        raise SweepError(f"{where}: 'records' names one list-of-records metric (a string), got {records!r}.")
    if not isinstance(data.get("warmup", False), bool):
        raise SweepError(f"{where}: 'warmup' must be true or false, got {data['warmup']!r}.")
    name = str(name or data.get("name") or (path.stem if path else stem))
    if not re.fullmatch(r"[A-Za-z0-9_.\-]+", name):
        raise SweepError(f"{where}: sweep name {name!r} becomes a folder name; use letters, digits, '_', '-', '.'.")
    sw = Sweep(name=name, notebook=notebook, profile=profile,
               points=points, varied=varied, plot=dict(data.get("plot") or {}), records=records,
               warmup=bool(data.get("warmup", False)),
               description=str(data.get("description", "")), path=path)
    _check_plot(sw, where)
    return sw


def _check_plot(sw: Sweep, where: str) -> None:
    p = sw.plot
    if not p:
        return
    bad = set(p) - {"x", "y", "hue", "col", "kind", "title", "xlabel", "ylabel", "logx", "logy"}
    if bad:
        raise SweepError(f"{where}: unknown plot key(s) {sorted(bad)}; use x, y, hue, col, kind, title, xlabel, "
                         f"ylabel, logx, logy.")
    if "x" not in p or "y" not in p:
        raise SweepError(f"{where}: the plot section needs at least 'x' and 'y' (a parameter and a metric).")
    if p.get("kind", "line") not in PLOT_KINDS:
        raise SweepError(f"{where}: plot kind {p['kind']!r} is not one of {PLOT_KINDS}.")
    for role in ("x", "hue", "col"):
        c = p.get(role)
        if c is not None and c not in sw.varied and not sw.records:
            raise SweepError(f"{where}: plot {role} {c!r} is not a parameter varied by the sweep "
                             f"(varied: {sw.varied}); the table has no other parameter columns.")


def sweep_dir(sw: Sweep, root: str | Path | None = None) -> Path:
    """``<root>/<sweep name>/`` (root defaults to ``outputs/sweeps``)."""
    return Path(root or nb.OUTPUTS_DIR / "sweeps") / sw.name


# --------------------------------------------------------------------------------------------------
# Running one point (in a worker process: a pool worker or a Dask worker)
# --------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _restored_env(keys):
    """Put the given environment variables back as they were when the block ends."""
    old = {k: os.environ.get(k) for k in keys}
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _pinned_threads(n: int | None):
    """Set the thread-count variables the kernel inherits (restored afterwards)."""
    if not n:
        yield
        return
    with _restored_env(THREAD_ENV):
        os.environ.update({k: str(int(n)) for k in THREAD_ENV})
        yield


@contextlib.contextmanager
def _output_to(path: Path):
    """Send this process's stdout/stderr, at the file-descriptor level so the kernel subprocess inherits it too,
    to ``path`` (the point's ``kernel.log``); restored afterwards. Only used in dedicated worker processes."""
    sys.stdout.flush(), sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    with open(path, "wb") as log:
        try:
            for fd in (1, 2):
                os.dup2(log.fileno(), fd)
            yield
        finally:
            sys.stdout.flush(), sys.stderr.flush()
            for fd, dup in saved.items():
                os.dup2(dup, fd)
                os.close(dup)


def _atomic_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    tmp.replace(path)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def run_point(task: dict[str, Any]) -> dict[str, Any]:
    """Execute one point (``task``: notebook, profile, overrides, folder, id, threads) and write its folder:
    the executed notebook, ``results.json``, ``status.json`` (last, atomically: the resume marker) and, on
    failure, ``traceback.txt``. Never raises for a notebook error: returns ``{"id", "status", "error", ...}``."""
    folder = Path(task["folder"])
    folder.mkdir(parents=True, exist_ok=True)
    for stale in ("status.json", "traceback.txt", "results.json"):
        (folder / stale).unlink(missing_ok=True)
    _atomic_json(folder / "point.json", {**{k: task[k] for k in ("id", "notebook", "profile", "overrides")},
                                         "code_sha256": notebook_code_hash(task["notebook"])})
    t0 = time.time()
    status: dict[str, Any] = {"id": task["id"], "status": "ok", "error": "", "host": os.uname().nodename,
                              "pid": os.getpid(), "threads": task.get("threads"), "started": round(t0, 3)}
    try:
        with _pinned_threads(task.get("threads")), _output_to(folder / "kernel.log"):
            nb.run_notebook(task["notebook"], task["profile"], overrides=task["overrides"], output_dir=folder)
        if not (folder / "results.json").exists():
            raise RuntimeError("the notebook ran to the end without writing results.json (no run.save call?)")
    except Exception as e:  # a failing point is recorded, never raised: the other points go on
        tb = traceback.format_exc()
        cell_tb = "\n".join(getattr(e, "traceback", None) or [])
        if cell_tb:
            tb = f"{tb}\n--- cell traceback ---\n{_ANSI.sub('', cell_tb)}\n"
        (folder / "traceback.txt").write_text(tb)
        ename, evalue = getattr(e, "ename", type(e).__name__), getattr(e, "evalue", str(e))
        status.update(status="failed", error=f"{ename}: {evalue}".strip().splitlines()[0][:500])
    status["seconds"] = round(time.time() - t0, 2)
    _atomic_json(folder / "status.json", status)
    return status


def _worker_died(task: dict, exc: BaseException) -> dict:
    """Record a point whose worker process died (killed, out of memory, pool broken) as failed."""
    folder = Path(task["folder"])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "traceback.txt").write_text("".join(traceback.format_exception(exc)))
    status = {"id": task["id"], "status": "failed", "error": f"worker died: {type(exc).__name__}: {exc}"[:500],
              "host": None, "pid": None, "threads": task.get("threads"), "started": None, "seconds": None}
    _atomic_json(folder / "status.json", status)
    return status


def _finished(folder: Path) -> bool:
    st = folder / "status.json"
    if not st.exists() or not (folder / "results.json").exists():
        return False
    try:
        return json.loads(st.read_text()).get("status") == "ok"
    except json.JSONDecodeError:
        return False


# --------------------------------------------------------------------------------------------------
# Engines
# --------------------------------------------------------------------------------------------------

def _run_local(tasks: list[dict], jobs: int, progress: bool) -> list[dict]:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from tqdm.auto import tqdm

    out = []
    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
        futs = {pool.submit(run_point, t): t for t in tasks}
        try:
            for f in tqdm(as_completed(futs), total=len(futs), desc="sweep points", disable=not progress):
                try:
                    out.append(f.result())
                except Exception as e:  # the worker process died (BrokenProcessPool): the point is failed
                    out.append(_worker_died(futs[f], e))
        except KeyboardInterrupt:  # finished points are on disk; the next run resumes from them
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    return out


def _run_dask(tasks: list[dict], jobs: int, address: str | None, progress: bool) -> list[dict]:
    try:
        from distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise SweepError("engine 'dask' needs Dask distributed: pip install -e '.[dask]' "
                         "(or pip install 'distributed>=2024.8').") from None
    import logging

    from tqdm.auto import tqdm

    with contextlib.ExitStack() as stack:
        # Dask's nanny writes its pre-spawn environment (OMP_NUM_THREADS=1, ...) into *this* process's os.environ;
        # left there, every kernel started later by this process (nbval in `make test`, the next notebook run)
        # would run single-threaded. Restore it when the sweep ends.
        stack.enter_context(_restored_env(THREAD_ENV + ("MALLOC_TRIM_THRESHOLD_",)))
        if address:
            client = stack.enter_context(Client(address, timeout="30s"))
        else:
            cluster = stack.enter_context(LocalCluster(n_workers=jobs, threads_per_worker=1, processes=True,
                                                       host="127.0.0.1", dashboard_address=None,
                                                       silence_logs=logging.ERROR))
            client = stack.enter_context(Client(cluster))
        print(f"[sweep] dask scheduler {client.scheduler.address}, "
              f"{len(client.scheduler_info().get('workers', {}))} workers", file=sys.stderr)
        futs = client.map(run_point, tasks, key=[f"sweep-point-{t['id']}" for t in tasks], pure=False)
        by_key = {f.key: t for f, t in zip(futs, tasks)}
        out = []
        for f in tqdm(as_completed(futs), total=len(futs), desc="sweep points (dask)", disable=not progress):
            try:
                out.append(f.result())
            except Exception as e:  # KilledWorker and the like: the point is failed, the others go on
                out.append(_worker_died(by_key[f.key], e))
        return out


def run_sweep(spec: str | Path | dict | Sweep, *, jobs: int = 1, engine: str = "local", address: str | None = None,
              threads: int | None = None, root: str | Path | None = None, retry_failed: bool = True,
              limit: int | None = None, progress: bool = True, verbose: bool = True) -> SweepReport:
    """Run (or resume) a sweep and aggregate it. Points already finished (``status.json`` ok) are reused;
    failed ones are retried unless ``retry_failed=False``. ``limit`` runs only the first N points (the table
    then holds only those). ``progress``: a tqdm bar over points; ``verbose``: the ``[sweep]`` lines on stderr.
    Returns a :class:`SweepReport` whose ``table`` is also written to ``sweep.csv``."""
    say = (lambda msg: print(f"[sweep] {msg}", file=sys.stderr)) if verbose else (lambda msg: None)
    if engine not in ENGINES:
        raise SweepError(f"Unknown engine {engine!r}; choose one of {ENGINES}.")
    if not isinstance(jobs, int) or jobs < 1:
        raise SweepError(f"jobs must be a positive integer, got {jobs!r}.")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise SweepError(f"threads must be a positive integer or None (= cores // jobs), got {threads!r}.")
    sw = spec if isinstance(spec, Sweep) else load_sweep(spec)
    if limit:
        sw.points = sw.points[:limit]
    folder = sweep_dir(sw, root)
    folder.mkdir(parents=True, exist_ok=True)
    if sw.path:
        (folder / "sweep.yaml").write_text(sw.path.read_text())
    threads = threads or max(1, (os.cpu_count() or 1) // jobs)
    todo, skipped = [], []
    for p in sw.points:
        pf = folder / p.id
        if _finished(pf):
            skipped.append(p.id)
        elif not retry_failed and (pf / "status.json").exists():
            skipped.append(p.id)
        else:
            todo.append({"id": p.id, "notebook": sw.notebook, "profile": sw.profile, "overrides": p.overrides,
                         "folder": str(pf), "threads": threads})
    say(f"{sw.name}: {len(sw.points)} points, {len(skipped)} already done, {len(todo)} to run "
        f"(engine={engine}, jobs={jobs}, {threads} threads each) -> {nb.shown_path(folder)}")
    t0 = time.time()
    results = []

    def launch(tasks, n):
        return _run_local(tasks, n, progress) if engine == "local" else _run_dask(tasks, n, address, progress)

    if todo and sw.warmup and jobs > 1 and len(todo) > 1:
        say(f"warmup: point {todo[0]['id']} alone first (it fills the caches the other points share)")
        results = launch(todo[:1], 1) + launch(todo[1:], jobs)
    elif todo:
        results = launch(todo, jobs)
    rep = SweepReport(sweep=sw, folder=folder, table=None, ran=[r["id"] for r in results], skipped=skipped,
                      failed=[r["id"] for r in results if r["status"] != "ok"], wall_s=round(time.time() - t0, 2),
                      engine=engine, jobs=jobs)
    rep.table = aggregate(sw, root=root)
    _atomic_json(folder / "run.json", {"engine": engine, "jobs": jobs, "threads": threads, "wall_s": rep.wall_s,
                                       "ran": rep.ran, "skipped": rep.skipped, "failed": rep.failed,
                                       "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    say(rep.summary())
    for _, r in rep.table[rep.table.status != "ok"].drop_duplicates("point_id").iterrows():
        say(f"{r.status} point {r.point_id}: {r.error}")
    return rep


# --------------------------------------------------------------------------------------------------
# Aggregation and plotting
# --------------------------------------------------------------------------------------------------

def _cell(v: Any) -> Any:
    """Table cell for a parameter value: scalars as they are, lists as a comma-joined string."""
    if isinstance(v, (list, tuple)):
        return ", ".join(str(x) for x in v)
    return v


def aggregate(spec: str | Path | dict | Sweep, root: str | Path | None = None, *, write: bool = True):
    """One tidy row per point (per record when the sweep names ``records``): ``point_id``, ``status``
    (ok / failed / pending), ``error``, ``seconds``, the varied parameters, then every scalar metric of
    ``results.json`` (flattened with dots; a metric whose name clashes with a parameter gets ``metrics.``).
    Writes ``sweep.csv`` (+ ``sweep.parquet`` when pyarrow is installed) into the sweep folder."""
    import pandas as pd

    sw = spec if isinstance(spec, Sweep) else load_sweep(spec)
    folder = sweep_dir(sw, root)
    code = notebook_code_hash(sw.notebook)
    rows = []
    for p in sw.points:
        pf = folder / p.id
        base = {"point_id": p.id, "status": "pending", "error": "", "seconds": None, "code_changed": False,
                **{k: _cell(p.params.get(k)) for k in sw.varied}}
        if (pf / "point.json").exists():
            base["code_changed"] = json.loads((pf / "point.json").read_text()).get("code_sha256") != code
        st = pf / "status.json"
        if st.exists():
            s = json.loads(st.read_text())
            base.update(status=s.get("status", "failed"), error=s.get("error", ""), seconds=s.get("seconds"))
        if base["status"] == "ok" and not (pf / "results.json").exists():
            base.update(status="failed", error="status ok but results.json is missing")
        if base["status"] != "ok":
            rows.append(base)
            continue
        res = json.loads((pf / "results.json").read_text())
        metrics = res.get("metrics", {})
        flat = {(f"metrics.{k}" if k in base else k): v for k, v in nb._flatten(metrics).items()}
        if sw.records:
            recs = metrics.get(sw.records)
            if not isinstance(recs, list):
                base.update(status="failed", error=f"results.json has no list-of-records metric {sw.records!r}")
                rows.append(base)
                continue
            for r in recs:
                rows.append({**base, **{(f"record.{k}" if k in base else k): _cell(v) for k, v in r.items()}})
        else:
            rows.append({**base, **flat})
    table = pd.DataFrame(rows)
    if write:
        folder.mkdir(parents=True, exist_ok=True)
        table.to_csv(folder / "sweep.csv", index=False)
        try:
            import pyarrow  # noqa: F401

            table.astype({c: str for c in table.columns if table[c].dtype == object}).to_parquet(
                folder / "sweep.parquet", index=False)
        except ImportError:
            pass
    return table


def plot_sweep(sw: Sweep, table, **overrides):
    """The sweep file's figure (``plot: {x, y, hue, col, kind, title}``) of the ``ok`` rows, as a seaborn
    FacetGrid (``relplot`` for line/scatter, ``catplot`` for point/bar/box/strip). ``overrides`` replace keys
    of the plot section."""
    import seaborn as sns

    p = {**sw.plot, **overrides}
    if not p.get("x") or not p.get("y"):
        raise SweepError(f"sweep {sw.name} has no plot section; pass x= and y= (columns: {list(table.columns)}).")
    ok = table[table.status == "ok"].copy()
    if ok.empty:
        raise SweepError(f"sweep {sw.name}: no finished point to plot (statuses: {table.status.value_counts().to_dict()}).")
    missing = [p[r] for r in ("x", "y", "hue", "col") if p.get(r) and p[r] not in table.columns]
    if missing:
        raise SweepError(f"plot columns {missing} are not in the sweep table; columns: {list(table.columns)}.")
    kind = p.get("kind", "line")
    kw = {"x": p["x"], "y": p["y"], "hue": p.get("hue"), "col": p.get("col"), "height": 3.6, "aspect": 1.3}
    if p.get("hue"):
        ok[p["hue"]] = ok[p["hue"]].astype(str)
    if kind in ("line", "scatter"):
        g = sns.relplot(data=ok, kind=kind, **kw, **({"marker": "o"} if kind == "line" else {}))
    else:
        g = sns.catplot(data=ok, kind=kind, **kw)
    if p.get("logx"):
        g.set(xscale="log")
    if p.get("logy"):
        g.set(yscale="log")
    g.set_axis_labels(p.get("xlabel") or p["x"], p.get("ylabel") or p["y"])
    g.figure.suptitle(p.get("title") or f"{sw.name}: {p['y']} vs {p['x']}", y=1.03)
    return g


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m helpers sweep", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run (or resume) a sweep, then aggregate it into sweep.csv + sweep.png")
    r.add_argument("sweep")
    r.add_argument("--jobs", type=int, default=1, help="points run at once (pool workers / Dask workers)")
    r.add_argument("--engine", default="local", choices=ENGINES)
    r.add_argument("--address", help="a running Dask scheduler (tcp://host:8786); default: a LocalCluster")
    r.add_argument("--threads", type=int, help="threads per kernel (default: cores // jobs)")
    r.add_argument("--root", help="output root (default outputs/sweeps)")
    r.add_argument("--no-retry-failed", action="store_true", help="keep failed points as they are")
    r.add_argument("--limit", type=int, help="run only the first N points")
    v = sub.add_parser("validate", help="validate sweep files (default: every notebooks/sweeps/*.yaml)")
    v.add_argument("sweeps", nargs="*")
    a_ = sub.add_parser("aggregate", help="rebuild sweep.csv and sweep.png from the point folders")
    a_.add_argument("sweep")
    a_.add_argument("--root")
    s = sub.add_parser("status", help="list the points of a sweep and their status")
    s.add_argument("sweep")
    s.add_argument("--root")
    a = ap.parse_args(argv)
    try:
        if a.cmd == "validate":
            files = a.sweeps or sorted(str(p) for p in SWEEPS_DIR.glob("*.yaml"))
            for f in files:
                sw = load_sweep(f)
                print(f"ok  {f}: {Path(sw.notebook).stem} profile={sw.profile}, {len(sw.points)} points, "
                      f"varied {sw.varied}")
            return 0
        if a.cmd == "run":
            rep = run_sweep(a.sweep, jobs=a.jobs, engine=a.engine, address=a.address, threads=a.threads,
                            root=a.root, retry_failed=not a.no_retry_failed, limit=a.limit)
            sw, table = rep.sweep, rep.table
        else:
            sw = load_sweep(a.sweep)
            table = aggregate(sw, root=a.root, write=a.cmd == "aggregate")
            rep = None
        folder = sweep_dir(sw, getattr(a, "root", None))
        if a.cmd == "status":
            print(table[["point_id", "status", "error", "seconds", *sw.varied]].to_string(index=False))
            return 0
        if sw.plot and (table.status == "ok").any():
            import matplotlib

            matplotlib.use("Agg")
            plot_sweep(sw, table).savefig(folder / "sweep.png", dpi=110, bbox_inches="tight")
        print(table.drop(columns=[c for c in table.columns if c.startswith("timings")], errors="ignore")
              .to_string(index=False, max_colwidth=40, max_cols=12))
        print(f"wrote {folder / 'sweep.csv'}" + (f" and {folder / 'sweep.png'}" if sw.plot else ""))
        return 1 if rep and rep.failed else 0
    except (SweepError, nb.ParameterError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
