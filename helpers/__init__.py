"""usable-xai-notebooks: shared helpers for the notebooks (one module per concept)."""
from __future__ import annotations

from pathlib import Path

__version__ = "0.1.0"

#: Root of the project checkout (the folder holding ``helpers/``, ``notebooks/``, ``outputs/``).
PROJECT_ROOT = Path(__file__).resolve().parents[1]
