"""Where the collection keeps what it computes once: a torch-free module (the harness imports it at start-up)."""
from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["cache_dir", "cache_lock"]


def cache_dir() -> Path:
    """Where dequantized weights and other expensive artefacts live: ``$XAI_CACHE`` or ``~/.cache/usable-xai``."""
    d = Path(os.environ.get("XAI_CACHE") or Path.home() / ".cache" / "usable-xai")
    d.mkdir(parents=True, exist_ok=True)
    return d


@contextlib.contextmanager
def cache_lock(name: str) -> Iterator[None]:
    """Hold an exclusive inter-process lock named ``name`` (``$XAI_CACHE/locks/<name>.lock``, ``fcntl.flock``).

    Around the creation of a shared cache entry (a dequantized model, an assembled GGUF, a trained SAE): when two
    processes need the same missing entry at once (``make test``'s parallel lanes, a sweep with ``jobs=2``), the
    second waits for the first instead of computing it again into the same temporary folder; it must check for
    the entry again once it holds the lock. The lock dies with its holder, so a killed run never leaves it stuck.
    Without ``fcntl`` (Windows) it is a no-op."""
    if not isinstance(name, str) or not name or "/" in name:
        raise ValueError(f"cache_lock name must be a non-empty string without '/', got {name!r}.")
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on Linux/macOS
        yield
        return
    path = cache_dir() / "locks" / f"{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            t0 = time.time()
            print(f"[cache] waiting for another process to finish {name} ...", flush=True)
            fcntl.flock(f, fcntl.LOCK_EX)
            print(f"[cache] {name} ready after {time.time() - t0:.0f} s", flush=True)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
