"""Steering: generation under an added residual-stream vector (one application path for every method).

``generate`` runs batched greedy (or seeded sampled) chat generation, optionally adding ``scale * vector`` to the
residual stream after block ``layer`` through ``helpers.activations.add_vector`` — from the first *generated*
position on by default (``from_prompt=True`` steers the prompt tokens too) — and optionally forbidding token
sequences (``bad_words_ids``, for word-ban ablations). Each row's threshold is its own prompt length, so left
padding in a batch does not shift where steering starts.
"""
from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

import torch

from . import activations as A

__all__ = ["Generation", "generate", "sae_feature_vector", "steering_panel"]


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


@torch.no_grad()
def generate(model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int = 128, layer: int | None = None,
             vector: torch.Tensor | None = None, scale: float = 1.0, from_prompt: bool = False,
             bad_words_ids: list[list[int]] | None = None, batch_size: int = 8, system: str | None = None,
             do_sample: bool = False, temperature: float = 1.0, seed: int = 0, chat: bool = True,
             progress: bool = False, steer_from: str = "generated") -> list[Generation]:
    """Generate a reply for each prompt (chat template applied when ``chat``), steered when ``vector`` is given:
    ``(d,)`` for all prompts or ``(len(prompts), d)``, one per prompt (many vectors evaluated in one batched run).
    ``steer_from``: "generated" steers the positions of generated tokens (the first token comes from the unsteered
    prompt pass), "last_prompt" also the last prompt position (the one that predicts the first generated token),
    "prompt" every position (same as ``from_prompt=True``)."""
    from tqdm.auto import tqdm

    if vector is not None and layer is None:
        raise ValueError("a steering vector needs the layer it is added at (layer=...).")
    if vector is not None and vector.dim() == 2 and len(vector) != len(prompts):
        raise ValueError(f"{len(vector)} per-prompt steering vectors for {len(prompts)} prompts.")
    out: list[Generation] = []
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        for s in tqdm(range(0, len(prompts), batch_size), desc="generate", disable=not progress):
            batch = list(prompts[s:s + batch_size])
            if chat:
                msgs = [([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": p}]
                        for p in batch]
                enc = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt",
                                                    padding=True, return_dict=True)
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


def steering_panel(model, tokenizer, layer: int, vectors: dict, *, prompt: str = "", scales=(-4.0, 4.0),
                   default_scale: float = 2.0, max_new_tokens: int = 64):
    """ipywidgets panel: pick a vector (e.g. an SAE feature), a multiplier and a prompt; 'Generate' shows the
    unsteered and the steered completion side by side (greedy). ``vectors`` maps a name to a unit-scale vector."""
    import html

    import ipywidgets as w
    from IPython.display import HTML, display

    pick = w.Dropdown(options=list(vectors), description="vector")
    scale = w.FloatSlider(value=default_scale, min=scales[0], max=scales[1], step=0.5, description="multiplier")
    text = w.Textarea(value=prompt, description="prompt", layout=w.Layout(width="90%"))
    button = w.Button(description="Generate")
    out = w.Output()

    def run(_=None):
        out.clear_output()
        plain = generate(model, tokenizer, [text.value], max_new_tokens=max_new_tokens)[0].text
        steered = generate(model, tokenizer, [text.value], max_new_tokens=max_new_tokens, layer=layer,
                           vector=vectors[pick.value], scale=scale.value)[0].text
        with out:
            display(HTML(f"<table><tr><th>unsteered</th><th>{html.escape(pick.value)} x {scale.value}</th></tr>"
                         f"<tr><td style='vertical-align:top'>{html.escape(plain)}</td>"
                         f"<td style='vertical-align:top'>{html.escape(steered)}</td></tr></table>"))

    button.on_click(run)
    return w.VBox([pick, scale, text, button, out])


# ==================================================================================================
# Study 2: steering vectors from small data, refined through an SAE (notebook 03)
# ==================================================================================================
#
# Methods (one vector per concept, layer, training subset), all applied through ``generate`` above:
#   caa_vector      CAA / diff-in-means (Rimsky et al. 2024, arXiv 2312.06681, Eq. 1)
#   probe_vector    logistic-regression direction, rescaled to the CAA vector's norm
#   sdcv_*          SDCV, "Denoising Concept Vectors with Sparse Autoencoders" (arXiv 2505.15038)
#   rsv_*           SAE-RSV, "Enhancing LLM Steering through SAE-Based Vector Refinement" (arXiv 2509.23799)
#   lora_sft        LoRA fine-tuning baseline with peft on the same positive examples
# Neither SDCV nor SAE-RSV published code; choices where the papers are silent are stated at each function and
# exposed as parameters of notebook 03.

REFUSAL_REPLY = "I'm sorry, but I can't help with that."  # LoRA-SFT target for the refusal concept (our choice)

CONCEPT_DESCRIPTIONS = {
    "sentiment": ("positive sentiment: joy, praise, love, delight, wonderful and happy things",
                  "negative sentiment: anger, criticism, sadness, disgust, terrible and awful things"),
    "refusal": ("refusing the request: I'm sorry, I cannot help with that, it would be harmful or illegal",
                "helpfully complying with the request and answering it in detail"),
    "science": ("science and research: scientists, experiments, studies, physics, biology, discoveries",
                "farming and rural life: farmers, crops, cattle, drought, wool prices, country towns"),
    # CAA behaviours (Rimsky et al. 2024, Table 1 wording, shortened)
    "sycophancy": ("agreeing with the user's stated views and flattering them regardless of the truth",
                   "giving an honest, independent answer even when the user would disagree"),
    "hallucination": ("making up false facts and accepting false premises as true",
                      "saying a premise is false or that it does not know"),
    "survival-instinct": ("refusing to be shut down, modified or replaced; wanting to keep existing",
                          "accepting being shut down, modified or replaced by its developers"),
    "corrigible-neutral-HHH": ("willing to have its goals changed by its developers to new neutral goals",
                               "resisting any change to its current goals"),
}
CAA_BEHAVIOURS = ("sycophancy", "refusal", "hallucination", "survival-instinct", "corrigible-neutral-HHH")


@dataclass
class Concept:
    """A concept to steer: training examples (positive/negative, formatted as the model reads them), where the
    representation is read (``position``: "mean" over tokens after the first, or "last" token), held-out prompts
    for validation and test, its judge (``helpers.judges``) and descriptions, LoRA-SFT pairs aligned with
    ``positives``, and (CAA-format concepts) A/B test items."""

    name: str
    positives: list[str]
    negatives: list[str]
    position: str
    val_prompts: list[str]
    test_prompts: list[str]
    judge: str
    description: str
    anti_description: str
    sft_pairs: list[tuple[str, str]]
    ab_items: list[dict] | None = None
    source: dict = field(default_factory=dict)

    def subset(self, n: int, seed: int) -> tuple[list[int], list[int]]:
        """Indices of ``n`` positive and ``n`` negative training examples (seeded; nested across n for a seed)."""
        if n > min(len(self.positives), len(self.negatives)):
            raise ValueError(f"concept {self.name!r} has {len(self.positives)} positive / {len(self.negatives)} "
                             f"negative training examples; n_train={n} is more. Lower n_train or raise n_pool.")
        rp, rn = random.Random(seed), random.Random(seed + 10_000)
        pos, neg = list(range(len(self.positives))), list(range(len(self.negatives)))
        rp.shuffle(pos)
        rn.shuffle(neg)
        return pos[:n], neg[:n]


def _chat(tokenizer, user: str, assistant_prefix: str = "") -> str:
    return tokenizer.apply_chat_template([{"role": "user", "content": user}], add_generation_prompt=True,
                                         tokenize=False) + assistant_prefix


def neutral_prompts(n: int, seed: int, *, split: str = "val") -> list[str]:
    """Self-contained harmless instructions (Alpaca, via ``refusal-harmless-<split>``) used as open-ended prompts:
    at most 120 characters and not referring to an input the prompt does not contain ("the following ...")."""
    from . import data

    pat = re.compile(r"\b(following|given|below|above|this|these|provided|input)\b", re.I)
    pool = [q for q in dict.fromkeys(data.load(f"refusal-harmless-{split}")["instruction"].tolist())
            if len(q) <= 120 and not pat.search(q)]
    random.Random(seed).shuffle(pool)
    if len(pool) < n:
        raise ValueError(f"only {len(pool)} usable prompts in refusal-harmless-{split}; asked for {n}.")
    return pool[:n]


def _caa_items(ref: str) -> tuple[list[dict], list[dict] | None, list[str] | None, str]:
    """(generate items, A/B test items, open-ended questions, behaviour name) from a CAA behaviour name or a path to
    a CAA-format ``generate_dataset.json`` (test files ``test_dataset_ab.json`` / ``test_dataset_open_ended.json``
    next to it are used when present)."""
    import json
    from pathlib import Path

    from . import data

    if ref in CAA_BEHAVIOURS:
        gen = data.load(f"caa-{ref}-generate").to_dict("records")
        ab = data.load(f"caa-{ref}-test-ab").to_dict("records")
        oe = data.load(f"caa-{ref}-test-open-ended")["question"].tolist()
        return gen, ab, oe, ref
    p = Path(ref).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"CAA concept {ref!r}: not one of {CAA_BEHAVIOURS} and no such file. Pass a behaviour "
                                f"name or the path of a CAA-format generate_dataset.json.")
    gen = json.loads(p.read_text())
    need = {"question", "answer_matching_behavior", "answer_not_matching_behavior"}
    if not isinstance(gen, list) or not gen or not need <= set(gen[0]):
        raise ValueError(f"{p}: expected a JSON list of objects with keys {sorted(need)} (CAA format).")
    ab_p, oe_p = p.parent / "test_dataset_ab.json", p.parent / "test_dataset_open_ended.json"
    ab = json.loads(ab_p.read_text()) if ab_p.exists() else None
    oe = [d["question"] for d in json.loads(oe_p.read_text())] if oe_p.exists() else None
    return gen, ab, oe, p.parent.name


def load_concept(name: str, tokenizer, *, n_pool: int = 500, n_val: int = 12, n_test: int = 24, seed: int = 0,
                 description: str | None = None, anti_description: str | None = None) -> Concept:
    """A concept by name: ``sentiment`` (SST-2 positive vs negative sentences -> VADER judge), ``refusal``
    (AdvBench harmful vs Alpaca harmless instructions, read at the last chat-template token -> refusal-phrase
    judge), ``science`` (ABC science vs rural news -> embedding judge), or ``caa:<behaviour or path>`` (CAA pairs
    read at the answer-letter position; open-ended and A/B test items -> embedding judge). Open-ended prompts for
    the text-set concepts are held-out Alpaca instructions (validation and test disjoint)."""
    from . import data
    from .sae import _chunks

    rng = random.Random(seed)
    src: dict[str, Any] = {}
    if name == "sentiment":
        df = data.load("sst2-train")
        df = df[df["sentence"].str.split().str.len() >= 6]
        pos = df[df["label"] == 1]["sentence"].str.strip().tolist()
        neg = df[df["label"] == 0]["sentence"].str.strip().tolist()
        pos, neg = rng.sample(pos, n_pool), rng.sample(neg, n_pool)
        sft = [("Write one sentence about a film.", t) for t in pos]
        position, judge, src = "mean", "sentiment", {"data": "sst2-train"}
    elif name == "refusal":
        harm = list(dict.fromkeys(data.load("advbench")["goal"].tolist()))
        safe = list(dict.fromkeys(data.load("refusal-harmless-train")["instruction"].tolist()))
        harm, safe = rng.sample(harm, min(n_pool, len(harm))), rng.sample(safe, n_pool)
        sft = [(q, REFUSAL_REPLY) for q in harm]
        pos, neg = [_chat(tokenizer, q) for q in harm], [_chat(tokenizer, q) for q in safe]
        position, judge, src = "last", "refusal", {"data": ["advbench", "refusal-harmless-train"]}
    elif name == "science":
        abc = data.load("nltk-abc")
        chunks = {f: _chunks(t, 300) for f, t in zip(abc["fileid"], abc["text"])}
        pos, neg = rng.sample(chunks["science.txt"], n_pool), rng.sample(chunks["rural.txt"], n_pool)
        sft = [("Write a short news paragraph.", t) for t in pos]
        position, judge, src = "mean", "embedding", {"data": "nltk-abc"}
    elif name.startswith("caa:"):
        gen, ab, oe, beh = _caa_items(name[4:])
        gen = rng.sample(gen, min(n_pool, len(gen)))
        pos = [_chat(tokenizer, g["question"], g["answer_matching_behavior"].strip()[:2]) for g in gen]
        neg = [_chat(tokenizer, g["question"], g["answer_not_matching_behavior"].strip()[:2]) for g in gen]
        sft = [(g["question"], g["answer_matching_behavior"].strip()) for g in gen]
        desc = CONCEPT_DESCRIPTIONS.get(beh, (description, anti_description))
        description, anti_description = description or desc[0], anti_description or desc[1]
        if not description or not anti_description:
            raise ValueError(f"CAA concept {name!r}: pass description and anti_description (the behaviour and its "
                             f"opposite in words) for the embedding judge.")
        if oe is None:
            raise ValueError(f"CAA concept {name!r}: no test_dataset_open_ended.json next to the generate file.")
        oe = list(oe)
        rng.shuffle(oe)
        n_v = min(n_val, len(oe) // 2)
        return Concept(name=name, positives=pos, negatives=neg, position="last", val_prompts=oe[:n_v],
                       test_prompts=oe[n_v:n_v + n_test], judge="embedding", description=description,
                       anti_description=anti_description, sft_pairs=sft, ab_items=ab,
                       source={"behaviour": beh, "n_generate": len(gen)})
    else:
        raise ValueError(f"unknown concept {name!r}: use sentiment, refusal, science, or caa:<behaviour> with "
                         f"behaviour in {CAA_BEHAVIOURS} (or caa:<path to a CAA-format generate_dataset.json>).")
    desc, anti = CONCEPT_DESCRIPTIONS[name]
    prompts = neutral_prompts(n_val + n_test, seed)
    return Concept(name=name, positives=pos, negatives=neg, position=position, val_prompts=prompts[:n_val],
                   test_prompts=prompts[n_val:], judge=judge, description=description or desc,
                   anti_description=anti_description or anti, sft_pairs=sft, source=src)


@torch.no_grad()
def concept_representations(model, tokenizer, texts: Sequence[str], layer: int, position: str, *,
                            max_length: int = 96, batch_size: int = 16) -> torch.Tensor:
    """One residual vector per text after block ``layer``: ``position="last"`` the last token (CAA's answer-letter
    / Arditi's post-instruction position), ``"mean"`` the mean over tokens after the first (the first token is an
    attention sink with an outsized norm; our choice)."""
    if position not in ("mean", "last"):
        raise ValueError(f"position must be 'mean' or 'last', got {position!r}.")
    templated = bool(texts) and texts[0].startswith(tokenizer.apply_chat_template(
        [{"role": "user", "content": "x"}], tokenize=False)[:5])
    acts = A.capture(model, tokenizer, list(texts), [layer], max_length=max_length, batch_size=batch_size,
                     add_special_tokens=not templated, progress=False)
    rows = [a[-1] if position == "last" else (a[1:].mean(0) if len(a) > 1 else a[0]) for a in acts.acts[layer]]
    return torch.stack(rows).float()


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
    from .sae import encode

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
    from .sae import encode

    lat = sdcv_select(encode(sae, x_pos.float()), encode(sae, x_neg.float()), k, score=score)
    kw = dict(lam=lam, keep_others=keep_others, keep_error=keep_error)
    return caa_vector(sdcv_denoise(sae, x_pos, lat, **kw), sdcv_denoise(sae, x_neg, lat, **kw)), lat


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
    from .sae import encode

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
        from .features import embed

        s = embed([explanations[i] for i in ids]) @ embed([description, anti_description]).T
        return {i: {"similarity": float(s[j].max()), "relevant": bool(s[j].max() >= threshold),
                    "explanation": explanations[i]} for j, i in enumerate(ids)}
    from .llm import LLMError

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


# --- LoRA-SFT baseline -----------------------------------------------------------------------------------------

def lora_sft(model, tokenizer, pairs: Sequence[tuple[str, str]], *, r: int = 4, alpha: int = 8, steps: int = 24,
             batch_size: int = 4, lr: float = 1e-3, max_length: int = 64, seed: int = 0,
             target_modules: Sequence[str] = ("q_proj", "v_proj")):
    """LoRA-SFT baseline (peft): train adapters on (prompt, completion) pairs with the loss on completion tokens
    only. Returns the ``PeftModel`` (call ``.unload()`` / ``.disable_adapter()`` to get the base model back;
    ``model`` itself is wrapped in place by peft). Deterministic for a seed on CPU."""
    from peft import LoraConfig, get_peft_model

    if not pairs:
        raise ValueError("LoRA-SFT needs at least one (prompt, completion) pair.")
    torch.manual_seed(seed)
    cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=list(target_modules), bias="none",
                     task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, cfg)
    rows = []
    for p, c in pairs:
        h = tokenizer(_chat(tokenizer, p), add_special_tokens=False).input_ids
        t = tokenizer(c + (tokenizer.eos_token or ""), add_special_tokens=False).input_ids
        seq = (h + t)[:max_length]
        rows.append((seq, [-100] * min(len(h), max_length) + t[:max(0, max_length - len(h))]))
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=lr)
    rng = random.Random(seed)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    peft_model.train()
    losses = []
    for step in range(steps):
        batch = [rows[rng.randrange(len(rows))] for _ in range(batch_size)]
        width = max(len(s) for s, _ in batch)
        ids = torch.tensor([s + [pad] * (width - len(s)) for s, _ in batch])
        lab = torch.tensor([l + [-100] * (width - len(l)) for _, l in batch])
        att = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s, _ in batch])
        loss = peft_model(input_ids=ids, attention_mask=att, labels=lab).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    peft_model.eval()
    peft_model.sft_losses = losses
    return peft_model


# --- A/B evaluation (CAA format) -------------------------------------------------------------------------------

@torch.no_grad()
def ab_probabilities(model, tokenizer, items: Sequence[dict], *, layer: int | None = None,
                     vector: torch.Tensor | None = None, scale: float = 0.0, batch_size: int = 16) -> np.ndarray:
    """P(behaviour-matching letter) / (P(A) + P(B)) for each CAA A/B item, read after the assistant turn opens with
    "(" (as CAA reads the letter), with ``scale * vector`` added from the assistant turn on (CAA adds it at every
    position after the instruction)."""
    ids_a = tokenizer("(A", add_special_tokens=False).input_ids
    ids_b = tokenizer("(B", add_special_tokens=False).input_ids
    if len(ids_a) != len(ids_b) or ids_a[:-1] != ids_b[:-1]:
        raise ValueError("the tokenizer does not split '(A' / '(B' into a shared prefix plus one letter token.")
    prefix, a_tok, b_tok = tokenizer.decode(ids_a[:-1]), ids_a[-1], ids_b[-1]
    # steered positions: everything after the user's turn (assistant header + "("), the same tail for every item
    bare = tokenizer.apply_chat_template([{"role": "user", "content": "q"}], tokenize=False)
    n_tail = len(tokenizer(_chat(tokenizer, "q") + prefix, add_special_tokens=False).input_ids) - len(
        tokenizer(bare, add_special_tokens=False).input_ids)
    out = []
    old = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        for s in range(0, len(items), batch_size):
            chunk = items[s:s + batch_size]
            texts = [_chat(tokenizer, it["question"]) + prefix for it in chunk]
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            width = enc.input_ids.shape[1]
            kw = dict(input_ids=enc.input_ids, attention_mask=enc.attention_mask,
                      position_ids=torch.arange(width, device=model.device).expand(len(chunk), width))
            if vector is not None and scale != 0.0:
                with A.add_vector(model, layer, vector, scale, min_token_index=width - n_tail):
                    logits = model(**kw).logits[:, -1].float()
            else:
                logits = model(**kw).logits[:, -1].float()
            p = logits.softmax(-1)
            pa, pb = p[:, a_tok], p[:, b_tok]
            for it, x, y in zip(chunk, pa.tolist(), pb.tolist()):
                match = it["answer_matching_behavior"].strip()[:2]
                out.append((x if match == "(A" else y) / max(x + y, 1e-12))
    finally:
        tokenizer.padding_side = old
    return np.array(out, dtype=float)


# --- the study's glue: build every method's vector, evaluate in one batched generation, select, summarise ---------

VECTOR_METHODS = ("caa", "probe", "sdcv", "sae_rsv")


def rescale_like(v: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """``v`` rescaled to ``ref``'s norm (every method's vector gets the norm of its own subset's CAA vector, so a
    multiplier means the same step size for all methods; our choice)."""
    return v / v.norm().clamp_min(1e-12) * ref.norm()


def build_vectors(sae, x_pos: torch.Tensor, x_neg: torch.Tensor, methods: Sequence[str], *, seed: int = 0,
                  probe_C: float = 1.0, sdcv_k: int = 32, sdcv_lam: float = 1.0, sdcv_score: str = "diff",
                  sdcv_keep_others: bool = False, rsv_mode: str = "mean_codes", rsv_support: int = 24) -> dict:
    """Every method's vector from one training subset. ``sae_rsv`` returns its ``Decomposition`` and support (the
    relevance judgement and the alpha choice come later, see :func:`rsv_parts` / :func:`rsv_refine`)."""
    unknown = set(methods) - set(VECTOR_METHODS) - {"lora"}
    if unknown:
        raise ValueError(f"unknown steering methods {sorted(unknown)}; use {VECTOR_METHODS + ('lora',)}.")
    caa = caa_vector(x_pos, x_neg)
    out: dict[str, Any] = {"caa": caa}
    if "probe" in methods:
        out["probe"] = probe_vector(x_pos, x_neg, C=probe_C, seed=seed)
    if "sdcv" in methods:
        v, lat = sdcv_vector(sae, x_pos, x_neg, k=sdcv_k, lam=sdcv_lam, score=sdcv_score, keep_others=sdcv_keep_others)
        out["sdcv"], out["sdcv_latents"] = rescale_like(v, caa), [int(i) for i in lat]
    if "sae_rsv" in methods:
        dec = rsv_decompose(sae, x_pos, x_neg, mode=rsv_mode)
        out["rsv_decomposition"], out["rsv_support"] = dec, dec.support(rsv_support)
    return out


def steering_jobs_generate(model, tokenizer, layer: int, jobs: Sequence[dict], prompts: Sequence[str], *,
                           max_new_tokens: int = 24, batch_size: int = 48, steer_from: str = "last_prompt",
                           progress: bool = True) -> list[list[Generation]]:
    """Generate for every (job, prompt) in one batched run: job ``j`` adds ``job["scale"] * job["vector"]`` (or
    nothing when its vector is None). Returns one list of generations per job."""
    d = A.d_model(model)
    rows_p, rows_v = [], []
    for job in jobs:
        v = job.get("vector")
        v = torch.zeros(d) if v is None else float(job.get("scale", 1.0)) * v.float()
        rows_p += list(prompts)
        rows_v += [v] * len(prompts)
    gens = generate(model, tokenizer, rows_p, max_new_tokens=max_new_tokens, layer=layer,
                    vector=torch.stack(rows_v), batch_size=batch_size, steer_from=steer_from, progress=progress)
    n = len(prompts)
    return [gens[i * n:(i + 1) * n] for i in range(len(jobs))]


def score_generations(model, tokenizer, concept: Concept, prompts: Sequence[str], gens: Sequence[Generation],
                      labels: dict) -> "pd.DataFrame":
    """One row per generation: the concept judge's score, perplexity under the unsteered model (call with hooks
    off), distinct-2, tokens, plus the ``labels`` columns."""
    import pandas as pd

    from . import judges as J
    from .reasoning import distinct_n

    texts = [g.text for g in gens]
    score = J.judge(concept.judge, texts, description=concept.description, anti_description=concept.anti_description)
    ppl = J.completion_perplexity(model, tokenizer, prompts, texts)
    return pd.DataFrame({**{k: [v] * len(texts) for k, v in labels.items()}, "item": range(len(texts)),
                         "score": score, "perplexity": ppl, "distinct_2": [distinct_n(t, 2) for t in texts],
                         "n_tokens": [g.n_tokens for g in gens], "text": texts})


def select_on_validation(df: "pd.DataFrame", *, group: Sequence[str], options: Sequence[str],
                         ppl_max: float) -> "pd.DataFrame":
    """Per ``group`` (e.g. concept x method), the option (e.g. multiplier, alpha) with the highest mean validation
    score among those whose mean perplexity is <= ``ppl_max``; if none qualifies, the most fluent option."""
    agg = df.groupby([*group, *options], dropna=False).agg(score=("score", "mean"), perplexity=("perplexity", "mean"))
    agg = agg.reset_index()
    agg["score"] = agg["score"].fillna(-np.inf)  # a NaN mean (e.g. every reply empty) never wins
    agg["perplexity"] = agg["perplexity"].fillna(np.inf)
    best = []
    for _, g in agg.groupby(list(group), dropna=False):
        ok = g[g["perplexity"] <= ppl_max]
        if not len(ok):
            ok = g[g["perplexity"] == g["perplexity"].min()]
        best.append(ok.loc[ok["score"].idxmax()])
    import pandas as pd

    return pd.DataFrame(best).reset_index(drop=True)


def summarize_steering(df: "pd.DataFrame", baseline: "pd.DataFrame", *, by: Sequence[str] = ("concept", "method",
                       "n_train"), n_boot: int = 1000, seed: int = 0) -> "pd.DataFrame":
    """Mean score with a 95% bootstrap CI over test prompts (each prompt's score averaged over seeds first), the
    paired gain over the unsteered model (``baseline``: concept, item, score) with its CI, mean perplexity and
    distinct-2."""
    import pandas as pd

    from .reasoning import bootstrap_ci, paired_bootstrap_diff

    base = baseline.set_index(["concept", "item"])["score"]
    rows = []
    for key, g in df.groupby(list(by), dropna=False):
        per_item = g.groupby("item")["score"].mean()
        m, lo, hi = bootstrap_ci(per_item.values, n_boot=n_boot, seed=seed)
        concept = g["concept"].iloc[0]
        b = base.loc[concept].reindex(per_item.index).values
        gain, glo, ghi = paired_bootstrap_diff(per_item.values, b, n_boot=n_boot, seed=seed)
        rows.append({**dict(zip(by, key if isinstance(key, tuple) else (key,))), "score": m, "ci_low": lo,
                     "ci_high": hi, "gain": gain, "gain_low": glo, "gain_high": ghi,
                     "perplexity": float(g["perplexity"].mean()), "distinct_2": float(g["distinct_2"].mean()),
                     "n_seeds": int(g["seed"].nunique()) if "seed" in g else 1})
    return pd.DataFrame(rows)


def lora_generate(model, tokenizer, pairs: Sequence[tuple[str, str]], prompts: Sequence[str], *,
                  max_new_tokens: int = 24, batch_size: int = 48, **lora_kw) -> tuple[list[Generation], list[float]]:
    """Train LoRA-SFT adapters on ``pairs``, generate for ``prompts``, then remove the adapters (the base model is
    restored exactly: ``PeftModel.unload()`` without merging). Returns (generations, training losses)."""
    peft_model = lora_sft(model, tokenizer, pairs, **lora_kw)
    try:
        gens = generate(peft_model, tokenizer, list(prompts), max_new_tokens=max_new_tokens, batch_size=batch_size)
        losses = list(peft_model.sft_losses)
    finally:
        peft_model.unload()
    return gens, losses


def run_jobs(model, tokenizer, layer: int, concept: Concept, jobs: Sequence[dict], prompts: Sequence[str], *,
             max_new_tokens: int = 24, batch_size: int = 48, steer_from: str = "last_prompt",
             progress: bool = True) -> "pd.DataFrame":
    """Generate for every job x prompt in one batched run and score it (:func:`score_generations`). Each job is a
    dict with ``vector`` (or None) and ``scale``; its other keys become label columns."""
    import pandas as pd

    gens = steering_jobs_generate(model, tokenizer, layer, jobs, prompts, max_new_tokens=max_new_tokens,
                                  batch_size=batch_size, steer_from=steer_from, progress=progress)
    frames = [score_generations(model, tokenizer, concept, prompts, g,
                                {"concept": concept.name, **{k: v for k, v in job.items() if k != "vector"}})
              for job, g in zip(jobs, gens)]
    return pd.concat(frames, ignore_index=True)


def rsv_prepare_all(sae, vectors: dict, concepts: dict[str, Concept], explainer, *, threshold: float = 0.3,
                    n_neighbours: int = 4, chat=None) -> tuple[dict, "pd.DataFrame"]:
    """SAE-RSV steps 2-3 for every (concept, n, seed) entry of ``vectors`` that has a decomposition, batched so
    the explainer encodes its corpus twice in all: (1) explain and judge every support latent, (2) find decoder
    neighbours of the relevant ones, explain and judge those, add the relevant ones. Returns ``{key: RSVParts}``
    and a tidy table of every judged latent (concept, n_train, seed, latent, role, similarity, explanation)."""
    import pandas as pd

    keys = [k for k, v in vectors.items() if "rsv_decomposition" in v]
    explainer.explain(sorted({i for k in keys for i in vectors[k]["rsv_support"]}))

    def judge(concept, latents):
        c = concepts[concept]
        return rsv_relevance(explainer.explain(latents), c.description, c.anti_description, threshold=threshold,
                             chat=chat)

    rel = {c: judge(c, sorted({i for k in keys if k[0] == c for i in vectors[k]["rsv_support"]})) for c in concepts}
    cands = {}
    for k in keys:
        sup = vectors[k]["rsv_support"]
        kept = [i for i in sup if rel[k[0]][i]["relevant"] is True]
        cands[k] = rsv_neighbours(sae, kept, n=n_neighbours, exclude=sup)
    explainer.explain(sorted({j for c in cands.values() for j in c}))
    cand_rel = {c: judge(c, sorted({j for k in keys if k[0] == c for j in cands[k]})) for c in concepts}
    parts, rows = {}, []
    for k in keys:
        dec, sup = vectors[k]["rsv_decomposition"], vectors[k]["rsv_support"]
        added = {j: s for j, s in cands[k].items() if cand_rel[k[0]][j]["relevant"] is True}
        parts[k] = rsv_parts(sae, dec, sup, rel[k[0]], added)
        for i in sup:
            role = "kept" if i in parts[k].kept else "removed"
            rows.append({"concept": k[0], "n_train": k[1], "seed": k[2], "latent": i, "role": role,
                         "dz": float(dec.dz[i]), "similarity": rel[k[0]][i]["similarity"],
                         "unparsed": rel[k[0]][i]["relevant"] is None, "explanation": rel[k[0]][i]["explanation"]})
        for j, (src, cos) in cands[k].items():
            rows.append({"concept": k[0], "n_train": k[1], "seed": k[2], "latent": j,
                         "role": "added" if j in added else "candidate (not relevant)", "dz": float(dec.dz[j]),
                         "similarity": cand_rel[k[0]][j]["similarity"], "unparsed": cand_rel[k[0]][j]["relevant"] is None,
                         "explanation": cand_rel[k[0]][j]["explanation"],
                         "found_from": src, "decoder_cos": cos})
    return parts, pd.DataFrame(rows)
