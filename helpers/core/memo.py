"""Results cache keyed by everything a computation depends on: nothing computed is lost between runs.

The expensive measurements of the studies (teacher-forced dose-responses, batched generations, LoRA-SFT fits,
perplexities, the reasoning study's clamping curves and corpus capture, study 2's concept activations) are
decorated with :func:`cached`. While the cache is on
(:func:`enable`; every notebook run turns it on in ``helpers.harness.notebook.start``; unit tests leave it off),
a call whose key is on disk returns the stored result instead of recomputing it, so a re-run of a notebook with
the same parameters (``make test`` re-executing the committed notebooks, a sweep re-visiting a point, a reader
re-running a cell) costs seconds, and a changed parameter recomputes only what it touches.

The key hashes (sha256):

* the function's qualified name and its arguments, bound to the signature with defaults applied: tensors and
  arrays by dtype, shape and bytes; modules (the model, an SAE) by class, provenance, parameter shapes, a strided
  sample of their weights (every value for modules under 20M parameters) and the number of hooks attached;
  tokenizers by name, vocabulary size and chat template; dataclasses by their fields;
* the source the function can run (:func:`tree_hash`): ``helpers/core`` and ``helpers/registry`` (data files such
  as lexicons and dataset pins included) for every function, plus its own study package for a function of
  ``helpers/studies/<study>`` (studies import only core and the registry; ``tests/test_layering.py`` enforces it).
  Editing a helper recomputes what could depend on it, and editing study 3 leaves studies 1 and 2's entries valid;
* what makes fp32 numbers differ between machines: torch and transformers versions, the CPU capability
  (``torch.backends.cpu.get_cpu_capability()``), ``MKL_ENABLE_INSTRUCTIONS`` / ``ATEN_CPU_CAPABILITY`` and the
  number of threads. A run on another CPU never reads this machine's results.

A cached function leaves the global random number generators as it found them, computed or read (a read
could not replay their use). An argument the key cannot describe (a lambda, an open file) makes the call run uncached (counted in
:func:`stats`), never guessed. Entries live in ``$XAI_CACHE/results/<function>/<key>.pkl``; ``XAI_RESULT_CACHE=0``
turns the cache off everywhere, ``XAI_RESULT_CACHE=1`` turns it on outside notebooks too.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import inspect
import os
import pickle
import random
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .paths import cache_dir

__all__ = ["Unhashable", "cached", "enable", "enabled", "key_of", "stats", "tree_hash"]

_STATE = {"on": os.environ.get("XAI_RESULT_CACHE", "") == "1"}
_STATS: Counter = Counter()
_FULL_HASH_PARAMS = 20_000_000  # modules up to this size are hashed in full; larger ones by a strided sample
_STRIDE = 997
_VOLATILE = {"load_seconds"}  # provenance fields that differ between loads of the same weights (never in a key)


class Unhashable(TypeError):
    """An argument the results cache cannot describe by value (the call then runs uncached)."""


def enable(on: bool = True) -> None:
    """Turn the results cache on (or off) for this process; ``XAI_RESULT_CACHE=0`` in the environment wins."""
    _STATE["on"] = bool(on) and os.environ.get("XAI_RESULT_CACHE", "") != "0"


def enabled() -> bool:
    return _STATE["on"]


def stats() -> dict[str, int]:
    """Counts of ``hit``, ``miss`` (computed and stored) and ``uncached`` (an argument without a key) calls."""
    return dict(_STATS)


@functools.cache
def tree_hash(root: str) -> str:
    """sha256 over the ``.py``, ``.yaml`` and ``.txt`` files under ``root`` (by relative path): a code version."""
    base = Path(root)
    h = hashlib.sha256()
    for f in sorted(p for p in base.rglob("*") if p.suffix in (".py", ".yaml", ".txt") and "__pycache__" not in p.parts):
        h.update(str(f.relative_to(base)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _code_version(module: str | None = None) -> str:
    """The source a function of ``module`` can run: core + registry, plus its study package for
    ``helpers.studies.<study>...``; any other module (or None) gets all of ``helpers/studies`` (the safe side)."""
    helpers_dir = Path(__file__).resolve().parents[1]
    parts = (module or "").split(".")
    version = tree_hash(str(helpers_dir / "core")) + tree_hash(str(helpers_dir / "registry"))
    if parts[:2] == ["helpers", "core"]:
        return version
    if parts[:2] == ["helpers", "studies"] and len(parts) > 2 and (helpers_dir / "studies" / parts[2]).is_dir():
        return version + tree_hash(str(helpers_dir / "studies" / parts[2]))
    return version + tree_hash(str(helpers_dir / "studies"))


def _environment() -> dict:
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "cpu": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
            "mkl": os.environ.get("MKL_ENABLE_INSTRUCTIONS", ""), "aten": os.environ.get("ATEN_CPU_CAPABILITY", "")}


def _tensor_digest(t, h) -> None:
    import torch

    t = t.detach().cpu().contiguous()
    h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.view(torch.uint8).numpy().tobytes() if t.dtype == torch.bfloat16 else t.numpy().tobytes())


def _module_digest(m, h) -> None:
    params = list(m.state_dict().items())
    n = sum(p.numel() for _, p in params)
    hooks = sum(len(x._forward_hooks) + len(x._forward_pre_hooks) for x in m.modules())
    prov = {k: v for k, v in sorted(getattr(m, "xai_provenance", {}).items()) if k not in _VOLATILE}
    h.update(f"M{type(m).__qualname__}|{prov}|{n}|hooks={hooks}".encode())
    for name, p in params:
        h.update(name.encode())
        flat = p.detach().reshape(-1)
        _tensor_digest(flat if n <= _FULL_HASH_PARAMS else flat[::_STRIDE], h)


def _digest(x: Any, h, depth: int = 0) -> None:
    import numpy as np
    import torch

    if depth > 12:
        raise Unhashable("nesting deeper than 12 levels")
    if x is None or isinstance(x, (bool, int, float, str, bytes)):
        h.update(f"{type(x).__name__}:{x!r}".encode())
    elif isinstance(x, torch.Tensor):
        _tensor_digest(x, h)
    elif isinstance(x, np.ndarray):
        _tensor_digest(torch.from_numpy(np.ascontiguousarray(x)), h)
    elif isinstance(x, (np.integer, np.floating, np.bool_)):
        h.update(f"np:{x.item()!r}".encode())
    elif isinstance(x, torch.nn.Module):
        _module_digest(x, h)
    elif isinstance(x, (list, tuple)):
        h.update(f"{type(x).__name__}[{len(x)}]".encode())
        for v in x:
            _digest(v, h, depth + 1)
    elif isinstance(x, (set, frozenset)):
        _digest(sorted(x, key=repr), h, depth + 1)
    elif isinstance(x, dict):
        h.update(f"dict[{len(x)}]".encode())
        for k, v in x.items():  # insertion order matters: callers iterate over it
            _digest(k, h, depth + 1)
            _digest(v, h, depth + 1)
    elif dataclasses.is_dataclass(x) and not isinstance(x, type):
        h.update(f"D{type(x).__qualname__}".encode())
        for f in dataclasses.fields(x):
            _digest(f.name, h, depth + 1)
            _digest(getattr(x, f.name), h, depth + 1)
    elif hasattr(x, "get_vocab") and hasattr(x, "name_or_path"):  # a tokenizer
        h.update(f"tok:{type(x).__qualname__}|{x.name_or_path}|{len(x)}|{getattr(x, 'chat_template', '')}|"
                 f"{x.padding_side}|{x.pad_token_id}|{x.eos_token_id}".encode())
    else:
        raise Unhashable(f"cannot key an argument of type {type(x).__qualname__}")


@contextlib.contextmanager
def _rng_neutral():
    """Leave the global RNGs (torch, numpy, random) as they were before the block."""
    import numpy as np
    import torch

    states = torch.get_rng_state(), np.random.get_state(), random.getstate()
    try:
        yield
    finally:
        torch.set_rng_state(states[0])
        np.random.set_state(states[1])
        random.setstate(states[2])


def key_of(name: str, arguments: dict, module: str | None = None) -> str:
    """The cache key of a call of ``name`` (defined in ``module``) with bound ``arguments`` (raises
    :class:`Unhashable`)."""
    h = hashlib.sha256()
    _digest({"function": name, "code": _code_version(module), "env": _environment()}, h)
    _digest(arguments, h)
    return h.hexdigest()[:32]


def cached(name: str, *, ignore: Sequence[str] = ()) -> Callable:
    """Decorator: cache the function's result under ``name`` while the cache is on (see the module docstring).
    ``ignore``: arguments that do not change the result (e.g. ``progress``)."""

    def wrap(fn: Callable) -> Callable:
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def inner(*args, **kwargs):
            if not _STATE["on"]:
                return fn(*args, **kwargs)
            bound = sig.bind(*args, **kwargs)
            bound.apply_defaults()
            try:
                key = key_of(name, {k: v for k, v in bound.arguments.items() if k not in ignore}, fn.__module__)
            except Unhashable:
                _STATS["uncached"] += 1
                return fn(*args, **kwargs)
            path = cache_dir() / "results" / name / f"{key}.pkl"
            if path.exists():
                try:
                    with open(path, "rb") as f:
                        out = pickle.load(f)
                    _STATS["hit"] += 1
                    return out
                except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError):
                    path.unlink(missing_ok=True)  # a torn or stale entry: recompute it
            with _rng_neutral():  # a hit consumes no random numbers, so a computed call must not either
                out = fn(*args, **kwargs)
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=path.parent, delete=False, suffix=".tmp") as f:
                pickle.dump(out, f, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(f.name, path)
            _STATS["miss"] += 1
            return out

        inner.uncached = fn
        return inner

    return wrap
