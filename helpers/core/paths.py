"""Where the collection keeps what it computes once: a torch-free module (the harness imports it at start-up)."""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir"]


def cache_dir() -> Path:
    """Where dequantized weights and other expensive artefacts live: ``$XAI_CACHE`` or ``~/.cache/usable-xai``."""
    d = Path(os.environ.get("XAI_CACHE") or Path.home() / ".cache" / "usable-xai")
    d.mkdir(parents=True, exist_ok=True)
    return d
