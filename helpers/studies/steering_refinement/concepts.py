"""Study 2 - steering vectors from small data, refined through an SAE (notebook 03): the concepts.

Methods (one vector per concept, layer, training subset), all applied through :func:`helpers.core.steering.generate`:

* CAA / diff-in-means (Rimsky et al. 2024, arXiv 2312.06681, Eq. 1), the logistic probe, SDCV ("Denoising Concept
  Vectors with Sparse Autoencoders", arXiv 2505.15038) and SAE-RSV ("Enhancing LLM Steering through SAE-Based Vector
  Refinement", arXiv 2509.23799): :mod:`helpers.core.steering` (one type each, :func:`~helpers.core.steering.vector_method`);
* LoRA-SFT with peft on the same positive examples (:mod:`.baselines`).

Neither SDCV nor SAE-RSV published code; choices where the papers are silent are stated at each function and exposed
as parameters of notebook 03. Concept descriptions, judges and data live in ``helpers/registry/concepts.yaml``.
"""
from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from helpers import registry
from helpers.core import activations as A
from helpers.core import data
from helpers.core.text import chat_prompt, chunk_text

__all__ = ["CAA_BEHAVIOURS", "CONCEPT_DESCRIPTIONS", "Concept", "REFUSAL_REPLY", "concept_representations",
           "load_concept", "neutral_prompts"]

REFUSAL_REPLY = registry.concept("refusal").sft_reply  # LoRA-SFT target for the refusal concept (our choice)
#: concept -> (description, anti-description), from the registry.
CONCEPT_DESCRIPTIONS = {n: (c.description, c.anti_description) for n, c in registry.entries("concepts").items()}
CAA_BEHAVIOURS = registry.caa_behaviours()


@dataclass
class Concept:
    """A concept to steer: training examples (positive/negative, formatted as the model reads them), where the
    representation is read (``position``: "mean" over tokens after the first, or "last" token), held-out prompts
    for validation and test, its judge (``helpers.core.judges``) and descriptions, LoRA-SFT pairs aligned with
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


def neutral_prompts(n: int, seed: int, *, split: str = "val") -> list[str]:
    """Self-contained harmless instructions (Alpaca, via ``refusal-harmless-<split>``) used as open-ended prompts:
    at most 120 characters and not referring to an input the prompt does not contain ("the following ...")."""
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
        pos, neg = [chat_prompt(tokenizer, q) for q in harm], [chat_prompt(tokenizer, q) for q in safe]
        position, judge, src = "last", "refusal", {"data": ["advbench", "refusal-harmless-train"]}
    elif name == "science":
        abc = data.load("nltk-abc")
        chunks = {f: chunk_text(t, 300) for f, t in zip(abc["fileid"], abc["text"])}
        pos, neg = rng.sample(chunks["science.txt"], n_pool), rng.sample(chunks["rural.txt"], n_pool)
        sft = [("Write a short news paragraph.", t) for t in pos]
        position, judge, src = "mean", "embedding", {"data": "nltk-abc"}
    elif name.startswith("caa:"):
        gen, ab, oe, beh = _caa_items(name[4:])
        gen = rng.sample(gen, min(n_pool, len(gen)))
        pos = [chat_prompt(tokenizer, g["question"], assistant_prefix=g["answer_matching_behavior"].strip()[:2]) for g in gen]
        neg = [chat_prompt(tokenizer, g["question"], assistant_prefix=g["answer_not_matching_behavior"].strip()[:2]) for g in gen]
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
    templated = bool(texts) and texts[0].startswith(chat_prompt(tokenizer, "x", generation_prompt=False)[:5])
    acts = A.capture(model, tokenizer, list(texts), [layer], max_length=max_length, batch_size=batch_size,
                     add_special_tokens=not templated, progress=False)
    rows = [a[-1] if position == "last" else (a[1:].mean(0) if len(a) > 1 else a[0]) for a in acts.acts[layer]]
    return torch.stack(rows).float()


