"""Artifacts that one notebook produces and another consumes, resolved in one place.

``helpers/registry/artifacts.yaml`` names each artifact (e.g. ``01-default``: notebook 01's SAE under its
``default`` profile). :func:`resolve_sae` turns a consumer's ``sae_source`` parameter into an SAE: a registered
artifact is rebuilt from its producer's parameters (the notebook's parameter cell plus the profile file), loaded
from the cache keyed by that configuration, or trained there first; anything else is a folder or a
``<release>/<sae_id>`` of SAELens' registry. The result says which producer and profile it used and whether it
trained the SAE, so a consumer notebook can print it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from helpers import registry
from helpers.core import activations as A
from helpers.core import sae as sae_lib

from . import notebook as nb

__all__ = ["ResolvedSAE", "producer_config", "resolve_sae"]


@dataclass
class ResolvedSAE:
    """An SAE ready for a consumer notebook, with where it came from."""

    sae: Any
    layer: int
    source: str  # the name the consumer passed
    producer: str | None = None  # notebook that defines it (registered artifacts)
    profile: str | None = None
    trained: bool = False  # trained in this call (it was not cached)
    folder: str | None = None
    store: Any = field(default=None, repr=False)  # the producer's activation cache (its training corpus), if kept

    def describe(self) -> str:
        if self.producer:
            how = "trained it now (it was not cached)" if self.trained else "loaded it from the cache"
            return (f"SAE {self.source!r}: notebook {self.producer}'s {self.profile!r} profile, block {self.layer}; "
                    f"{how}")
        return f"SAE {self.source!r} (block {self.layer}), loaded from a folder or SAELens' registry"

    def provenance(self) -> dict:
        return {"source": self.source, "producer": self.producer, "profile": self.profile, "trained": self.trained,
                "layer": self.layer, "folder": self.folder}


def producer_config(name: str) -> sae_lib.SAETrainConfig:
    """The training configuration of the registered SAE artifact ``name`` (its producer's parameters)."""
    art = registry.artifact(name)
    if art.kind != "sae":
        raise ValueError(f"artifact {name!r} is a {art.kind!r}, not an SAE.")
    params = {**nb.notebook_parameters(art.producer), **nb.load_profile(art.producer, art.profile)}
    return sae_lib.config_from_params(params)


def resolve_sae(sae_source: str, model=None, tokenizer=None, *, progress: bool = True,
                verbose: bool = True) -> ResolvedSAE:
    """The SAE named by ``sae_source``: a registered artifact (``helpers/registry/artifacts.yaml``, e.g.
    ``"01-default"``), a local SAELens folder, or ``<release>/<sae_id>``. Prints where it came from."""
    if not isinstance(sae_source, str) or not sae_source:
        raise TypeError(f"sae_source must be an artifact name, folder or release/id string, got {sae_source!r}.")
    if sae_source in registry.entries("artifacts"):
        art = registry.artifact(sae_source)
        cfg = producer_config(sae_source)
        trained = not (cfg.folder() / "training.json").exists()
        sae, info = sae_lib.train_sae(cfg, model, tokenizer, progress=progress)
        store_dir = Path(info.get("activation_store", ""))
        store = A.ActivationStore(store_dir) if (store_dir / "meta.json").exists() else None
        out = ResolvedSAE(sae, cfg.layer, sae_source, art.producer, art.profile, trained, str(cfg.folder()), store)
    elif sae_source[:3] in {f"{k[:2]}-" for k in registry.entries("artifacts")} and not Path(sae_source).exists():
        raise registry.UnknownEntryError(f"{sae_source!r} looks like a notebook artifact but is not registered; "
                                         f"registered: {sorted(registry.entries('artifacts'))} "
                                         f"(helpers/registry/artifacts.yaml).")
    else:
        sae = sae_lib.load_sae(sae_source)
        out = ResolvedSAE(sae, sae_lib.hook_layer(sae), sae_source, folder=sae_source)
    if verbose:
        print(out.describe())
    return out
