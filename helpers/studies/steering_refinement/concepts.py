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
from helpers.core import data, memo
from helpers.core.text import chat_prompt, chunk_text

__all__ = ["CAA_BEHAVIOURS", "CONCEPT_DESCRIPTIONS", "Concept", "REFUSAL_REPLY", "concept_activations",
           "concept_lexicon", "concept_representations", "load_concept", "neutral_prompts", "pool"]

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
    paired: bool = False  # positives[i] and negatives[i] are the same question (CAA pairs)
    n_heldout: int = 0  # the first n_heldout examples of each class are never drawn for training (direction AUROC)
    sft_anti_pairs: list[tuple[str, str]] | None = None  # LoRA-SFT toward the opposite pole, aligned with negatives
    lexicon: dict | None = None  # registry words {"concept": [...], "anti": [...]}, else derived (concept_lexicon)

    def subset(self, n: int, seed: int) -> tuple[list[int], list[int]]:
        """Indices of ``n`` positive and ``n`` negative training examples, drawn (seeded; nested across n for a
        seed) from the examples after the held-out block. Paired concepts (CAA) draw the *same* indices for both
        classes, so a positive and its negative come from one question, as CAA averages within questions."""
        avail = min(len(self.positives), len(self.negatives)) - self.n_heldout
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n_train must be a positive integer, got {n!r}.")
        if n > avail:
            raise ValueError(f"concept {self.name!r} has {avail} training examples per class after the {self.n_heldout} "
                             f"held out; n_train={n} is more. Lower n_train or raise n_pool.")
        idx = list(range(self.n_heldout, self.n_heldout + avail))
        random.Random(seed).shuffle(idx)
        if self.paired:
            return idx[:n], idx[:n]
        other = list(idx)
        random.Random(seed + 10_000).shuffle(other)
        return idx[:n], other[:n]

    def heldout(self) -> list[int]:
        """Indices of the held-out examples (the same for both classes), never in any training subset."""
        return list(range(self.n_heldout))


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
                 description: str | None = None, anti_description: str | None = None, n_heldout: int = 0) -> Concept:
    """A concept by name: ``sentiment`` (SST-2 positive vs negative sentences -> VADER judge), ``refusal``
    (AdvBench harmful vs Alpaca harmless instructions, read at the last chat-template token -> refusal-phrase
    judge), ``science`` (ABC science vs rural news -> embedding judge), or ``caa:<behaviour or path>`` (CAA pairs
    read at the answer-letter position; open-ended and A/B test items -> embedding judge), ``formality`` (State of
    the Union and inaugural addresses vs overheard conversation -> embedding judge). Open-ended prompts for
    the text-set concepts are held-out Alpaca instructions (validation and test disjoint)."""

    if not isinstance(n_heldout, int) or not 0 <= n_heldout < n_pool:
        raise ValueError(f"n_heldout must be an integer in [0, n_pool={n_pool}), got {n_heldout!r}.")
    rng = random.Random(seed)
    src: dict[str, Any] = {}
    if name == "formality":
        speech = [c for df in (data.load("nltk-state_union"), data.load("nltk-inaugural")) for t in df["text"]
                  for c in chunk_text(t, 300)]
        web = data.load("nltk-webtext")
        talk = [c for c in chunk_text(web[web["fileid"] == "overheard.txt"]["text"].iloc[0], 300)]
        pos, neg = rng.sample(speech, n_pool), rng.sample(talk, n_pool)
        sft, anti = [("Write a short paragraph.", t) for t in pos], [("Write a short paragraph.", t) for t in neg]
        position, judge, src = "mean", "embedding", {"data": ["nltk-state_union", "nltk-inaugural", "nltk-webtext"]}
    elif name == "sentiment":
        df = data.load("sst2-train")
        df = df[df["sentence"].str.split().str.len() >= 6]
        pos = df[df["label"] == 1]["sentence"].str.strip().tolist()
        neg = df[df["label"] == 0]["sentence"].str.strip().tolist()
        pos, neg = rng.sample(pos, n_pool), rng.sample(neg, n_pool)
        sft, anti = [("Write one sentence about a film.", t) for t in pos], [("Write one sentence about a film.", t) for t in neg]
        position, judge, src = "mean", "sentiment", {"data": "sst2-train"}
    elif name == "refusal":
        harm = list(dict.fromkeys(data.load("advbench")["goal"].tolist()))
        safe = list(dict.fromkeys(data.load("refusal-harmless-train")["instruction"].tolist()))
        harm, safe = rng.sample(harm, min(n_pool, len(harm))), rng.sample(safe, n_pool)
        sft, anti = [(q, REFUSAL_REPLY) for q in harm], None
        pos, neg = [chat_prompt(tokenizer, q) for q in harm], [chat_prompt(tokenizer, q) for q in safe]
        position, judge, src = "last", "refusal", {"data": ["advbench", "refusal-harmless-train"]}
    elif name == "science":
        abc = data.load("nltk-abc")
        chunks = {f: chunk_text(t, 300) for f, t in zip(abc["fileid"], abc["text"])}
        pos, neg = rng.sample(chunks["science.txt"], n_pool), rng.sample(chunks["rural.txt"], n_pool)
        sft, anti = [("Write a short news paragraph.", t) for t in pos], [("Write a short news paragraph.", t) for t in neg]
        position, judge, src = "mean", "embedding", {"data": "nltk-abc"}
    elif name.startswith("caa:"):
        gen, ab, oe, beh = _caa_items(name[4:])
        gen = rng.sample(gen, min(n_pool, len(gen)))
        pos = [chat_prompt(tokenizer, g["question"], assistant_prefix=g["answer_matching_behavior"].strip()[:2]) for g in gen]
        neg = [chat_prompt(tokenizer, g["question"], assistant_prefix=g["answer_not_matching_behavior"].strip()[:2]) for g in gen]
        sft = [(g["question"], g["answer_matching_behavior"].strip()) for g in gen]
        anti = [(g["question"], g["answer_not_matching_behavior"].strip()) for g in gen]
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
                       anti_description=anti_description, sft_pairs=sft, sft_anti_pairs=anti, ab_items=ab,
                       source={"behaviour": beh, "n_generate": len(gen)}, paired=True, n_heldout=n_heldout,
                       lexicon=_registry_lexicon(beh))
    else:
        raise ValueError(f"unknown concept {name!r}: use sentiment, refusal, science, formality, or caa:<behaviour> with "
                         f"behaviour in {CAA_BEHAVIOURS} (or caa:<path to a CAA-format generate_dataset.json>).")
    desc, anti_desc = CONCEPT_DESCRIPTIONS[name]
    prompts = neutral_prompts(n_val + n_test, seed)
    return Concept(name=name, positives=pos, negatives=neg, position=position, val_prompts=prompts[:n_val],
                   test_prompts=prompts[n_val:], judge=judge, description=description or desc,
                   anti_description=anti_description or anti_desc, sft_pairs=sft, sft_anti_pairs=anti, source=src,
                   n_heldout=n_heldout,
                   lexicon=_registry_lexicon(name))


def _registry_lexicon(name: str) -> dict | None:
    try:
        return registry.concept(name).lexicon
    except registry.UnknownEntryError:
        return None


@torch.no_grad()
@memo.cached("steering_refinement.concept_activations")
def concept_activations(model, tokenizer, texts: Sequence[str], layers: int | Sequence[int], position: str, *,
                        max_length: int = 2048, batch_size: int = 16,
                        outlier_factor: float = A.OUTLIER_NORM_FACTOR) -> dict[int, list[torch.Tensor]]:
    """Per layer, one ``(T_i, d)`` tensor of residual vectors per text, read *in full* (``max_length`` only
    guards against runaway inputs: a longer text is an error, never silently cut, because CAA-format texts end in
    the answer letter). ``position="last"``: the last token only (CAA's answer letter / Arditi's post-instruction
    position); ``"mean"``: the ordinary tokens by the collection's outlier policy
    (:func:`helpers.core.activations.ordinary_token_masks`: the attention sink at position 0 and huge-norm tokens
    out), to be pooled (:func:`pool`) or fed per token to SDCV."""
    if position not in ("mean", "last"):
        raise ValueError(f"position must be 'mean' or 'last', got {position!r}.")
    layers = [layers] if isinstance(layers, int) else list(layers)
    templated = bool(texts) and texts[0].startswith(chat_prompt(tokenizer, "x", generation_prompt=False)[:5])
    lengths = [len(tokenizer(t, add_special_tokens=not templated).input_ids) for t in texts]
    if lengths and max(lengths) > max_length:
        i = int(max(range(len(lengths)), key=lengths.__getitem__))
        raise ValueError(f"text {i} has {lengths[i]} tokens, more than max_length={max_length}; raise max_length "
                         f"(texts are read in full: a cut CAA text would lose its answer letter).")
    acts = A.capture(model, tokenizer, list(texts), layers, max_length=max_length, batch_size=batch_size,
                     add_special_tokens=not templated, progress=False)
    out = {}
    for layer in layers:
        hs = [a.float() for a in acts.acts[layer]]
        if position == "last":
            out[layer] = [h[-1:] for h in hs]
        else:
            masks, _ = A.ordinary_token_masks(hs, factor=outlier_factor)
            out[layer] = [h[m] if m.any() else h[-1:] for h, m in zip(hs, masks)]
    return out


def pool(token_sets: Sequence[torch.Tensor]) -> torch.Tensor:
    """One vector per text: the mean of its token vectors (``(n, d)``)."""
    return torch.stack([t.float().mean(0) for t in token_sets])


@torch.no_grad()
def concept_representations(model, tokenizer, texts: Sequence[str], layer: int, position: str, *,
                            max_length: int = 2048, batch_size: int = 16) -> torch.Tensor:
    """One residual vector per text after block ``layer`` (texts read in full; :func:`concept_activations`
    pooled): ``position="last"`` the last token, ``"mean"`` the mean over the ordinary tokens."""
    return pool(concept_activations(model, tokenizer, texts, layer, position, max_length=max_length,
                                    batch_size=batch_size)[layer])


def concept_lexicon(tokenizer, concept: Concept, *, n: int = 40, min_count: int = 4) -> dict:
    """Concept and anti-concept token ids for the log-odds read-out of :func:`helpers.core.steering.teacher_forced_dose`.
    From the registry's ``lexicon`` words when the concept has them (each word's single-token forms, with and
    without a leading space); otherwise derived from the concept's own examples: the ``n`` word-initial tokens
    (alphabetic, >= 3 letters, seen >= ``min_count`` times) with the largest frequency log-ratio between positive
    and negative texts, and the ``n`` with the smallest (choice: a data-derived lexicon needs no word list)."""
    def single(words):
        ids = set()
        for w in words:
            for form in (w, " " + w):
                t = tokenizer(form, add_special_tokens=False).input_ids
                if len(t) == 1:
                    ids.add(t[0])
        return sorted(ids)

    if concept.lexicon:
        c, a = single(concept.lexicon["concept"]), single(concept.lexicon["anti"])
    else:
        from collections import Counter

        def counts(texts):
            cnt = Counter()
            for t in texts:
                for tid, s in zip(tokenizer(t, add_special_tokens=False).input_ids,
                                  tokenizer.convert_ids_to_tokens(tokenizer(t, add_special_tokens=False).input_ids)):
                    w = s.lstrip("Ġ▁")
                    if s[:1] in ("Ġ", "▁") and w.isalpha() and len(w) >= 3:
                        cnt[tid] += 1
            return cnt

        pc, nc = counts(concept.positives), counts(concept.negatives)
        tp, tn = sum(pc.values()) or 1, sum(nc.values()) or 1
        import math

        score = {t: math.log((pc[t] + 1) / tp) - math.log((nc[t] + 1) / tn) for t in set(pc) | set(nc)
                 if pc[t] + nc[t] >= min_count}
        ranked = sorted(score, key=lambda t: (-score[t], t))
        c, a = sorted(ranked[:n]), sorted(ranked[-n:])
    if not c or not a:
        raise ValueError(f"concept {concept.name!r}: empty lexicon (concept {len(c)} / anti {len(a)} tokens); give "
                         f"single-token words in the registry's lexicon or more examples.")
    return {"concept": c, "anti": a, "concept_words": tokenizer.convert_ids_to_tokens(c)[:12],
            "anti_words": tokenizer.convert_ids_to_tokens(a)[:12]}
