"""Steering: generation under an added residual-stream vector (one application path for every method), and the
steering-vector methods (CAA, probe, SDCV, SAE-RSV), each one type ``(pos_acts, neg_acts) -> Tensor`` with its own
config object (:data:`VECTOR_METHODS`, :func:`vector_method`).

``generate`` runs batched greedy (or seeded sampled) chat generation, optionally adding ``scale * vector`` to the
residual stream after block ``layer`` through ``helpers.core.activations.add_vector`` — from the first *generated*
position on by default (``from_prompt=True`` steers the prompt tokens too) — and optionally forbidding token
sequences (``bad_words_ids``, for word-ban ablations). Each row's threshold is its own prompt length, so left
padding in a batch does not shift where steering starts.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

import numpy as np
import torch

from . import activations as A
from . import memo
from .features import embed
from .llm import LLMError
from .sae import encode
from .text import chat_encode

__all__ = ["Generation", "generate", "greedy_continuations", "unit", "teacher_forced_dose", "projection_auroc",
           "sae_feature_vector", "feature_edit", "activation_scale",
           "caa_vector", "probe_vector", "sdcv_select", "sdcv_denoise",
           "sdcv_vector", "sdcv_vector_tokens", "Decomposition", "rsv_decompose", "rsv_neighbours", "rsv_relevance", "RSVParts", "rsv_parts",
           "rsv_refine", "VectorMethod", "CAA", "Probe", "SDCV", "SAERSV", "VECTOR_METHODS", "vector_method"]


@dataclass
class Generation:
    prompt: str
    text: str
    n_tokens: int  # generated tokens, up to and excluding EOS
    hit_limit: bool  # stopped by max_new_tokens rather than EOS


def sae_feature_vector(sae, latent: int, f_max: float, gamma: float) -> torch.Tensor:
    """``gamma * f_max * W_dec[latent]``: the feature-steering vector of arXiv 2503.18878 (Sec. 5, following
    Templeton et al. 2024), with ``f_max`` the latent's maximum activation on the analysis corpus."""
    return gamma * f_max * sae.W_dec[latent].detach().float()


def activation_scale(latents: Sequence[torch.Tensor], masks: Sequence[torch.Tensor] | None = None, *,
                     q: float = 0.99) -> torch.Tensor:
    """A robust activation scale per latent: the ``q``-quantile of its *non-zero* activations over the ordinary
    tokens (``masks`` from :func:`helpers.core.activations.ordinary_token_masks`; sink and huge-norm tokens out).

    Replaces the raw maximum of arXiv 2503.18878 Sec. 5 ("f_max"), which at 135M is set by the attention sink
    (e.g. 168.8 for a feature whose ordinary activations stay below 60). Choice (the paper is silent): quantile of
    the non-zero values, so a sparse latent's scale is where it fires, not 0. Latents that never fire get 0."""
    if not 0 < q <= 1:
        raise ValueError(f"q must be in (0, 1], got {q}")
    rows = [l[m] if masks is not None else l for l, m in zip(latents, masks or [None] * len(latents))]
    x = torch.cat([r for r in rows if len(r)]).float()
    out = torch.zeros(x.shape[1])
    for j in range(x.shape[1]):
        v = x[:, j][x[:, j] > 0]
        if len(v):
            out[j] = torch.quantile(v, q) if len(v) < 16_000_000 else v.max()
    return out


def feature_edit(sae, latent: int, value: float, *, mode: str = "clamp") -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """An SAE-feature intervention ``fn(hidden, positions) -> hidden`` for :func:`helpers.core.activations.intervene`
    or :func:`generate` (``edit=``).

    * ``mode="clamp"`` (arXiv 2503.18878's released code, ``sae_utils.get_intervention_hook``): set the latent to
      ``value``: x + (value - a_i(x)) W_dec[i], with a_i(x) the SAE's encoding of x. ``value=0`` is the feature's
      ablation; ``value = gamma * scale`` is the paper's steering.
    * ``mode="add"``: x + value W_dec[i] (additive steering, Templeton et al. 2024; equal to clamp where a_i = 0).
    """
    if mode not in ("clamp", "add"):
        raise ValueError(f"mode must be 'clamp' or 'add', got {mode!r}")
    n = sae.W_dec.shape[0]
    if not 0 <= int(latent) < n:
        raise ValueError(f"latent {latent} out of range: the SAE has {n} latents (0..{n - 1})")
    w = sae.W_dec[int(latent)].detach()

    def fn(hidden: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        wd = w.to(hidden.device, hidden.dtype)
        if mode == "add":
            return hidden + value * wd
        flat = hidden.reshape(-1, hidden.shape[-1])
        a = encode(sae, flat)[:, int(latent)].to(hidden.dtype).reshape(*hidden.shape[:-1], 1)
        return hidden + (value - a) * wd

    return fn


@memo.cached("steering.generate", ignore=('progress',))
@torch.no_grad()
def generate(model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int = 128, layer: int | None = None,
             vector: torch.Tensor | None = None, scale: float = 1.0, from_prompt: bool = False,
             bad_words_ids: list[list[int]] | None = None, batch_size: int = 8, system: str | None = None,
             do_sample: bool = False, temperature: float = 1.0, seed: int = 0, chat: bool = True,
             progress: bool = False, steer_from: str = "generated",
             edit: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
             edit_from: int = 1) -> list[Generation]:
    """Generate a reply for each prompt (chat template applied when ``chat``), steered when ``vector`` is given:
    ``(d,)`` for all prompts or ``(len(prompts), d)``, one per prompt (many vectors evaluated in one batched run).
    ``steer_from``: "generated" steers the positions of generated tokens (the first token comes from the unsteered
    prompt pass), "last_prompt" also the last prompt position (the one that predicts the first generated token),
    "prompt" every position (same as ``from_prompt=True``). ``edit`` is any residual edit ``fn(hidden, positions)``
    (e.g. :func:`feature_edit`) applied at block ``layer`` to every position ``>= edit_from`` of prompt and
    generation (default 1: the attention sink at position 0 is left alone)."""
    from tqdm.auto import tqdm

    if (vector is not None or edit is not None) and layer is None:
        raise ValueError("a steering vector or edit needs the layer it is applied at (layer=...).")
    if vector is not None and edit is not None:
        raise ValueError("pass either vector= or edit=, not both.")
    if vector is not None and vector.dim() == 2 and len(vector) != len(prompts):
        raise ValueError(f"{len(vector)} per-prompt steering vectors for {len(prompts)} prompts.")
    out: list[Generation] = []
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        for s in tqdm(range(0, len(prompts), batch_size), desc="generate", disable=not progress):
            batch = list(prompts[s:s + batch_size])
            if chat:
                enc = chat_encode(tokenizer, batch, system=system)
            else:
                enc = tokenizer(batch, return_tensors="pt", padding=True)
            enc = {k: v.to(model.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
            width = enc["input_ids"].shape[1]
            prompt_len = enc["attention_mask"].sum(1)  # positions are per row, padding excluded
            torch.manual_seed(seed + s)
            kw = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, pad_token_id=tokenizer.pad_token_id,
                      bad_words_ids=bad_words_ids or None)
            if do_sample:
                kw["temperature"] = temperature
            if vector is not None:
                start = "prompt" if from_prompt else steer_from
                if start not in ("generated", "last_prompt", "prompt"):
                    raise ValueError(f"steer_from must be 'generated', 'last_prompt' or 'prompt', got {start!r}.")
                thr = {"prompt": torch.zeros_like(prompt_len), "last_prompt": prompt_len - 1,
                       "generated": prompt_len}[start]
                vec = vector[s:s + batch_size] if vector.dim() == 2 else vector
                with A.add_vector(model, layer, vec, scale, min_token_index=thr):
                    seqs = model.generate(**enc, **kw)
            elif edit is not None:
                with A.intervene(model, layer, edit, min_token_index=edit_from):
                    seqs = model.generate(**enc, **kw)
            else:
                seqs = model.generate(**enc, **kw)
            for p, row in zip(batch, seqs[:, width:]):
                ids = row.tolist()
                eos = [i for i, t in enumerate(ids) if t in (tokenizer.eos_token_id, tokenizer.pad_token_id)]
                n = eos[0] if eos else len(ids)
                out.append(Generation(prompt=p, text=tokenizer.decode(ids[:n], skip_special_tokens=True).strip(),
                                      n_tokens=n, hit_limit=not eos))
    finally:
        tokenizer.padding_side = old_side
    return out



# --- teacher-forced dose-response: the cheap, powerful measurement -------------------------------------------

@memo.cached("steering.greedy_continuations")
@torch.no_grad()
def greedy_continuations(model, tokenizer, prompts: Sequence[str], n_tokens: int, *, batch_size: int = 32,
                         system: str | None = None) -> list[list[int]]:
    """Exactly ``n_tokens`` greedy token ids per chat prompt from the *unsteered* model (EOS suppressed until
    then), the fixed text a teacher-forced dose-response reads (:func:`teacher_forced_dose`)."""
    if n_tokens < 1:
        raise ValueError(f"n_tokens must be >= 1, got {n_tokens}")
    out: list[list[int]] = []
    old = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        for s in range(0, len(prompts), batch_size):
            enc = chat_encode(tokenizer, list(prompts[s:s + batch_size]), system=system)
            enc = {k: v.to(model.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
            seqs = model.generate(**enc, max_new_tokens=n_tokens, min_new_tokens=n_tokens, do_sample=False,
                                  pad_token_id=tokenizer.pad_token_id)
            out += [r.tolist() for r in seqs[:, enc["input_ids"].shape[1]:]]
    finally:
        tokenizer.padding_side = old
    return out


#: the forward keyword of the key/value cache ("cache" in transformers >= 5.x, "past_key_values" before)
_CACHE_KW = "cache" if "cache" in __import__("inspect").signature(
    __import__("transformers").LlamaForCausalLM.forward).parameters else "past_key_values"


def unit(v: torch.Tensor) -> torch.Tensor:
    """``v / ||v||`` (methods are compared at equal added norm: unit directions times a common scale)."""
    return v.float() / v.float().norm().clamp_min(1e-12)


@memo.cached("steering.teacher_forced_dose")
@torch.no_grad()
def teacher_forced_dose(model, tokenizer, layer: int, prompts: Sequence[str], continuations: Sequence[Sequence[int]],
                        directions: dict[str, torch.Tensor], scales: Sequence[float], concept_ids: Sequence[int],
                        anti_ids: Sequence[int], *, batch_size: int = 32, system: str | None = None):
    """Dose-response of steering read teacher-forced on fixed (unsteered) continuations: for every direction
    (made unit-norm) and every added norm in ``scales`` (absolute, e.g. fractions of the median residual norm at
    ``layer``), ``scale * unit(direction)`` is added after block ``layer`` from the last prompt position on, and
    at each continuation position we read

    * ``logodds``: log P(concept tokens) - log P(anti-concept tokens) of the next-token distribution (a lexicon
      read-out; mean over positions), and
    * ``nll``: the continuation's mean negative log-likelihood (the fluency cost when compared with scale 0).

    The prompt prefix (all but its last token) is unsteered and identical for every direction and scale, so its
    key/value cache is computed once per batch and reused; the suffix runs through blocks ``0..layer`` once
    (:class:`helpers.core.activations.CachedSuffixForward`) and each direction and scale re-runs only the later
    blocks (the same numbers as a full steered forward, bit for bit: tested). Returns a DataFrame: direction, scale, item, logodds,
    nll (scale 0 is always included, once, as direction "none")."""
    import pandas as pd

    if not len(concept_ids) or not len(anti_ids):
        raise ValueError("teacher_forced_dose needs concept and anti-concept token ids (a non-empty lexicon each).")
    lengths = {len(c) for c in continuations}
    if len(lengths) != 1 or 0 in lengths:
        raise ValueError(f"continuations must all have the same number (>= 1) of tokens, got lengths {sorted(lengths)} "
                         f"(use greedy_continuations(..., n_tokens)).")
    if len(continuations) != len(prompts):
        raise ValueError(f"{len(continuations)} continuations for {len(prompts)} prompts.")
    units = {k: unit(v) for k, v in directions.items()}
    jobs = [("none", 0.0)] + [(k, float(a)) for k in units for a in scales if a != 0]
    cid, aid = torch.tensor(list(concept_ids)), torch.tensor(list(anti_ids))
    rows = []
    old = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        for s in range(0, len(prompts), batch_size):
            enc = chat_encode(tokenizer, list(prompts[s:s + batch_size]), system=system)
            ids, att = enc["input_ids"].to(model.device), enc["attention_mask"].to(model.device)
            cont = torch.tensor([list(c) for c in continuations[s:s + batch_size]], device=model.device)
            full_ids = torch.cat([ids, cont], 1)
            full_att = torch.cat([att, torch.ones_like(cont)], 1)
            pos = (full_att.cumsum(1) - 1).clamp_min(0)
            cut = ids.shape[1] - 1  # prefix: every prompt token but the last
            pre = model(input_ids=full_ids[:, :cut], attention_mask=full_att[:, :cut], position_ids=pos[:, :cut],
                        use_cache=True)
            cache = getattr(pre, "cache", None) or pre.past_key_values
            # the unsteered suffix once; each steered job re-runs only the blocks after `layer`
            run = A.CachedSuffixForward(model, layer, cache, _CACHE_KW, input_ids=full_ids[:, cut:],
                                        attention_mask=full_att, position_ids=pos[:, cut:])
            for name, a in jobs:
                if name == "none":
                    logits = run.logits
                else:
                    v = units[name].to(device=run.resid.device, dtype=run.resid.dtype)
                    logits = run.logits_from(run.resid + a * v)  # what A.add_vector adds after block `layer`
                lp = logits[:, :-1].float().log_softmax(-1)  # positions predicting the continuation tokens
                lo = (lp[..., cid].logsumexp(-1) - lp[..., aid].logsumexp(-1)).mean(1)
                nll = -lp.gather(-1, cont[..., None])[..., 0].mean(1)
                for i in range(len(cont)):
                    rows.append({"direction": name, "scale": a, "item": s + i, "logodds": float(lo[i]),
                                 "nll": float(nll[i])})
    finally:
        tokenizer.padding_side = old
    return pd.DataFrame(rows)


def projection_auroc(vector: torch.Tensor, x_pos: torch.Tensor, x_neg: torch.Tensor) -> float:
    """Direction quality: AUROC of held-out positives (label 1) vs negatives (label 0) projected on ``vector``
    (0.5 = no separation; 1 = perfect; below 0.5 = the direction points the wrong way)."""
    from sklearn.metrics import roc_auc_score

    s = torch.cat([x_pos, x_neg]).float() @ vector.float()
    return float(roc_auc_score(np.r_[np.ones(len(x_pos)), np.zeros(len(x_neg))], s.numpy()))


# --- CAA and the probe ---------------------------------------------------------------------------------------

def caa_vector(x_pos: torch.Tensor, x_neg: torch.Tensor) -> torch.Tensor:
    """CAA / diff-in-means (Rimsky et al. 2024, Eq. 1): ``v = mean(x_pos) - mean(x_neg)``."""
    if len(x_pos) == 0 or len(x_neg) == 0:
        raise ValueError("CAA needs at least one positive and one negative example.")
    return x_pos.float().mean(0) - x_neg.float().mean(0)


def probe_vector(x_pos: torch.Tensor, x_neg: torch.Tensor, *, C: float = 1.0, seed: int = 0,
                 norm: float | None = None) -> torch.Tensor:
    """Logistic-regression direction (scikit-learn, L2, ``C``) separating positives from negatives, rescaled to
    ``norm`` (default: the CAA vector's norm, so the multiplier means the same for both)."""
    from sklearn.linear_model import LogisticRegression

    x = torch.cat([x_pos, x_neg]).float().numpy()
    y = np.r_[np.ones(len(x_pos)), np.zeros(len(x_neg))]
    w = torch.tensor(LogisticRegression(C=C, max_iter=2000, random_state=seed).fit(x, y).coef_[0], dtype=torch.float32)
    target = float(caa_vector(x_pos, x_neg).norm()) if norm is None else norm
    return w / w.norm() * target


# --- SDCV ------------------------------------------------------------------------------------------------------

def sdcv_select(z_pos: torch.Tensor, z_neg: torch.Tensor, k: int, *, score: str = "diff") -> torch.Tensor:
    """SDCV step 1 (arXiv 2505.15038, Sec. 3): rank SAE latents by how well they separate the classes and keep the
    top ``k``. ``score="diff"``: |mean_pos - mean_neg|; ``"normalized"``: that difference over the pooled standard
    deviation (a t-like score; our variant). Returns latent indices, best first."""
    d = z_pos.float().mean(0) - z_neg.float().mean(0)
    if score == "normalized":
        sd = torch.cat([z_pos, z_neg]).float().std(0)
        d = d / (sd + 1e-6)
    elif score != "diff":
        raise ValueError(f"score must be 'diff' or 'normalized', got {score!r}.")
    k = min(int(k), d.numel())
    return d.abs().topk(k).indices


@torch.no_grad()
def sdcv_denoise(sae, x: torch.Tensor, latents: torch.Tensor, *, lam: float = 1.0, keep_others: bool = False,
                 keep_error: bool = True) -> torch.Tensor:
    """SDCV step 2: re-express representations through the selected latents: ``z' = lam * z_S (+ z_notS if
    keep_others)``, ``x' = decode(z') (+ (x - decode(z)) if keep_error)``. With ``keep_others`` and ``lam = 1``
    this is the identity (tested)."""

    x = x.float()
    z = encode(sae, x).float()
    mask = torch.zeros(z.shape[1], dtype=torch.bool)
    mask[latents] = True
    z_new = torch.where(mask, lam * z, z if keep_others else torch.zeros_like(z))
    out = sae.decode(z_new.to(sae.W_dec.dtype)).float()
    if keep_error:
        out = out + (x - sae.decode(z.to(sae.W_dec.dtype)).float())
    return out


def sdcv_vector(sae, x_pos: torch.Tensor, x_neg: torch.Tensor, *, k: int = 32, lam: float = 1.0,
                score: str = "diff", keep_others: bool = False, keep_error: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """SDCV concept vector: diff-in-means recomputed on the denoised representations (Sec. 3 of the paper; the
    paper denoises the hidden states and then re-runs the concept-vector method). Returns (vector, latents)."""

    lat = sdcv_select(encode(sae, x_pos.float()), encode(sae, x_neg.float()), k, score=score)
    kw = dict(lam=lam, keep_others=keep_others, keep_error=keep_error)
    return caa_vector(sdcv_denoise(sae, x_pos, lat, **kw), sdcv_denoise(sae, x_neg, lat, **kw)), lat


def _as_token_sets(x) -> list[torch.Tensor]:
    """A pooled ``(n, d)`` tensor (one row per example) or a list of ``(T_i, d)`` per-token tensors -> list."""
    if isinstance(x, torch.Tensor):
        if x.dim() != 2:
            raise ValueError(f"expected (n, d) pooled representations or a list of (T_i, d) tensors, got {tuple(x.shape)}")
        return [r[None] for r in x]
    out = [torch.as_tensor(t) for t in x]
    if not out or any(t.dim() != 2 or len(t) == 0 for t in out):
        raise ValueError("expected a non-empty list of (T_i, d) per-token tensors with T_i >= 1.")
    return out


@torch.no_grad()
def _pooled_codes(sae, x) -> torch.Tensor:
    """Per-example SAE codes: encode every token, then average over the example's tokens."""
    sets = _as_token_sets(x)
    z = encode(sae, torch.cat(sets).float()).float()
    return torch.stack([c.mean(0) for c in z.split([len(t) for t in sets])])


def sdcv_vector_tokens(sae, pos, neg, *, k: int = 32, lam: float = 2.0, score: str = "diff", base: str = "caa",
                       keep_others: bool = True, keep_error: bool = True, C: float = 1.0,
                       seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """SDCV (arXiv 2505.15038, Sec. 3): select the ``k`` latents whose per-token codes, pooled per example, best
    separate the classes (:func:`sdcv_select`); denoise every token's hidden state by scaling those latents by
    ``lam`` (:func:`sdcv_denoise`: with the others and the error kept this is x + (lam - 1) sum_S z_i W_dec[i]);
    pool per example (mean over tokens); re-run the concept-vector method ``base`` ("caa": diff-in-means; "probe":
    logistic regression, ``C``) on the denoised representations. Choice (the paper gives no value we could read):
    ``lam = 2``. Returns (vector, latents)."""
    if base not in ("caa", "probe"):
        raise ValueError(f"SDCV base must be 'caa' or 'probe', got {base!r}.")
    if lam <= 0:
        raise ValueError(f"SDCV lam must be > 0 (a scale for the selected latents), got {lam}.")
    ps, ns = _as_token_sets(pos), _as_token_sets(neg)
    lat = sdcv_select(_pooled_codes(sae, ps), _pooled_codes(sae, ns), k, score=score)
    kw = dict(lam=lam, keep_others=keep_others, keep_error=keep_error)

    def pooled(sets):
        den = sdcv_denoise(sae, torch.cat(sets).float(), lat, **kw)
        return torch.stack([c.mean(0) for c in den.split([len(t) for t in sets])])

    xp, xn = pooled(ps), pooled(ns)
    v = caa_vector(xp, xn) if base == "caa" else probe_vector(xp, xn, C=C, seed=seed)
    return v, lat


# --- SAE-RSV ---------------------------------------------------------------------------------------------------

@dataclass
class Decomposition:
    """A steering vector written in SAE latents: ``v ~ dz @ W_dec`` (the decoder bias cancels in a difference)."""

    dz: torch.Tensor  # (d_sae,) signed latent coefficients
    v: torch.Tensor  # the vector decomposed
    v_hat: torch.Tensor  # dz @ W_dec
    w_norms: torch.Tensor  # ||W_dec[i]||
    mode: str

    @property
    def relative_error(self) -> float:
        return float((self.v - self.v_hat).norm() / self.v.norm().clamp_min(1e-12))

    def contributions(self) -> torch.Tensor:
        """|dz_i| * ||W_dec[i]||: each latent's share of the reconstructed vector."""
        return self.dz.abs() * self.w_norms

    def support(self, m: int) -> list[int]:
        """The ``m`` latents contributing most, largest first (only latents with dz != 0)."""
        return [int(i) for i in self.contributions().topk(min(m, int((self.dz != 0).sum()))).indices]


@torch.no_grad()
def rsv_decompose(sae, x_pos: torch.Tensor, x_neg: torch.Tensor, *, mode: str = "mean_codes") -> Decomposition:
    """Write the small-data CAA vector in SAE latents (SAE-RSV step 1, arXiv 2509.23799 Sec. 3.1). Steering vectors
    are off the SAE's input distribution and would get spurious negative projections if encoded directly (Mayne
    et al., arXiv 2411.08790), so we encode *activations*, which the SAE was trained on:
    ``mode="mean_codes"``: dz = mean(encode(x_pos)) - mean(encode(x_neg)) (default);
    ``mode="class_means"``: dz = encode(mean x_pos) - encode(mean x_neg).
    The reconstruction error ||v - dz W_dec|| / ||v|| is reported (``relative_error``)."""

    if not isinstance(x_pos, torch.Tensor) or not isinstance(x_neg, torch.Tensor):  # per-token lists
        if mode != "mean_codes":
            raise ValueError("per-token inputs take mode='mean_codes' (codes per token, pooled per example).")
        ps, ns = _as_token_sets(x_pos), _as_token_sets(x_neg)
        v = caa_vector(torch.stack([t.float().mean(0) for t in ps]), torch.stack([t.float().mean(0) for t in ns]))
        dz = _pooled_codes(sae, ps).mean(0) - _pooled_codes(sae, ns).mean(0)
        w = sae.W_dec.detach().float()
        return Decomposition(dz=dz, v=v, v_hat=dz @ w, w_norms=w.norm(dim=1), mode=mode)
    v = caa_vector(x_pos, x_neg)
    if mode == "mean_codes":
        dz = encode(sae, x_pos.float()).float().mean(0) - encode(sae, x_neg.float()).float().mean(0)
    elif mode == "class_means":
        dz = (encode(sae, x_pos.float().mean(0, keepdim=True)) - encode(sae, x_neg.float().mean(0, keepdim=True)))[0].float()
    else:
        raise ValueError(f"mode must be 'mean_codes' or 'class_means', got {mode!r}.")
    w = sae.W_dec.detach().float()
    return Decomposition(dz=dz, v=v, v_hat=dz @ w, w_norms=w.norm(dim=1), mode=mode)


@torch.no_grad()
def rsv_neighbours(sae, latents: Sequence[int], *, n: int = 8, exclude: Sequence[int] = ()) -> dict[int, tuple[int, float]]:
    """Augmentation candidates (SAE-RSV step 3): for each latent in ``latents``, its ``n`` nearest decoder
    directions by cosine, excluding ``exclude``. Returns candidate -> (nearest kept latent, cosine), best cosine."""
    if not len(latents):
        return {}
    w = torch.nn.functional.normalize(sae.W_dec.detach().float(), dim=1)
    sims = w[list(latents)] @ w.T  # (L, d_sae)
    sims[:, list(latents)] = -2.0
    if len(exclude):
        sims[:, list(exclude)] = -2.0
    out: dict[int, tuple[int, float]] = {}
    v, idx = sims.topk(n, dim=1)
    for r, src in enumerate(latents):
        for c, s in zip(idx[r].tolist(), v[r].tolist()):
            if s > -2 and (c not in out or s > out[c][1]):
                out[c] = (int(src), float(s))
    return out


def rsv_relevance(explanations: dict[int, str], description: str, anti_description: str, *,
                  threshold: float = 0.3, chat=None) -> dict[int, dict]:
    """SAE-RSV step 2: is each latent relevant to the concept, judged from its explanation. Offline (``chat`` is
    None): relevance = max cosine (MiniLM) of the explanation to the concept's and the anti-concept's description
    (a latent for the opposite pole is relevant too; our choice), relevant when >= ``threshold``. Online: an LLM
    over an OpenAI-compatible endpoint answers yes/no; unparseable answers are marked ``None`` and counted by the
    caller (treated as not relevant)."""
    ids = list(explanations)
    if not ids:
        return {}
    if chat is None:

        s = embed([explanations[i] for i in ids]) @ embed([description, anti_description]).T
        return {i: {"similarity": float(s[j].max()), "relevant": bool(s[j].max() >= threshold),
                    "explanation": explanations[i]} for j, i in enumerate(ids)}

    out = {}
    for i in ids:
        prompt = (f"Concept: {description}\nOpposite: {anti_description}\nA language-model feature is explained as: "
                  f"\"{explanations[i]}\"\nIs this feature relevant to the concept or its opposite? Answer yes or no.")
        try:
            ans = chat.complete(prompt, max_tokens=3).strip().lower()
        except LLMError:
            ans = ""
        rel = True if ans.startswith("yes") else False if ans.startswith("no") else None
        out[i] = {"similarity": math.nan, "relevant": rel, "explanation": explanations[i]}
    return out


@dataclass
class RSVParts:
    v: torch.Tensor
    v_noise: torch.Tensor
    v_useful: torch.Tensor
    kept: list[int]
    removed: list[int]
    added: list[int]


def rsv_parts(sae, dec: Decomposition, support: Sequence[int], relevance: dict[int, dict],
              added: dict[int, tuple[int, float]]) -> RSVParts:
    """The three vectors SAE-RSV combines: ``v`` (small-data vector), ``v_noise`` = sum of the irrelevant support
    latents' contributions dz_i W_dec[i], ``v_useful`` = added latents, each with the sign and magnitude of the
    kept latent it was found from, times their decoder cosine (our choice: the paper does not give the weights)."""
    w = sae.W_dec.detach().float()
    removed = [i for i in support if relevance.get(i, {}).get("relevant") is not True]
    kept = [i for i in support if i not in removed]
    v_noise = (dec.dz[removed, None] * w[removed]).sum(0) if removed else torch.zeros_like(dec.v)
    v_useful = torch.zeros_like(dec.v)
    for j, (src, cos) in added.items():
        v_useful += float(dec.dz[src]) * cos * w[j]
    return RSVParts(v=dec.v, v_noise=v_noise, v_useful=v_useful, kept=kept, removed=removed, added=list(added))


def rsv_refine(parts: RSVParts, alpha: Sequence[float] = (1.0, 1.0, 1.0)) -> torch.Tensor:
    """SAE-RSV refined vector (arXiv 2509.23799, Eq. 5): ``v' = a1 * v - a2 * v_noise + a3 * v_useful``."""
    a1, a2, a3 = (float(a) for a in alpha)
    return a1 * parts.v - a2 * parts.v_noise + a3 * parts.v_useful




# --- one type for every vector method ---------------------------------------------------------------------------
# A vector method is ``(pos_acts, neg_acts) -> Tensor`` (steering-vectors' ``Aggregator`` is the model); its
# settings live in the method's own frozen config object, so building vectors is a lookup:
# ``vector_method("sdcv", sae=sae, k=8)(x_pos, x_neg)``.

VectorMethod = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class CAA:
    """CAA / diff-in-means (:func:`caa_vector`)."""

    def __call__(self, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        return caa_vector(pos, neg)


@dataclass(frozen=True)
class Probe:
    """Logistic-regression direction (:func:`probe_vector`), at the CAA vector's norm."""

    C: float = 1.0
    seed: int = 0

    def __call__(self, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        return probe_vector(pos, neg, C=self.C, seed=self.seed)


@dataclass(frozen=True)
class SDCV:
    """SDCV (arXiv 2505.15038): the concept-vector method ``base`` ("caa" or "probe") re-run on hidden states
    denoised through the SAE (:func:`sdcv_vector_tokens`): the ``k`` most discriminative latents scaled by ``lam``,
    every other latent and the SAE error kept. Takes pooled ``(n, d)`` tensors (one token per example) or lists of
    per-token ``(T_i, d)`` tensors (codes computed per token, then pooled; the SAE's input distribution);
    :meth:`latents` gives the selection."""

    sae: Any = field(repr=False)
    k: int = 32
    lam: float = 2.0
    score: str = "diff"
    keep_others: bool = True
    keep_error: bool = True
    base: str = "caa"
    C: float = 1.0
    seed: int = 0

    def latents(self, pos, neg) -> torch.Tensor:
        return sdcv_select(_pooled_codes(self.sae, pos), _pooled_codes(self.sae, neg), self.k, score=self.score)

    def __call__(self, pos, neg) -> torch.Tensor:
        return sdcv_vector_tokens(self.sae, pos, neg, k=self.k, lam=self.lam, score=self.score, base=self.base,
                                  keep_others=self.keep_others, keep_error=self.keep_error, C=self.C, seed=self.seed)[0]


@dataclass(frozen=True)
class SAERSV:
    """SAE-RSV (arXiv 2509.23799): decompose the small-data vector in SAE latents, drop the ``support`` latents that
    ``relevance`` judges irrelevant, add relevant decoder neighbours, combine with ``alpha`` (Eq. 5).
    ``relevance(latents) -> {latent: {"relevant": bool | None, ...}}`` (e.g. :func:`rsv_relevance` over feature
    explanations); without one every support latent is kept and nothing is added (the vector is then CAA)."""

    sae: Any = field(repr=False)
    mode: str = "mean_codes"
    support: int = 24
    n_neighbours: int = 4
    alpha: tuple[float, float, float] = (1.0, 1.0, 1.0)
    relevance: Callable[[list[int]], dict[int, dict]] | None = field(default=None, repr=False)

    def decompose(self, pos: torch.Tensor, neg: torch.Tensor) -> Decomposition:
        return rsv_decompose(self.sae, pos, neg, mode=self.mode)

    def parts(self, pos: torch.Tensor, neg: torch.Tensor) -> RSVParts:
        dec = self.decompose(pos, neg)
        sup = dec.support(self.support)
        judge = self.relevance or (lambda ids: {i: {"relevant": True} for i in ids})
        rel = judge(sup)
        kept = [i for i in sup if rel.get(i, {}).get("relevant") is True]
        cands = rsv_neighbours(self.sae, kept, n=self.n_neighbours, exclude=sup) if self.relevance else {}
        cand_rel = judge(sorted(cands)) if cands else {}
        added = {j: s for j, s in cands.items() if cand_rel.get(j, {}).get("relevant") is True}
        return rsv_parts(self.sae, dec, sup, rel, added)

    def __call__(self, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        return rsv_refine(self.parts(pos, neg), self.alpha)


#: name -> config type of every vector method.
VECTOR_METHODS: dict[str, type] = {"caa": CAA, "probe": Probe, "sdcv": SDCV, "sae_rsv": SAERSV}


def vector_method(name: str, **config: Any) -> VectorMethod:
    """The vector method ``name`` with its settings: ``vector_method("probe", C=0.5)(x_pos, x_neg)``. Unknown
    names and settings are errors that list what is allowed."""
    if name not in VECTOR_METHODS:
        raise ValueError(f"unknown vector method {name!r}; methods: {sorted(VECTOR_METHODS)}.")
    cls = VECTOR_METHODS[name]
    allowed = {f.name for f in fields(cls)}
    extra = set(config) - allowed
    if extra:
        raise ValueError(f"{name}: unknown setting(s) {sorted(extra)}; settings of {cls.__name__}: {sorted(allowed)}.")
    missing = [f.name for f in fields(cls) if f.name not in config and f.default is MISSING
               and f.default_factory is MISSING]
    if missing:
        raise ValueError(f"{name}: needs {missing} (e.g. vector_method({name!r}, sae=sae)).")
    return cls(**config)
