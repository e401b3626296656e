"""Notebook harness: parameter profiles, validation, papermill runs, ``results.json``, README tables.

Every notebook ``notebooks/NN_topic.ipynb`` has exactly one code cell tagged ``parameters`` made of plain
``name = literal`` assignments (the defaults, equal to the ``default`` profile). Profiles live in
``notebooks/params/<notebook>/{smoke,default,paper}.yaml`` and may only set names the parameters cell
declares, with values of the declared type; anything else fails *before* a kernel starts.

Inside a notebook, right after the parameters cell::

    run = nb.start("00_inside_a_language_model", globals())   # seeds, quiet HF bars, output folder
    ...
    with run.timer("capture"):
        ...
    run.savefig(fig, "logit_lens")                            # PNG into the output folder, also shown
    run.save(metrics={...}, provenance={...})                 # results.json beside the executed notebook

From the shell: ``python -m helpers notebook run 00_inside_a_language_model --profile smoke``.
"""
from __future__ import annotations

import ast
import contextlib
import difflib
import json
import os
import platform
import random
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from helpers import PROJECT_ROOT
from helpers.core import memo

__all__ = [
    "NOTEBOOKS_DIR",
    "OUTPUTS_DIR",
    "PARAMS_DIR",
    "PROFILES",
    "ParameterError",
    "Run",
    "cell_timeout",
    "load_profile",
    "notebook_profiles",
    "shown_path",
    "publish_profile_results",
    "load_results",
    "notebook_names",
    "notebook_parameters",
    "publish_notebook",
    "results_table",
    "run_notebook",
    "start",
    "validate_params",
]

NOTEBOOKS_DIR = PROJECT_ROOT / "notebooks"
PARAMS_DIR = NOTEBOOKS_DIR / "params"
OUTPUTS_DIR = PROJECT_ROOT / "outputs"
#: results.json of each published (default-profile) run, committed
RESULTS_DIR = NOTEBOOKS_DIR / "results"
PROFILES = ("smoke", "default", "paper")


class ParameterError(ValueError):
    """A profile or an override names an unknown parameter or gives it a value of the wrong type."""


# --------------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------------

def notebook_names() -> list[str]:
    """Notebook stems in ``notebooks/`` (``NN_topic``), sorted."""
    return sorted(p.stem for p in NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))


def shown_path(path: str | Path) -> Path:
    """``path`` relative to the project when it is inside it: logs and committed outputs carry no local paths."""
    path = Path(path)
    return path.relative_to(PROJECT_ROOT) if path.is_relative_to(PROJECT_ROOT) else path


def _notebook_path(notebook: str | Path) -> Path:
    p = Path(notebook)
    if p.suffix == ".ipynb" and p.exists():
        return p
    cand = NOTEBOOKS_DIR / f"{Path(notebook).stem}.ipynb"
    if not cand.exists():
        close = difflib.get_close_matches(str(notebook), notebook_names(), n=3, cutoff=0.3)
        raise FileNotFoundError(f"Unknown notebook {str(notebook)!r}. Known: {notebook_names()}"
                                + (f"; did you mean {close}?" if close else ""))
    return cand


def _parameters_cell(nb_path: Path) -> str:
    import nbformat

    nb = nbformat.read(nb_path, as_version=4)
    cells = [c for c in nb.cells if c.cell_type == "code" and "parameters" in c.metadata.get("tags", [])]
    if len(cells) != 1:
        raise ParameterError(f"{nb_path.name} has {len(cells)} cells tagged 'parameters'; papermill needs exactly one.")
    return cells[0].source


def notebook_parameters(notebook: str | Path) -> dict[str, Any]:
    """Declared parameters and their default values, read from the notebook's ``parameters`` cell."""
    src = _parameters_cell(_notebook_path(notebook))
    out: dict[str, Any] = {}
    for node in ast.parse(src).body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                if not isinstance(t, ast.Name):
                    raise ParameterError(f"parameters cell: only `name = literal` assignments are allowed ({ast.unparse(node)}).")
                try:
                    out[t.id] = ast.literal_eval(node.value)
                except ValueError:
                    raise ParameterError(f"parameters cell: {t.id} must be a literal, got {ast.unparse(node.value)}.") from None
        elif not isinstance(node, ast.Expr):  # docstrings / bare strings are fine
            raise ParameterError(f"parameters cell may only assign literals; found {ast.unparse(node)!r}.")
    return out


def _type_ok(default: Any, value: Any) -> bool:
    if default is None or value is None:
        return True  # None means "unset / optional": any type
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, (list, tuple)):
        return isinstance(value, (list, tuple))
    return isinstance(value, type(default))


def validate_params(notebook: str | Path, params: dict[str, Any], *, source: str = "parameters") -> dict[str, Any]:
    """Check ``params`` against the notebook's declared parameters; returns them (ints widened to float)."""
    declared = notebook_parameters(notebook)
    problems = []
    out = {}
    for k, v in params.items():
        if k not in declared:
            close = difflib.get_close_matches(k, list(declared), n=2)
            problems.append(f"unknown parameter {k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        elif not _type_ok(declared[k], v):
            problems.append(f"{k!r} must be {type(declared[k]).__name__} like the default {declared[k]!r}, "
                            f"got {type(v).__name__} {v!r}")
        else:
            out[k] = float(v) if isinstance(declared[k], float) and isinstance(v, int) else v
    if problems:
        raise ParameterError(f"{source} for {Path(str(notebook)).stem}: " + "; ".join(problems)
                             + f". Declared parameters: {sorted(declared)}.")
    return out


def _params_dir(nb_path: Path) -> Path:
    """Profiles sit in params/<stem>/ beside the notebook (notebooks/params/ for the collection's notebooks)."""
    return PARAMS_DIR if nb_path.parent.resolve() == NOTEBOOKS_DIR.resolve() else nb_path.parent / "params"


def notebook_profiles(notebook: str | Path) -> list[str]:
    """The profiles of ``notebook``: the required :data:`PROFILES` (an error names a missing one) followed by any
    extra ``<name>.yaml`` in its params folder (e.g. notebook 04's ``evidence``)."""
    nb_path = _notebook_path(notebook)
    stem = nb_path.stem
    folder = _params_dir(nb_path) / stem
    have = sorted(p.stem for p in folder.glob("*.yaml"))
    missing = [p for p in PROFILES if p not in have]
    if missing:
        raise FileNotFoundError(f"{stem}: profiles {missing} are missing in {folder} (every notebook needs "
                                f"{', '.join(PROFILES)}).")
    return [*PROFILES, *[p for p in have if p not in PROFILES]]


def load_profile(notebook: str | Path, profile: str) -> dict[str, Any]:
    """Read and validate ``notebooks/params/<notebook>/<profile>.yaml`` (``profile`` is also recorded)."""
    import yaml

    nb_path = _notebook_path(notebook)
    stem = nb_path.stem
    path = _params_dir(nb_path) / stem / f"{profile}.yaml"
    if not path.exists():
        have = sorted(p.stem for p in (_params_dir(nb_path) / stem).glob("*.yaml"))
        raise FileNotFoundError(f"No profile {profile!r} for {stem}: {path} is missing (profiles: {have}).")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ParameterError(f"{path} must be a mapping of parameter: value, got {type(data).__name__}.")
    data.setdefault("profile", profile)
    return validate_params(nb_path, data, source=str(shown_path(path)))


# --------------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------------

def cell_timeout(value: float | str | None = None) -> float | None:
    """Seconds one cell may run before papermill gives up: ``value``, else ``$XAI_CELL_TIMEOUT``, else None (no limit;
    the default, since a default-profile cell runs ~13 min on 2 cores). `make test` sets 1500 s so that a hung kernel
    (ipykernel 7 could drop an execute_request and leave papermill waiting forever) fails one test, not the whole CI."""
    raw = os.environ.get("XAI_CELL_TIMEOUT", "") if value is None else value
    if raw in ("", None):
        return None
    try:
        sec = float(raw)
    except (TypeError, ValueError):
        raise ValueError(f"cell timeout must be a number of seconds, got {raw!r} (check XAI_CELL_TIMEOUT).") from None
    if not sec > 0:
        raise ValueError(f"cell timeout must be > 0 seconds, got {sec} (unset XAI_CELL_TIMEOUT for no limit).")
    return sec


def run_notebook(notebook: str | Path, profile: str = "default", *, overrides: dict | None = None,
                 output_dir: str | Path | None = None, log_output: bool = False,
                 kernel_name: str | None = None, execution_timeout: float | None = None) -> Path:
    """Execute a notebook with a profile (+ overrides) through papermill; return the executed notebook's path.

    The executed notebook and everything the notebook writes go to ``output_dir`` (default
    ``outputs/<notebook>/``). Parameters are validated before any kernel starts. ``execution_timeout``: seconds per
    cell (see :func:`cell_timeout`).
    """
    import papermill as pm

    timeout = cell_timeout(execution_timeout)
    nb_path = _notebook_path(notebook)
    stem = nb_path.stem
    params = load_profile(nb_path, profile)
    params.update(validate_params(nb_path, overrides or {}, source="overrides"))
    out = Path(output_dir) if output_dir else OUTPUTS_DIR / stem
    out.mkdir(parents=True, exist_ok=True)
    params["output_dir"] = str(out.resolve())
    validate_params(nb_path, params)
    target = out / f"{stem}.ipynb"
    print(f"[notebook] {stem} profile={profile} -> {target}")
    t0 = time.time()
    for attempt in range(KERNEL_START_ATTEMPTS):
        try:
            pm.execute_notebook(str(nb_path), str(target), parameters=params, cwd=str(nb_path.parent),
                                log_output=log_output, progress_bar=False,
                                kernel_name=kernel_name or "python3", language="python",
                                execution_timeout=timeout)
            break
        except RuntimeError as e:  # the kernel died while starting, before any cell ran: start it again
            if not is_kernel_start_failure(e) or attempt == KERNEL_START_ATTEMPTS - 1:
                raise
            print(f"[notebook] {stem}: kernel failed to start ({e}); starting a new one "
                  f"(attempt {attempt + 2} of {KERNEL_START_ATTEMPTS})")
            time.sleep(1.0 + attempt)
    print(f"[notebook] {stem} done in {time.time() - t0:.0f} s")
    return target


# Kernels started at the same moment by separate processes (sweep workers) can race for the same free ports and
# one of them dies before it answers kernel_info (seen once in CI: 1 of 3 sweep points). Nothing of the notebook has
# run then, so starting a fresh kernel is safe; a kernel that dies later is a real failure and is not retried.
KERNEL_START_ATTEMPTS = 3
_KERNEL_START_ERRORS = ("Kernel died before replying to kernel_info", "Kernel didn't respond in")


def is_kernel_start_failure(exc: BaseException) -> bool:
    """True for nbclient's errors when a kernel dies or hangs while starting (before any cell executes)."""
    return isinstance(exc, RuntimeError) and any(m in str(exc) for m in _KERNEL_START_ERRORS)


def is_progress_bar(output) -> bool:
    """A tqdm bar in an executed cell's outputs: a text stream with ``12%|###  | 3/25``, or a widget view whose
    plain-text form is not a widget class repr (an ipywidgets view reads ``VBox(children=...)``; tqdm's notebook bar
    reads ``capture layers: 40%|...`` and may be cut before the percentage)."""
    data = output.get("data", {})
    text = output.get("text", "") + str(data.get("text/plain", ""))
    if "application/vnd.jupyter.widget-view+json" in data:
        return not re.match(r"^[A-Z][A-Za-z]*\(", str(data.get("text/plain", "")))
    return bool(re.search(r"\d+%\|", text))


def publish_notebook(notebook: str | Path) -> Path:
    """Copy ``outputs/<nb>/<nb>.ipynb`` (a default-profile run) over ``notebooks/<nb>.ipynb`` for committing.

    The papermill ``injected-parameters`` cell is dropped: the default profile equals the parameters cell, which
    is checked here, so the committed notebook reads the same in JupyterLab and under nbval.
    """
    import nbformat

    stem = _notebook_path(notebook).stem
    executed = OUTPUTS_DIR / stem / f"{stem}.ipynb"
    nb = nbformat.read(executed, as_version=4)
    params = nb.metadata.get("papermill", {}).get("parameters", {})
    declared = notebook_parameters(stem)
    diff = {k: v for k, v in params.items() if k not in ("output_dir",) and declared.get(k) != v}
    if diff:
        raise ParameterError(f"{executed} was not run with the defaults of the parameters cell (differs: {diff}); "
                             f"run `make run-{stem}` first.")
    nb.cells = [c for c in nb.cells if "injected-parameters" not in c.metadata.get("tags", [])]
    nb.metadata.pop("papermill", None)
    for c in nb.cells:
        c.metadata.pop("papermill", None)
        c.metadata.pop("execution", None)
        if c.cell_type == "code":  # a committed notebook carries no frozen progress bars (they show live only)
            c.outputs = [o for o in c.outputs if not is_progress_bar(o)]
    nbformat.write(nb, NOTEBOOKS_DIR / f"{stem}.ipynb")
    # the published run's results.json is committed beside the notebook: tests/notebooks/test_results.py checks
    # the claims' expected values against it, and a fresh run against those values
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(OUTPUTS_DIR / stem / "results.json", RESULTS_DIR / f"{stem}.json")
    return NOTEBOOKS_DIR / f"{stem}.ipynb"


def publish_profile_results(notebook: str | Path, profile: str, run_dir: str | Path) -> Path:
    """Commit the ``results.json`` of a non-default profile run (e.g. notebook 04's ``evidence``) as
    ``notebooks/results/<nb>.<profile>.json``, for a notebook section that reads it. Response texts
    (``EssayText`` in ``predictions``) are dropped: the committed copy keeps the response Ids, which join with the
    data mirror, and no dataset text."""
    stem = _notebook_path(notebook).stem
    src = Path(run_dir) / "results.json"
    if not src.exists():
        raise FileNotFoundError(f"{src} not found: run `python -m helpers notebook run {stem} --profile {profile} "
                                f"--output-dir {run_dir}` first.")
    res = json.loads(src.read_text())
    if res.get("profile") != profile:
        raise ParameterError(f"{src} is a {res.get('profile')!r} run, not {profile!r}.")
    for rows in (res.get("predictions") or {}).values():
        for row in rows:
            row.pop("EssayText", None)
    if "predictions" in res:
        res["predictions_note"] = "EssayText dropped from the committed copy: join on Id with the data mirror"
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    dest = RESULTS_DIR / f"{stem}.{profile}.json"
    dest.write_text(json.dumps(res, indent=1, allow_nan=True))
    return dest


# --------------------------------------------------------------------------------------------------
# Inside a notebook
# --------------------------------------------------------------------------------------------------

def set_seed(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def quiet_hf() -> None:
    """Silence Hugging Face progress bars and chatter (they would make executed outputs noisy)."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        from transformers.utils import logging as tlog

        tlog.set_verbosity_error()
        tlog.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass
    import warnings

    warnings.filterwarnings("ignore", message=".*attention mask.*")


def environment() -> dict[str, Any]:
    import torch

    env = {"python": platform.python_version(), "platform": platform.platform(), "torch": torch.__version__,
           "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
           # fp32 kernels dispatch by CPU (MKL / oneDNN), so numbers differ in the last bits between CPUs
           "cpu_capability": torch.backends.cpu.get_cpu_capability(),
           "mkl_instructions": os.environ.get("MKL_ENABLE_INSTRUCTIONS", ""),
           "git_commit": _git_commit()}
    from importlib import metadata

    for dist in ("transformers", "numpy", "pandas", "scikit-learn", "scipy", "sae-lens", "peft", "sentence-transformers",
                 "eai-sparsify", "xllamacpp", "openai", "gepa"):
        try:
            env[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return env


def _git_commit() -> str:
    """The checkout's commit (``+dirty`` when tracked files differ from it); "" outside a git checkout."""
    import subprocess

    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return head + ("+dirty" if head and dirty else "")


def _jsonable(x: Any) -> Any:
    import numpy as np

    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if hasattr(x, "tolist") and hasattr(x, "dtype"):  # torch tensors
        return x.tolist()
    if hasattr(x, "to_dict") and hasattr(x, "columns"):  # pandas DataFrame
        return _jsonable(x.to_dict(orient="records"))
    return x


@dataclass
class Run:
    """One execution of a notebook: its parameters, output folder, timings, and ``results.json``."""

    notebook: str
    params: dict[str, Any]
    output_dir: Path
    timings: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.time)

    @contextlib.contextmanager
    def timer(self, name: str):
        t0 = time.time()
        try:
            yield
        finally:
            self.timings[name] = round(self.timings.get(name, 0.0) + time.time() - t0, 2)

    def path(self, name: str) -> Path:
        return self.output_dir / name

    def savefig(self, fig, name: str, dpi: int = 110) -> None:
        """Save a matplotlib/seaborn figure as ``<output_dir>/figures/<name>.png`` (it is still shown inline);
        ``None`` (a plot replaced by a sentence, e.g. all-constant data) is skipped. Returns nothing, so that a cell
        ending in ``run.savefig(...)`` shows the figure and not a machine-specific path (the file is
        :meth:`figure_path`)."""
        if fig is None:
            return
        p = self.figure_path(name)
        p.parent.mkdir(parents=True, exist_ok=True)
        fig = getattr(fig, "figure", fig)
        fig.savefig(p, dpi=dpi, bbox_inches="tight")

    def figure_path(self, name: str) -> Path:
        """Where :meth:`savefig` writes the figure ``name``."""
        return self.output_dir / "figures" / f"{name}.png"

    def save(self, metrics: dict[str, Any], provenance: dict[str, Any] | None = None,
             **extra: Any) -> Path:
        """Write ``results.json`` (parameters, provenance, metrics, timings, environment)."""
        res = {"notebook": self.notebook, "profile": self.params.get("profile"), "parameters": self.params,
               "provenance": provenance or {}, "metrics": metrics, **extra,
               "timings": {**self.timings, "total": round(time.time() - self.started, 2)},
               "environment": environment(), "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        p = self.output_dir / "results.json"
        tmp = p.with_suffix(".tmp")
        tmp.write_text(json.dumps(_jsonable(res), indent=1, allow_nan=True))
        tmp.replace(p)
        return p


def start(notebook: str, namespace: dict[str, Any]) -> Run:
    """Begin a notebook run: collect and validate its parameters from ``namespace`` (the notebook's globals),
    seed everything with ``seed``, silence HF bars and make the output folder."""
    declared = notebook_parameters(notebook)
    missing = [k for k in declared if k not in namespace]
    if missing:
        raise ParameterError(f"run the parameters cell first: {missing} are not defined.")
    params = validate_params(notebook, {k: namespace[k] for k in declared})
    out = Path(params.get("output_dir") or OUTPUTS_DIR / notebook)
    out.mkdir(parents=True, exist_ok=True)
    quiet_hf()
    set_seed(int(params.get("seed", 0)))
    memo.enable()  # expensive measurements are cached by everything they depend on (helpers.core.memo)
    try:
        import seaborn as sns

        sns.set_theme(context="notebook", style="whitegrid")
    except ImportError:  # pragma: no cover
        pass
    print(f"{notebook}: profile={params.get('profile')!r}, outputs -> {shown_path(out)}")
    return Run(notebook=notebook, params=params, output_dir=out)


# --------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------

def load_results(notebook_or_path: str | Path) -> dict[str, Any]:
    """``results.json`` of a notebook (``outputs/<nb>/results.json``) or of a given folder/file."""
    p = Path(notebook_or_path)
    if p.is_dir():
        p = p / "results.json"
    elif not p.suffix:
        p = OUTPUTS_DIR / str(notebook_or_path) / "results.json"
    if not p.exists():
        raise FileNotFoundError(f"{p} not found: run the notebook first (`make run-{Path(str(notebook_or_path)).stem}`).")
    return json.loads(p.read_text())


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        elif not isinstance(v, list):
            out[key] = v
    return out


def results_table(notebooks: list[str] | None = None, digits: int = 3) -> str:
    """A markdown table of every scalar metric in ``outputs/*/results.json`` (for the README)."""
    rows = []
    for nb in notebooks or notebook_names():
        try:
            res = load_results(nb)
        except FileNotFoundError:
            continue
        for k, v in _flatten(res.get("metrics", {})).items():
            if isinstance(v, float):
                v = round(v, digits)
            rows.append(f"| {nb} | {res.get('profile')} | `{k}` | {v} |")
    return "\n".join(["| notebook | profile | metric | value |", "|---|---|---|---|", *rows])


#: The metrics the README shows per notebook (prefixes of flattened metric keys); every number in the README
#: comes from these results files through ``python -m helpers notebook readme``.
README_METRICS = {
    "00_inside_a_language_model": ["capture.tokens_per_s", "logit_lens.", "probe.acc_full", "probe.acc_pca2",
                                   "probe.acc_shuffled"],
    "01_sparse_autoencoders": ["trainer", "variance_explained", "l0", "dead_fraction", "dense_fraction", "ce_", "n_heldout_tokens",
                               *[f"detection_minus_control.{e}.{f}" for e in ("LLM", "offline label", "offline tokens")
                                 for f in ("estimate", "low", "high")], "llm_explanations."],
    "02_reasoning_features": ["n_tokens_corpus", "n_selected", "groups.", "median_norm", "sink_norm", "sink_top_feature"],
    "03_steering_refinement": ["layer", "median_norm", "rsv_alpha.", "curve_cost_ratio."],
    "04_scoring_skills": ["model", "diagnoser", "accepted_edits", "paired."],
    "05_sweeps": ["n_points", "n_ok", "n_failed", "y_by_point."],
}
#: Record lists in results.json shown as condition x metric tables of means (with CIs); a tuple names the fields
#: (list key, row field, column field, value field) of other record layouts.
README_TABLES = {"02_reasoning_features": [("contrast", "gamma", "measure", "selected_minus_random"),
                                           ("contrast_non_reasoning", "gamma", "measure", "selected_minus_non-reasoning"),
                                           "generation"],
                 "03_steering_refinement": ["readme_gain"],
                 "04_scoring_skills": ["summary"]}


def readme_results(digits: int = 3) -> str:
    """The README's results section: the ``README_METRICS`` of every ``outputs/*/results.json``, with run times."""
    parts = []
    for nb in notebook_names():
        try:
            res = load_results(nb)
        except FileNotFoundError:
            continue
        flat = _flatten(res.get("metrics", {}))
        keys = [k for k in flat if any(k.startswith(p) for p in README_METRICS.get(nb, [""]))]
        rows = [f"| `{k}` | {round(flat[k], digits) if isinstance(flat[k], float) else flat[k]} |" for k in keys]
        for spec in README_TABLES.get(nb, []):
            tkey, cf, mf, vf = (spec, "condition", "metric", "mean") if isinstance(spec, str) else spec
            recs = res["metrics"].get(tkey, [])
            metrics = list(dict.fromkeys(r[mf] for r in recs))
            conds = list(dict.fromkeys(r[cf] for r in recs))
            cell = {(r[cf], r[mf]): f"{r[vf]:.2f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}]" for r in recs}
            rows.append(f"\n`{tkey}` ({vf} [95% bootstrap CI]):\n\n| {cf} | " + " | ".join(metrics) + " |\n|---|"
                        + "---|" * len(metrics) + "\n" + "\n".join(f"| {c} | " + " | ".join(cell.get((c, m), "") for m in metrics)
                                                              + " |" for c in conds))
        parts.append(f"**{nb}** (profile `{res.get('profile')}`, {res['timings'].get('total', 0):.0f} s on "
                     f"{res['environment'].get('cpu_count')} cores)\n\n| metric | value |\n|---|---|\n" + "\n".join(rows))
    bench = OUTPUTS_DIR / "bench"
    for f in sorted(bench.glob("*.json")) if bench.exists() else []:
        flat = _flatten(json.loads(f.read_text()))
        keys = [k for k in flat if not k.startswith("machine.") or "gflops" in k]
        keys = [k for k in keys if isinstance(flat[k], (int, float)) and not isinstance(flat[k], bool)]
        rows = [f"| `{k}` | {round(flat[k], digits) if isinstance(flat[k], float) else flat[k]} |" for k in keys]
        parts.append(f"**benchmark `{f.stem}`** (`make bench`, `outputs/bench/{f.name}`)\n\n| measure | value |\n"
                     "|---|---|\n" + "\n".join(rows))
    return "\n\n".join(parts)


def write_readme(path: Path | None = None) -> None:
    """Replace the text between ``<!-- results:start -->`` and ``<!-- results:end -->`` in the README."""
    path = path or PROJECT_ROOT / "README.md"
    text = path.read_text()
    a, b = "<!-- results:start -->", "<!-- results:end -->"
    if a not in text or b not in text:
        raise ValueError(f"{path} lacks the {a} / {b} markers")
    head, rest = text.split(a, 1)
    _, tail = rest.split(b, 1)
    path.write_text(f"{head}{a}\n{readme_results()}\n{b}{tail}")


def _parse_set(items: list[str]) -> dict[str, Any]:
    import yaml

    out = {}
    for it in items:
        if "=" not in it:
            raise ParameterError(f"--set takes name=value, got {it!r}")
        k, v = it.split("=", 1)
        out[k] = yaml.safe_load(v)
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m helpers notebook", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="execute a notebook with a profile through papermill")
    r.add_argument("notebook")
    r.add_argument("--profile", default="default",
                   help=f"a profile in notebooks/params/<notebook>/ (every notebook has {', '.join(PROFILES)}; "
                        f"some have more, e.g. 04's evidence)")
    r.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE", help="override parameters (YAML values)")
    r.add_argument("--output-dir")
    r.add_argument("--log-output", action="store_true")
    sub.add_parser("validate", help="validate every profile of every notebook")
    sub.add_parser("table", help="print every scalar metric of outputs/*/results.json")
    sub.add_parser("readme", help="rewrite the README's results section from outputs/*/results.json")
    p = sub.add_parser("publish", help="copy an executed default run over the committed notebook")
    p.add_argument("notebook")
    pr = sub.add_parser("publish-results", help="commit a non-default profile's results.json (e.g. 04's evidence)")
    pr.add_argument("notebook")
    pr.add_argument("--profile", required=True)
    pr.add_argument("--from", dest="run_dir", required=True, help="the run's output folder")
    sub.add_parser("list", help="list notebooks")
    a = ap.parse_args(argv)
    try:
        if a.cmd == "run":
            run_notebook(a.notebook, a.profile, overrides=_parse_set(a.set), output_dir=a.output_dir,
                         log_output=a.log_output)
        elif a.cmd == "validate":
            for nb in notebook_names():
                profs = notebook_profiles(nb)
                for prof in profs:
                    load_profile(nb, prof)
                print(f"ok  {nb}: {', '.join(profs)}")
        elif a.cmd == "table":
            print(results_table())
        elif a.cmd == "readme":
            write_readme()
            print(readme_results())
        elif a.cmd == "publish":
            print(publish_notebook(a.notebook))
        elif a.cmd == "publish-results":
            print(publish_profile_results(a.notebook, a.profile, a.run_dir))
        elif a.cmd == "list":
            print("\n".join(notebook_names()))
    except (ParameterError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
