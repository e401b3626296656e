"""LLM calls behind one interface, cached on disk: any OpenAI-compatible HTTP server, or a local transformers model.

Two backends share the interface ``model_id``, ``complete(messages, temperature=, max_tokens=)`` and
``complete_many(batch, ...)``:

* ``OpenAIChat`` wraps the official ``openai`` client (vLLM, Ollama, llama.cpp server, OpenAI) with a timeout,
  retries with exponential back-off (the client's own) and a thread pool for batches (``concurrency``).
* ``LocalChat`` runs a transformers model (the embedded GGUF models of :mod:`helpers.core.models`, a local
  checkpoint): batched greedy generation, and **constrained next-token likelihood** over a fixed set of labels
  (``label_distribution``) in one forward pass per response, with the shared prompt prefix's KV cache computed
  once and reused across every response of a batch.

Every call is cached on disk keyed by ``(backend/model, messages or prompt, decoding parameters)``: re-running a
notebook, or resuming an interrupted job, costs nothing already paid. Failures are raised as ``LLMError`` with
what was tried (``complete_many(..., return_errors=True)`` returns them in place instead); callers that score or
label count them instead of dropping them.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .llama_server import shared_server
from .models import cache_dir as _default_cache_dir
from .models import load_model, provenance
from .text import chat_prompt

__all__ = ["ChatBackend", "LLMError", "LocalChat", "OpenAIChat", "make_backend"]


class LLMError(RuntimeError):
    """The endpoint did not give a usable answer (after retries)."""


class ChatBackend(Protocol):
    """What scoring code needs from a backend (both classes below satisfy it)."""

    model_id: str
    stats: dict[str, int]

    def complete(self, messages: list[dict] | str, *, temperature: float = 0.0, max_tokens: int = 256,
                 **params: Any) -> str: ...

    def complete_many(self, batch: list[list[dict] | str], *, temperature: float = 0.0, max_tokens: int = 256,
                      return_errors: bool = False, **params: Any) -> list[str | LLMError]: ...


def _as_messages(messages: list[dict] | str) -> list[dict]:
    if isinstance(messages, str):
        return [{"role": "user", "content": messages}]
    if not isinstance(messages, list) or not all(isinstance(m, dict) and "role" in m and "content" in m
                                                 for m in messages):
        raise TypeError(f"messages must be a string or a list of {{'role', 'content'}} dicts, got {messages!r:.200}")
    return messages


class _DiskCache:
    """JSON files ``<dir>/<h[:2]>/<h>.json`` keyed by the sha256 of a canonical JSON of the key; atomic writes."""

    def __init__(self, directory: Path, enabled: bool = True):
        self.dir, self.enabled = Path(directory), enabled

    def path(self, key: dict) -> Path:
        h = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
        return self.dir / h[:2] / f"{h}.json"

    def get(self, key: dict) -> Any | None:
        p = self.path(key)
        if not (self.enabled and p.exists()):
            return None
        try:
            return json.loads(p.read_text())["value"]
        except (json.JSONDecodeError, KeyError):  # a torn file from a killed run: recompute
            return None

    def put(self, key: dict, value: Any) -> None:
        if not self.enabled:
            return
        p = self.path(key)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps({"key": key, "value": value}))
        tmp.replace(p)


@dataclass
class OpenAIChat:
    """Chat completions from an OpenAI-compatible endpoint, cached on disk; batches run on a thread pool."""

    model: str
    base_url: str | None = None  # None: the OpenAI API (OPENAI_BASE_URL / OPENAI_API_KEY from the environment)
    api_key: str | None = None
    timeout: float = 60.0
    max_retries: int = 3
    cache: bool = True
    cache_dir: Path = field(default_factory=lambda: _default_cache_dir() / "llm")
    concurrency: int = 4
    stats: dict[str, int] = field(default_factory=lambda: {"calls": 0, "cached": 0, "errors": 0})

    def __post_init__(self):
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}.")
        self._lock = threading.Lock()
        self._client_obj = None

    @property
    def model_id(self) -> str:
        return f"openai:{self.base_url or 'api.openai.com'}:{self.model}"

    def _client(self):
        with self._lock:
            if self._client_obj is None:
                from openai import OpenAI

                self._client_obj = OpenAI(base_url=self.base_url,
                                          api_key=self.api_key or os.environ.get("OPENAI_API_KEY") or "not-needed",
                                          timeout=self.timeout, max_retries=self.max_retries)
            return self._client_obj

    def _key(self, messages: list[dict], params: dict[str, Any]) -> Path:
        return _DiskCache(self.cache_dir).path(self._keydict(messages, params))

    def _keydict(self, messages, params):
        url = getattr(self, "cache_key_url", None) or self.base_url
        return {"base_url": url, "model": self.model, "messages": messages, "params": params}

    def _count(self, what: str) -> None:
        with self._lock:
            self.stats[what] += 1

    def complete(self, messages: list[dict] | str, *, temperature: float = 0.0, max_tokens: int = 256,
                 **params: Any) -> str:
        """The assistant's reply text for ``messages`` (a string is one user turn)."""
        messages = _as_messages(messages)
        params = {"temperature": temperature, "max_tokens": max_tokens, **params}
        cache = _DiskCache(self.cache_dir, self.cache)
        key = self._keydict(messages, params)
        path = cache.path(key)
        if self.cache and path.exists():
            data = json.loads(path.read_text())
            if "content" in data or "value" in data:
                self._count("cached")
                return data.get("content", data.get("value"))
        self._count("calls")
        try:
            resp = self._client().chat.completions.create(model=self.model, messages=messages, **params)
            content = resp.choices[0].message.content
        except Exception as e:  # openai raises its own error types; malformed JSON surfaces as other errors
            self._count("errors")
            raise LLMError(f"{self.base_url or 'OpenAI API'} model {self.model!r}: {type(e).__name__}: {str(e)[:300]}. "
                           f"Check the server is up and the model id is right.") from e
        if content is None:
            self._count("errors")
            raise LLMError(f"{self.base_url}: the reply had no text content.")
        if self.cache:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
            tmp.write_text(json.dumps({"messages": messages, "params": params, "content": content}))
            tmp.replace(path)
        return content

    def complete_many(self, batch: list[list[dict] | str], *, temperature: float = 0.0, max_tokens: int = 256,
                      return_errors: bool = False, progress: bool = False, **params: Any) -> list[str | LLMError]:
        """``complete`` for every element, ``concurrency`` requests in flight; order kept. With
        ``return_errors`` a failed element is its ``LLMError`` (counted in ``stats``) instead of raising."""

        def one(m):
            try:
                return self.complete(m, temperature=temperature, max_tokens=max_tokens, **params)
            except LLMError as e:
                if return_errors:
                    return e
                raise

        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            it = pool.map(one, batch)
            if progress:
                from tqdm.auto import tqdm

                it = tqdm(it, total=len(batch), desc=f"{self.model} x{self.concurrency}")
            return list(it)


    # ---------------------------------------------------------------------------------------- likelihood
    def label_distribution(self, prefix: str, suffixes: list[str], labels: list[str], *, system: str | None = None,
                           answer_prefix: str = "", top_logprobs: int = 20,
                           progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Constrained next-token likelihood through the endpoint's log-probabilities (llama.cpp, vLLM and OpenAI
        return the ``top_logprobs`` most likely first tokens): for each ``suffix`` the distribution over
        ``labels`` of the first reply token to the user turn ``prefix + suffix`` (``answer_prefix`` is sent as
        an assistant prefill, which llama.cpp continues).

        Same return as :meth:`LocalChat.label_distribution`: ``(probs, mass)``. A label token may be spelled
        with a leading space; such spellings are summed. A label outside the returned top-k gets the smallest
        returned log-probability (an upper bound), counted in ``stats["labels_outside_topk"]``. Prefix caching is
        the server's (llama.cpp ``cache_prompt``); every answer is cached on disk here.
        """
        labels = [str(x) for x in labels]
        if len(set(labels)) != len(labels) or not labels:
            raise ValueError(f"labels must be distinct and non-empty, got {labels}.")
        if not 1 <= int(top_logprobs) <= 20:
            raise ValueError(f"top_logprobs must be in 1..20 (the OpenAI API's limit), got {top_logprobs}.")
        self.stats.setdefault("labels_outside_topk", 0)
        msgs = [([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prefix + s}]
                + ([{"role": "assistant", "content": answer_prefix}] if answer_prefix else []) for s in suffixes]
        cache = _DiskCache(self.cache_dir, self.cache)

        def one(m):
            key = {**self._keydict(m, {"max_tokens": 1, "temperature": 0.0, "top_logprobs": int(top_logprobs)}),
                   "kind": "label_distribution", "labels": labels}
            hit = cache.get(key)
            if hit is not None:
                self._count("cached")
                return hit
            self._count("calls")
            try:
                resp = self._client().chat.completions.create(model=self.model, messages=m, max_tokens=1,
                                                              temperature=0.0, logprobs=True,
                                                              top_logprobs=int(top_logprobs))
                top = resp.choices[0].logprobs.content[0].top_logprobs
            except Exception as e:
                self._count("errors")
                raise LLMError(f"{self.base_url or 'OpenAI API'} model {self.model!r}: no log-probabilities "
                               f"({type(e).__name__}: {str(e)[:300]}); the endpoint must support logprobs.") from e
            found: dict[str, float] = {}
            for t in top:
                lab = t.token.strip()
                if lab in labels:
                    found[lab] = float(np.logaddexp(found.get(lab, -np.inf), t.logprob))
            floor = min(t.logprob for t in top)
            missing = [lab for lab in labels if lab not in found]
            lp = np.array([found.get(lab, floor) for lab in labels])
            value = {"logprobs": lp.tolist(), "missing": len(missing)}
            cache.put(key, value)
            return value

        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            it = pool.map(one, msgs)
            if progress:
                from tqdm.auto import tqdm

                it = tqdm(it, total=len(msgs), desc=f"score ({self.model})")
            got = list(it)
        lp = np.array([g["logprobs"] for g in got]).reshape(len(suffixes), len(labels))
        self.stats["labels_outside_topk"] += int(sum(g["missing"] for g in got))
        probs = np.exp(lp - lp.max(1, keepdims=True))
        probs /= probs.sum(1, keepdims=True)
        return probs, np.exp(lp).sum(1).clip(max=1.0)


class LocalChat:
    """A local transformers model behind the same interface, plus constrained label likelihoods.

    ``model`` is an embedded name (``helpers.core.models.EMBEDDED``) or a local checkpoint directory, or a
    ``(model, tokenizer)`` pair already loaded. Greedy decoding only for ``temperature == 0``; with
    ``temperature > 0`` it samples with ``seed`` (part of the cache key).
    """

    def __init__(self, model: str | tuple, *, dtype: str = "float32", device: str = "cpu", batch_size: int = 8,
                 cache: bool = True, cache_dir: Path | None = None):
        if isinstance(model, tuple):
            self.model, self.tokenizer = model
        else:
            self.model, self.tokenizer = load_model(model, dtype=dtype, device=device)
        prov = provenance(self.model)
        tag = prov.get("sha256") or prov.get("revision") or ",".join(prov.get("files", [])) or ""
        self.model_id = f"local:{prov.get('name')}:{str(tag)[:16]}:{prov.get('dtype', dtype)}"
        self.provenance = prov
        self.batch_size = int(batch_size)
        self.cache = _DiskCache(cache_dir or (_default_cache_dir() / "llm-local"), cache)
        self.stats = {"calls": 0, "cached": 0, "errors": 0, "tokens_generated": 0, "forward_tokens": 0}
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    # ---------------------------------------------------------------------------------------- generation
    def _render(self, messages: list[dict]) -> str:
        return chat_prompt(self.tokenizer, messages)

    def complete(self, messages: list[dict] | str, *, temperature: float = 0.0, max_tokens: int = 256,
                 **params: Any) -> str:
        return self.complete_many([messages], temperature=temperature, max_tokens=max_tokens, **params)[0]

    def complete_many(self, batch: list[list[dict] | str], *, temperature: float = 0.0, max_tokens: int = 256,
                      return_errors: bool = False, progress: bool = False, seed: int = 0,
                      **params: Any) -> list[str | LLMError]:
        """Replies for every element: cached ones from disk, the rest generated ``batch_size`` at a time (left
        padding, one ``generate`` call per batch)."""
        import torch

        if params:
            raise TypeError(f"LocalChat does not support the decoding parameters {sorted(params)}; "
                            f"use temperature, max_tokens, seed.")
        msgs = [_as_messages(m) for m in batch]
        dec = {"temperature": float(temperature), "max_tokens": int(max_tokens)}
        if temperature > 0:
            dec["seed"] = int(seed)
        keys = [{"model": self.model_id, "messages": m, "params": dec} for m in msgs]
        out: list[str | LLMError | None] = [self.cache.get(k) for k in keys]
        self.stats["cached"] += sum(o is not None for o in out)
        todo = [i for i, o in enumerate(out) if o is None]
        tok = self.tokenizer
        chunks = [todo[i:i + self.batch_size] for i in range(0, len(todo), self.batch_size)]
        if progress and chunks:
            from tqdm.auto import tqdm

            chunks = tqdm(chunks, desc=f"generate ({self.provenance.get('name')})")
        for chunk in chunks:
            texts = [self._render(msgs[i]) for i in chunk]
            old_side = tok.padding_side
            tok.padding_side = "left"
            enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.model.device)
            tok.padding_side = old_side
            gen = {"do_sample": temperature > 0}
            if temperature > 0:
                torch.manual_seed(int(seed))
                gen["temperature"] = float(temperature)
            with torch.inference_mode():
                ids = self.model.generate(**enc, max_new_tokens=int(max_tokens), pad_token_id=tok.pad_token_id, **gen)
            new = ids[:, enc["input_ids"].shape[1]:]
            for i, row in zip(chunk, new):
                text = tok.decode(row, skip_special_tokens=True).strip()
                self.stats["calls"] += 1
                self.stats["tokens_generated"] += int((row != tok.pad_token_id).sum())
                self.cache.put(keys[i], text)
                out[i] = text
        return out  # type: ignore[return-value]

    # ---------------------------------------------------------------------------------------- likelihood
    def _label_ids(self, labels: list[str]) -> list[int]:
        ids = []
        for lab in labels:
            t = self.tokenizer.encode(str(lab), add_special_tokens=False)
            if len(t) != 1:
                raise ValueError(f"label {lab!r} is {len(t)} tokens for this tokenizer; constrained likelihood "
                                 f"needs single-token labels (e.g. the digits 0-9).")
            ids.append(t[0])
        if len(set(ids)) != len(ids):
            raise ValueError(f"labels {labels} map to repeated token ids {ids}.")
        return ids

    def _base_model(self):
        base = getattr(self.model, getattr(self.model, "base_model_prefix", "model"), None)
        if base is None or self.model.get_output_embeddings() is None:
            raise TypeError(f"{type(self.model).__name__}: label_distribution needs a causal LM with a base model "
                            f"and an output embedding (LM head).")
        return base

    def split_prompt(self, prefix: str, suffix: str, *, system: str | None = None,
                     answer_prefix: str = "") -> tuple[str, str]:
        """The chat-rendered prompt for the user turn ``prefix + suffix`` (then ``answer_prefix`` after the
        assistant header), cut into the part shared by every suffix and the per-suffix rest."""
        marker = "\u2063\u2063XAI-SPLIT\u2063\u2063"
        msgs = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": prefix + marker + suffix}]
        text = self._render(msgs) + answer_prefix
        if text.count(marker) != 1:
            raise RuntimeError("the chat template altered the split marker; cannot share the prompt prefix.")
        a, b = text.split(marker)
        return a, b

    def label_distribution(self, prefix: str, suffixes: list[str], labels: list[str], *, system: str | None = None,
                           answer_prefix: str = "", reuse_prefix: bool = True,
                           progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Constrained next-token likelihood: for each ``suffix``, the distribution over ``labels`` (single
        tokens) of the token after the prompt ``prefix + suffix`` (user turn) + ``answer_prefix``.

        Returns ``(probs, mass)``: ``probs[i]`` is the softmax of the label logits (sums to 1), ``mass[i]`` the
        share of the full next-token distribution that falls on the labels (how well the model kept to the
        format). The prefix's KV cache is computed once and reused for all suffixes (``reuse_prefix=False``
        runs every full prompt from scratch: the reference the cached path is tested against). Cached on disk
        per suffix.
        """
        import torch

        lab_ids = self._label_ids(labels)
        tok = self.tokenizer
        shared, _ = self.split_prompt(prefix, "", system=system, answer_prefix=answer_prefix)
        pre_ids = tok(shared, return_tensors="pt", add_special_tokens=False).input_ids.to(self.model.device)
        keys, rest = [], []
        for s in suffixes:
            a, b = self.split_prompt(prefix, s, system=system, answer_prefix=answer_prefix)
            assert a == shared
            rest.append(tok(b, add_special_tokens=False).input_ids)
            keys.append({"model": self.model_id, "kind": "label_distribution", "prefix": shared, "suffix": b,
                         "labels": list(map(str, labels))})
        probs = np.zeros((len(suffixes), len(labels)))
        mass = np.zeros(len(suffixes))
        todo = []
        for i, k in enumerate(keys):
            hit = self.cache.get(k) if reuse_prefix else None
            if hit is None:
                todo.append(i)
            else:
                probs[i], mass[i] = hit["probs"], hit["mass"]
                self.stats["cached"] += 1
        if not todo:
            return probs, mass
        chunks = [todo[i:i + self.batch_size] for i in range(0, len(todo), self.batch_size)]
        if progress:
            from tqdm.auto import tqdm

            chunks = tqdm(chunks, desc=f"score ({self.provenance.get('name')})")
        pad = tok.pad_token_id
        with torch.inference_mode():
            base = self._base_model()
            prefix_cache = base(pre_ids, use_cache=True).past_key_values if reuse_prefix else None
            self.stats["forward_tokens"] += pre_ids.shape[1] if reuse_prefix else 0
            for chunk in chunks:
                seqs = [rest[i] if reuse_prefix else pre_ids[0].tolist() + rest[i] for i in chunk]
                L = max(map(len, seqs))
                x = torch.full((len(seqs), L), pad, dtype=torch.long)
                for r, s in enumerate(seqs):  # right padding: real tokens never attend to the pads after them
                    x[r, :len(s)] = torch.tensor(s)
                x = x.to(self.model.device)
                if reuse_prefix:
                    past = copy.deepcopy(prefix_cache)
                    past.batch_repeat_interleave(len(seqs))
                    attn = torch.ones((len(seqs), pre_ids.shape[1] + L), dtype=torch.long, device=x.device)
                    hidden = base(x, past_key_values=past, attention_mask=attn, use_cache=True).last_hidden_state
                else:
                    hidden = base(x, attention_mask=torch.ones_like(x)).last_hidden_state
                self.stats["forward_tokens"] += int(sum(map(len, seqs)))
                last = torch.tensor([len(s) - 1 for s in seqs], device=x.device)
                # the LM head only at each row's last real position (a 150k-token vocabulary at every position
                # would cost more than the transformer blocks)
                logits = self.model.get_output_embeddings()(hidden[torch.arange(len(seqs)), last])
                lp = torch.log_softmax(logits.float(), dim=-1)
                sel = lp[:, lab_ids]
                for r, i in enumerate(chunk):
                    p = torch.softmax(sel[r], -1).cpu().numpy().astype(float)
                    m = float(sel[r].exp().sum())
                    probs[i], mass[i] = p, m
                    self.stats["calls"] += 1
                    if reuse_prefix:
                        self.cache.put(keys[i], {"probs": p.tolist(), "mass": m})
        return probs, mass


def make_backend(model: str, *, base_url: str | None = None, api_key: str | None = None, dtype: str = "float32",
                 device: str = "cpu", batch_size: int = 8, concurrency: int = 4, timeout: float = 120.0,
                 max_retries: int = 3, cache: bool = True, engine: str = "transformers",
                 threads: int | None = None) -> LocalChat | OpenAIChat:
    """The chat backend for ``model``.

    * ``base_url`` given: an ``OpenAIChat`` for ``model`` (the endpoint's model id: vLLM, OpenAI, any server);
    * ``engine="llama.cpp"``: the embedded GGUF ``model`` (or a ``.gguf`` path) served by llama.cpp
      (:func:`helpers.core.llama_server.shared_server`, one server per process, ``concurrency`` slots) and an
      ``OpenAIChat`` on it: the same client code as a remote endpoint, ~10x transformers' generation speed on CPU;
    * ``engine="transformers"``: a ``LocalChat`` loading ``model`` (embedded name or checkpoint directory).
    """
    if engine not in ("transformers", "llama.cpp"):
        raise ValueError(f"engine must be 'transformers' or 'llama.cpp', got {engine!r}.")
    if base_url:
        return OpenAIChat(model=model, base_url=base_url, api_key=api_key, timeout=timeout,
                          max_retries=max_retries, cache=cache, concurrency=concurrency)
    if engine == "llama.cpp":
        srv = shared_server(model, threads=threads, parallel=concurrency)
        # the cache key holds base_url (a random port): key the local server by the model file instead
        chat = OpenAIChat(model=srv.model_alias, base_url=srv.base_url, timeout=max(timeout, 600.0),
                          max_retries=max_retries, cache=cache, concurrency=concurrency)
        chat.cache_key_url = f"llama.cpp:{srv.gguf.name}"
        return chat
    return LocalChat(model, dtype=dtype, device=device, batch_size=batch_size, cache=cache)
