"""Residual-stream hooks in one place: capture (in memory or streamed to disk) and intervention.

Conventions (the same everywhere in the collection):

* ``layer`` ``l`` in ``0 .. n_layers-1`` names the residual stream **after** decoder block ``l``
  (TransformerLens' ``blocks.{l}.hook_resid_post``; Hugging Face's ``hidden_states[l + 1]``, except for the
  last block, whose HF hidden state has the final norm applied while ours is the raw block output).
* Captured activations are float32 on the CPU, one ``(T_i, d_model)`` tensor per text, padding removed,
  aligned with ``tokens[i]`` (the token strings).
* ``capture`` stops the forward pass right after the last requested layer: no compute is spent on layers
  nobody reads (the unembedding of a 49k vocabulary included).
* ``intervene`` / ``add_vector`` are the single intervention mechanism: a forward hook on a decoder block that
  edits its output at positions ``>= min_token_index``; the same hook acts in plain forward passes and inside
  ``model.generate`` (positions come from the ``position_ids`` the model passes to each block, so left padding
  and the KV cache are handled).
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

__all__ = [
    "Activations",
    "ActivationStore",
    "CachedSuffixForward",
    "add_vector",
    "capture",
    "capture_to_disk",
    "d_model",
    "get_layers",
    "intervene",
    "logit_lens",
    "n_layers",
]


def get_layers(model) -> nn.ModuleList:
    """The list of decoder blocks of a causal LM (Llama/Qwen/Gemma/Mistral/GPT-2/NeoX layouts)."""
    for path in ("model.layers", "model.language_model.layers", "transformer.h", "gpt_neox.layers", "layers"):
        obj = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList):
            return obj
    raise ValueError(f"Cannot find the decoder blocks of {type(model).__name__}; expected e.g. model.model.layers.")


def n_layers(model) -> int:
    return len(get_layers(model))


def d_model(model) -> int:
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return int(cfg.hidden_size)


def _check_layers(model, layers: int | Sequence[int]) -> list[int]:
    layers = [layers] if isinstance(layers, int) else list(layers)
    n = n_layers(model)
    bad = [l for l in layers if not (-n <= l < n)]
    if bad or not layers:
        raise ValueError(f"layers {bad or layers} out of range: this model has {n} blocks (0..{n - 1}).")
    return sorted({l % n for l in layers})


class _StopForward(Exception):
    pass


def _output_tensor(output):
    return output[0] if isinstance(output, tuple) else output


@dataclass
class Activations:
    """Token-level residual activations for a list of texts (padding removed)."""

    texts: list[str]
    layers: list[int]
    token_ids: list[torch.Tensor]
    tokens: list[list[str]]
    acts: dict[int, list[torch.Tensor]] = field(repr=False)

    def stacked(self, layer: int) -> torch.Tensor:
        """All tokens of all texts, ``(sum T_i, d)``."""
        return torch.cat(self.acts[layer], dim=0)

    def mean(self, layer: int, skip_first: int = 0) -> torch.Tensor:
        """Per-text mean over tokens (optionally skipping the first tokens, e.g. BOS/attention sinks), ``(n, d)``."""
        return torch.stack([a[skip_first:].mean(0) if len(a) > skip_first else a.mean(0) for a in self.acts[layer]])

    def last(self, layer: int) -> torch.Tensor:
        """The last token of each text, ``(n, d)``."""
        return torch.stack([a[-1] for a in self.acts[layer]])

    @property
    def n_tokens(self) -> int:
        return int(sum(len(t) for t in self.token_ids))


def _batches(n: int, batch_size: int) -> Iterator[range]:
    for start in range(0, n, batch_size):
        yield range(start, min(start + batch_size, n))


def _forward_capture(model, enc: dict, layers: list[int], stop_early: bool) -> dict[int, torch.Tensor]:
    blocks = get_layers(model)
    out: dict[int, torch.Tensor] = {}
    last = max(layers)

    def make_hook(l):
        def hook(module, args, output):
            out[l] = _output_tensor(output).detach().float().cpu()
            if stop_early and l == last:
                raise _StopForward

        return hook

    _forward_with_hooks(model, enc, [blocks[l].register_forward_hook(make_hook(l)) for l in layers])
    return out


def _forward_with_hooks(model, enc: dict, handles: list) -> None:
    """One forward pass (no grad, no KV cache) that a hook may cut short with ``_StopForward``; the hooks are
    removed afterwards whatever happens."""
    try:
        with torch.inference_mode():
            model(**enc, use_cache=False)
    except _StopForward:
        pass
    finally:
        for h in handles:
            h.remove()


def _tokenize(tokenizer, texts: Sequence[str], max_length: int, add_special_tokens: bool, device):
    side = tokenizer.padding_side
    tokenizer.padding_side = "right"
    try:
        enc = tokenizer(list(texts), return_tensors="pt", padding=True, truncation=True, max_length=max_length,
                        add_special_tokens=add_special_tokens)
    finally:
        tokenizer.padding_side = side
    return {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}


def capture(model, tokenizer, texts: Sequence[str], layers: int | Sequence[int], *, batch_size: int = 16,
            max_length: int = 256, add_special_tokens: bool = True, stop_early: bool = True,
            progress: bool = True) -> Activations:
    """Residual stream after the given blocks for each text (see module doc for conventions).

    Texts are sorted by length inside the call so batches carry little padding; results come back in input order.
    """
    from tqdm.auto import tqdm

    if isinstance(texts, str):
        raise TypeError("capture() takes a list of texts, not a single string: wrap it as [text].")
    layers = _check_layers(model, layers)
    texts = list(texts)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    acts = {l: [None] * len(texts) for l in layers}
    ids_out: list = [None] * len(texts)
    for idx in tqdm(list(_batches(len(order), batch_size)), desc=f"capture layers {layers}", disable=not progress):
        batch = [order[i] for i in idx]
        enc = _tokenize(tokenizer, [texts[i] for i in batch], max_length, add_special_tokens, model.device)
        out = _forward_capture(model, enc, layers, stop_early)
        lengths = enc["attention_mask"].sum(1).tolist()
        for row, i in enumerate(batch):
            n = int(lengths[row])
            ids_out[i] = enc["input_ids"][row, :n].cpu()
            for l in layers:
                acts[l][i] = out[l][row, :n].clone()
    tokens = [tokenizer.convert_ids_to_tokens(t.tolist()) for t in ids_out]
    return Activations(texts=texts, layers=layers, token_ids=ids_out, tokens=tokens, acts=acts)


def logit_lens(model, hidden: torch.Tensor, *, apply_norm: bool = True) -> torch.Tensor:
    """Read residual vectors through the model's final norm and unembedding: ``(..., d) -> (..., vocab)`` logits."""
    try:
        norm = _final_norm(model)
    except TypeError:
        norm = None
    head = model.get_output_embeddings()
    p = next(head.parameters())
    with torch.inference_mode():
        h = hidden.to(device=p.device, dtype=p.dtype)
        if apply_norm and norm is not None:
            h = norm(h)
        logits = head(h)
        softcap = getattr(getattr(model.config, "get_text_config", lambda: model.config)(),
                          "final_logit_softcapping", None)
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
    return logits.float().cpu()


# --------------------------------------------------------------------------------------------------
# Streaming to disk (corpora larger than RAM)
# --------------------------------------------------------------------------------------------------

class ActivationStore:
    """Token activations written by :func:`capture_to_disk`: safetensors shards plus ``meta.json``.

    Each shard holds ``layer_<l>`` ``(n, d)`` tensors, ``token_ids``, ``doc_index`` and ``position`` (all ``(n,)``).
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        meta_file = self.root / "meta.json"
        if not meta_file.exists():
            raise FileNotFoundError(f"{meta_file} not found: run capture_to_disk(...) into {self.root} first.")
        self.meta = json.loads(meta_file.read_text())
        if not self.meta.get("complete"):
            raise RuntimeError(f"{self.root} holds an interrupted capture; run capture_to_disk again to resume it.")

    @property
    def layers(self) -> list[int]:
        return list(self.meta["layers"])

    def __len__(self) -> int:
        return int(self.meta["n_tokens"])

    def shards(self) -> list[Path]:
        return [self.root / s for s in self.meta["shards"]]

    def load_shard(self, i: int) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        return load_file(self.shards()[i])

    def load_all(self, layer: int | None = None, dtype=torch.float32) -> torch.Tensor:
        """All token activations of one layer as one ``(n_tokens, d)`` tensor (fits RAM by assumption)."""
        layer = self.layers[0] if layer is None else layer
        return torch.cat([self.load_shard(i)[f"layer_{layer}"].to(dtype) for i in range(len(self.shards()))])

    def load_field(self, name: str) -> torch.Tensor:
        return torch.cat([self.load_shard(i)[name] for i in range(len(self.shards()))])

    def iter_batches(self, batch_size: int, *, layer: int | None = None, shuffle: bool = True, seed: int = 0,
                     dtype=torch.float32) -> Iterator[torch.Tensor]:
        """Mini-batches of token activations, shard by shard (shard order and rows shuffled with ``seed``)."""
        layer = self.layers[0] if layer is None else layer
        g = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(self.shards()), generator=g).tolist() if shuffle else range(len(self.shards()))
        for i in order:
            x = self.load_shard(i)[f"layer_{layer}"].to(dtype)
            idx = torch.randperm(len(x), generator=g) if shuffle else torch.arange(len(x))
            for s in range(0, len(x), batch_size):
                yield x[idx[s:s + batch_size]]


def capture_to_disk(model, tokenizer, texts: Sequence[str], layers: int | Sequence[int], root: str | Path, *,
                    texts_per_shard: int = 256, batch_size: int = 16, max_length: int = 256,
                    add_special_tokens: bool = True, store_dtype=torch.float16, progress: bool = True,
                    extra_meta: dict | None = None) -> ActivationStore:
    """Capture like :func:`capture` but write shards of ``texts_per_shard`` texts to ``root``.

    Resumable: shards already on disk (same texts, same settings) are kept, so a killed run continues where it
    stopped. ``store_dtype`` float16 halves the disk/RAM footprint (residual values are O(1-100); fp16 keeps
    3 significant digits); pass float32 for exact values.
    """
    import hashlib

    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    layers = _check_layers(model, layers)
    texts = list(texts)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(json.dumps([texts, layers, max_length, add_special_tokens, str(store_dtype)]).encode())
    settings = {"layers": layers, "max_length": max_length, "add_special_tokens": add_special_tokens,
                "store_dtype": str(store_dtype).replace("torch.", ""), "texts_per_shard": texts_per_shard,
                "n_texts": len(texts), "content_sha256": key.hexdigest(), **(extra_meta or {})}
    meta_file = root / "meta.json"
    if meta_file.exists():
        old = json.loads(meta_file.read_text())
        if {k: old.get(k) for k in settings} != settings:
            raise ValueError(f"{root} already holds a capture with other settings/texts; use another folder "
                             f"or delete it. Old: { {k: old.get(k) for k in settings} }")
        if old.get("complete"):
            return ActivationStore(root)
    n_shards = math.ceil(len(texts) / texts_per_shard)
    names, n_tokens = [], 0
    meta_file.write_text(json.dumps({**settings, "complete": False}, indent=1))
    for s in tqdm(range(n_shards), desc=f"capture to {root.name}", disable=not progress):
        name = f"shard_{s:05d}.safetensors"
        names.append(name)
        path = root / name
        if path.exists():
            from safetensors import safe_open

            with safe_open(path, "pt") as f:
                n_tokens += f.get_slice("token_ids").get_shape()[0]
            continue
        lo = s * texts_per_shard
        chunk = texts[lo:lo + texts_per_shard]
        a = capture(model, tokenizer, chunk, layers, batch_size=batch_size, max_length=max_length,
                    add_special_tokens=add_special_tokens, progress=False)
        tensors = {f"layer_{l}": a.stacked(l).to(store_dtype).contiguous() for l in layers}
        tensors["token_ids"] = torch.cat(a.token_ids).long()
        tensors["doc_index"] = torch.cat([torch.full((len(t),), lo + i, dtype=torch.long)
                                          for i, t in enumerate(a.token_ids)])
        tensors["position"] = torch.cat([torch.arange(len(t)) for t in a.token_ids]).long()
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        save_file(tensors, tmp)
        tmp.replace(path)
        n_tokens += len(tensors["token_ids"])
    meta_file.write_text(json.dumps({**settings, "complete": True, "n_tokens": n_tokens, "d_model": d_model(model),
                                     "shards": names}, indent=1))
    return ActivationStore(root)


# --------------------------------------------------------------------------------------------------
# Intervention
# --------------------------------------------------------------------------------------------------

def _positions(kwargs: dict, hidden: torch.Tensor) -> torch.Tensor:
    pos = kwargs.get("position_ids")
    if pos is None:
        pos = kwargs.get("cache_position")
    if pos is None:
        pos = torch.arange(hidden.shape[1], device=hidden.device)
    pos = pos.to(hidden.device)
    if pos.dim() == 1:
        pos = pos.unsqueeze(0)
    return pos.expand(hidden.shape[0], hidden.shape[1])


@contextmanager
def intervene(model, layer: int, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], *,
              min_token_index: int | torch.Tensor = 0):
    """Edit the residual stream after block ``layer`` during every forward pass inside the ``with`` block.

    ``fn(hidden, positions) -> new_hidden`` gets the block output ``(B, T, d)`` and the token positions ``(B, T)``
    and returns the edited tensor. Only positions ``>= min_token_index`` (an int, or a ``(B,)`` tensor: one
    threshold per row) take the edit; the others are left bit-for-bit untouched. Leaving the block removes the
    hook, which restores the model exactly.
    """
    layer = _check_layers(model, layer)[0]
    block = get_layers(model)[layer]

    def hook(module, args, kwargs, output):
        hidden = _output_tensor(output)
        pos = _positions(kwargs, hidden)
        thr = torch.as_tensor(min_token_index, device=hidden.device)
        mask = (pos >= (thr.view(-1, 1) if thr.dim() == 1 else thr)).unsqueeze(-1)
        if not bool(mask.any()):
            return output
        edited = torch.where(mask, fn(hidden, pos).to(hidden.dtype), hidden)
        return (edited, *output[1:]) if isinstance(output, tuple) else edited

    handle = block.register_forward_hook(hook, with_kwargs=True)
    try:
        yield handle
    finally:
        handle.remove()


@contextmanager
def add_vector(model, layer: int, vector: torch.Tensor, scale: float = 1.0, *,
               min_token_index: int | torch.Tensor = 0):
    """Add ``scale * vector`` to the residual stream after block ``layer`` (activation steering, ActAdd/CAA).
    ``vector`` is ``(d,)`` (the same for every row) or ``(batch, d)`` (one per row, e.g. several methods' vectors
    evaluated in one batched generation)."""
    vector = torch.as_tensor(vector).detach()
    if vector.shape[-1] != d_model(model):
        raise ValueError(f"steering vector has size {vector.shape[-1]}, the model's residual stream {d_model(model)}.")
    if vector.dim() not in (1, 2):
        raise ValueError(f"steering vector must be (d,) or (batch, d), got shape {tuple(vector.shape)}.")

    def fn(hidden, pos):
        v = vector.to(device=hidden.device, dtype=hidden.dtype)
        if v.dim() == 2:  # one vector per row of the batch
            if v.shape[0] != hidden.shape[0]:
                raise ValueError(f"{v.shape[0]} per-row steering vectors for a batch of {hidden.shape[0]}.")
            v = v[:, None, :]
        return hidden + scale * v

    with intervene(model, layer, fn, min_token_index=min_token_index) as h:
        yield h


# --------------------------------------------------------------------------------------------------
# Describing the residual stream (used by notebook 00 and later studies)
# --------------------------------------------------------------------------------------------------

def logit_lens_by_layer(model, tokenizer, prompts: Sequence[str], *, layers: Sequence[int] | None = None):
    """Logit lens at the last position of each prompt, for every block: a tidy DataFrame with columns
    prompt, layer, top_token, top_prob, final_token, final_prob (probability of the model's final top-1 token at
    that layer) and final_rank (its rank, 0 = top)."""
    import pandas as pd

    layers = list(range(n_layers(model))) if layers is None else _check_layers(model, layers)
    acts = capture(model, tokenizer, prompts, layers, stop_early=False, progress=False)
    rows = []
    for i, p in enumerate(prompts):
        h = torch.stack([acts.acts[l][i][-1] for l in layers])  # (L, d)
        probs = logit_lens(model, h).softmax(-1)  # (L, vocab)
        final = int(probs[-1].argmax()) if layers[-1] == n_layers(model) - 1 else None
        if final is None:
            final = int(logit_lens(model, capture(model, tokenizer, [p], [n_layers(model) - 1], progress=False)
                                   .acts[n_layers(model) - 1][0][-1:]).argmax())
        for j, l in enumerate(layers):
            top = int(probs[j].argmax())
            rows.append({"prompt": p, "layer": l, "top_token": tokenizer.decode([top]),
                         "top_prob": float(probs[j, top]), "final_token": tokenizer.decode([final]),
                         "final_prob": float(probs[j, final]),
                         "final_rank": int((probs[j] > probs[j, final]).sum())})
    return pd.DataFrame(rows)


def norm_profile(acts: Activations, *, skip_first: int = 1):
    """Per layer: median token L2 norm, mean per-dimension variance, and the share of variance carried by the
    top-5 dimensions (residual streams have a few huge 'outlier' dimensions). Skips the first token(s) of each
    text, which act as attention sinks with norms far above the rest."""
    import pandas as pd

    rows = []
    for l in acts.layers:
        x = torch.cat([a[skip_first:] for a in acts.acts[l] if len(a) > skip_first])
        var = x.var(0)
        rows.append({"layer": l, "median_norm": float(x.norm(dim=-1).median()), "mean_var": float(var.mean()),
                     "top5_var_share": float(var.topk(5).values.sum() / var.sum())})
    return pd.DataFrame(rows)


def linear_separability(x: torch.Tensor, labels: Sequence, *, folds: int = 5, seed: int = 0, C: float = 1.0) -> float:
    """Cross-validated accuracy of a standardized logistic-regression probe predicting ``labels`` from ``x``."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=C))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return float(np.mean(cross_val_score(clf, np.asarray(x, dtype=np.float64), np.asarray(labels), cv=cv)))


# --------------------------------------------------------------------------------------------------
# The toolkit's one outlier-token policy
# --------------------------------------------------------------------------------------------------

#: Residual norm above this multiple of the median (over non-first tokens) marks a token as an outlier.
OUTLIER_NORM_FACTOR = 5.0


def ordinary_token_masks(hidden: Sequence[torch.Tensor], *, factor: float = OUTLIER_NORM_FACTOR,
                         median: float | None = None) -> tuple[list[torch.Tensor], float]:
    """The collection's one outlier policy: per text, a boolean mask of its *ordinary* tokens.

    Excluded: position 0 of every text (the attention sink: at SmolLM2's block 15 its residual norm is ~140x the
    median, and it switches on hundreds of latents at once) and any other token whose residual norm exceeds
    ``factor`` x the median norm of all non-first tokens (rare sink-like tokens). ``hidden`` is one ``(T_i, d)``
    residual tensor per text; ``median`` reuses a reference median (e.g. the analysis corpus's) instead of this
    set's. Returns ``(masks, median)``. ReasonScore, feature scales, top contexts and SAE statistics all use it.
    """
    if factor <= 1:
        raise ValueError(f"factor must be > 1 (a multiple of the median norm), got {factor}")
    norms = [h.float().norm(dim=-1) for h in hidden]
    if median is None:
        rest = [n[1:] for n in norms if len(n) > 1]
        if not rest:
            raise ValueError("no token beyond position 0: the outlier policy needs texts of >= 2 tokens")
        median = float(torch.cat(rest).median())
    masks = []
    for n in norms:
        m = n <= factor * median
        if len(m):
            m[0] = False
        masks.append(m)
    return masks, float(median)


# --------------------------------------------------------------------------------------------------
# Resuming a forward pass from a cached residual stream
# --------------------------------------------------------------------------------------------------

def _resume_hooks(blocks, layer: int, later: list[int], captured: dict, kwargs_out: dict, *, stop_at_last: bool) -> list:
    """Hooks for resuming a forward after block ``layer``: the block's output goes to ``captured["resid"]`` and each
    later block's keyword arguments (all but the hidden states) to ``kwargs_out[l]``; with ``stop_at_last`` the pass
    stops before the last block runs. Returns the handles (the caller removes them)."""
    def post(module, args, output):
        captured["resid"] = _output_tensor(output).detach()

    def make_pre(l):
        def pre(module, args, kwargs):
            kwargs_out[l] = {k: v for k, v in kwargs.items() if k != "hidden_states"}
            if stop_at_last and l == later[-1]:
                raise _StopForward
        return pre

    handles = [blocks[layer].register_forward_hook(post)]
    return handles + [blocks[l].register_forward_pre_hook(make_pre(l), with_kwargs=True) for l in later]


def _unembed(model, h: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Logits from final-normed hidden states, cast to ``dtype`` if given, then the model's final logit
    soft-capping (if any)."""
    logits = model.get_output_embeddings()(h)
    logits = logits if dtype is None else logits.to(dtype)
    cap = getattr(model.config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


class ResumableForward:
    """Run blocks ``0..layer`` once, then the rest of the model many times from edited residuals.

    Interventions at block ``layer`` leave everything up to it unchanged, so an experiment with many conditions
    on the same token batch needs the early blocks only once: ``resid`` is the residual after block ``layer``
    (``(B, T, d)``) and :meth:`logits` runs blocks ``layer+1 ..`` (with the exact keyword arguments - attention
    mask, rotary embeddings - the model passed them in the first pass), the final norm and the unembedding.
    ``log_probs(resid)`` reproduces the full forward's log-probabilities exactly (the same kernels on the same
    inputs; a test checks); ``rows``/``cols`` restrict the unembedding to some positions.
    """

    def __init__(self, model, input_ids: torch.Tensor, layer: int, attention_mask: torch.Tensor | None = None):
        self.model = model
        self.layer = _check_layers(model, layer)[0]
        blocks = get_layers(model)
        self.later = list(range(self.layer + 1, len(blocks)))
        self.kwargs: dict[int, dict] = {}
        captured: dict[str, torch.Tensor] = {}
        handles = _resume_hooks(blocks, self.layer, self.later, captured, self.kwargs, stop_at_last=True)
        enc = {"input_ids": input_ids.to(model.device)}
        if attention_mask is not None:
            enc["attention_mask"] = attention_mask.to(model.device)
        _forward_with_hooks(model, enc, handles)
        if "resid" not in captured:
            raise RuntimeError(f"the forward pass never reached block {self.layer}")
        self.resid = captured["resid"]

    @torch.inference_mode()
    def hidden(self, resid: torch.Tensor) -> torch.Tensor:
        """Final normed hidden state from a residual after block ``layer``."""
        h = resid
        blocks = get_layers(self.model)
        for l in self.later:
            h = _output_tensor(blocks[l](h, **self.kwargs[l]))
        return _final_norm(self.model)(h)

    @torch.inference_mode()
    def log_probs(self, resid: torch.Tensor, rows: torch.Tensor | None = None,
                  cols: torch.Tensor | None = None) -> torch.Tensor:
        """Log-softmax over the vocabulary; with ``rows``/``cols`` (index tensors), only at those (batch, position)
        pairs, shape ``(n, vocab)`` - the unembedding dominates the cost, so evaluate only what is read."""
        h = self.hidden(resid)
        if rows is not None:
            h = h[rows, cols]
        return torch.log_softmax(_unembed(self.model, h, torch.float32), dim=-1)


class CachedSuffixForward:
    """A suffix whose prefix sits in a key/value cache, run once unedited, then from block ``layer`` on again
    for each of many edited residuals: the blocks up to ``layer`` run once for all edits.

    The first pass (``model(**inputs, cache)``) gives :attr:`logits` (unedited), :attr:`resid` (the suffix's
    residual after block ``layer``) and the keyword arguments each later block received (attention mask,
    rotary embeddings, cache positions: per block, as models with local and global layers differ). Each
    :meth:`logits_from` call crops the later blocks' cache back to the prefix and runs blocks ``layer+1 ..``, the
    final norm and the unembedding on the given residual: bit for bit the logits a full forward with that edit
    applied after block ``layer`` gives (the same kernels on the same inputs; a test checks)."""

    def __init__(self, model, layer: int, cache, cache_kw: str = "past_key_values", **inputs):
        self.model = model
        self.layer = _check_layers(model, layer)[0]
        blocks = get_layers(model)
        self.later = list(range(self.layer + 1, len(blocks)))
        self.prefix_len = cache.get_seq_length()
        self.kwargs: dict[int, dict] = {}
        captured: dict[str, torch.Tensor] = {}
        handles = _resume_hooks(blocks, self.layer, self.later, captured, self.kwargs, stop_at_last=False)
        try:
            with torch.inference_mode():
                out = model(**inputs, use_cache=True, **{cache_kw: cache})
        finally:
            for h in handles:
                h.remove()
        self.logits, self.resid = out.logits, captured["resid"]
        # the cache object the blocks append to (a model may wrap a legacy or deprecated-keyword cache in a new one)
        self.cache = getattr(out, "cache", None) or out.past_key_values

    @torch.inference_mode()
    def logits_from(self, resid: torch.Tensor) -> torch.Tensor:
        """Logits of the suffix when the residual after block ``layer`` is ``resid`` (same shape as :attr:`resid`)."""
        blocks = get_layers(self.model)
        h = resid
        for l in self.later:
            extra = self.cache.layers[l].get_seq_length() - self.prefix_len
            if extra > 0:  # drop the previous call's suffix (crop takes a negative count in transformers 5)
                self.cache.layers[l].crop(-extra)
            h = _output_tensor(blocks[l](h, **self.kwargs[l]))
        return _unembed(self.model, _final_norm(self.model)(h))


def _final_norm(model) -> nn.Module:
    for path in ("model.norm", "model.language_model.norm", "transformer.ln_f", "gpt_neox.final_layer_norm"):
        obj = model
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
            return obj
        except AttributeError:
            continue
    raise TypeError(f"cannot find the final norm of {type(model).__name__}")
