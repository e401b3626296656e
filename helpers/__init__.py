"""usable-xai-notebooks: the toolkit behind the notebooks.

* ``helpers.core``: the shared toolkit (models, activations, SAEs, features, steering, judges, LLM clients, stats,
  text, plots, widgets, data).
* ``helpers.registry``: registries as data (datasets, models, concepts, artifacts) and one typed loader.
* ``helpers.studies``: one package per study (``reasoning``, ``steering_refinement``, ``scoring``).
* ``helpers.harness``: notebooks, sweeps, data fetch/verify, shared artifacts, the command line.

Layers: core imports neither studies nor harness; a study imports only core and registry.
"""
from __future__ import annotations

from pathlib import Path

__version__ = "0.1.0"

#: Root of the project checkout (the folder holding ``helpers/``, ``notebooks/``, ``outputs/``).
PROJECT_ROOT = Path(__file__).resolve().parents[1]
