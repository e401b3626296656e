"""Study 2 glue: every steering job in one batched generation, LoRA-SFT's generations, and SAE-RSV's batched
relevance step (the grid, read-outs and scores are in :mod:`.evaluation`)."""
from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch

from helpers.core import activations as A
from helpers.core import memo
from helpers.core.steering import (
    Generation,
    generate,
    rsv_neighbours,
    rsv_parts,
    rsv_relevance,
)

from .baselines import lora_sft
from .concepts import Concept

__all__ = ["lora_generate", "rsv_prepare_all", "steering_jobs_generate"]


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


@memo.cached("steering_refinement.lora_generate")
def lora_generate(model, tokenizer, pairs: Sequence[tuple[str, str]], prompts: Sequence[str], *,
                  max_new_tokens: int = 24, gen_batch_size: int = 48, **lora_kw) -> tuple[list[Generation], list[float]]:
    """Train LoRA-SFT adapters on ``pairs`` (``lora_kw`` go to :func:`lora_sft`, its ``batch_size`` included), generate
    for ``prompts`` in batches of ``gen_batch_size``, then remove the adapters (the base model is restored exactly:
    ``PeftModel.unload()`` without merging). Returns (generations, training losses)."""
    peft_model = lora_sft(model, tokenizer, pairs, **lora_kw)
    try:
        gens = generate(peft_model, tokenizer, list(prompts), max_new_tokens=max_new_tokens, batch_size=gen_batch_size)
        losses = list(peft_model.sft_losses)
    finally:
        peft_model.unload()
    return gens, losses


def rsv_prepare_all(sae, vectors: dict, concepts: dict[str, Concept], explainer, *, threshold: float = 0.3,
                    n_neighbours: int = 4, chat=None, relevance_fn=None) -> tuple[dict, pd.DataFrame]:
    """SAE-RSV steps 2-3 for every (concept, n, seed) entry of ``vectors`` that has a decomposition, batched so
    the explainer encodes its corpus twice in all: (1) explain and judge every support latent, (2) find decoder
    neighbours of the relevant ones, explain and judge those, add the relevant ones. Returns ``{key: RSVParts}``
    and a tidy table of every judged latent (concept, n_train, seed, latent, role, similarity, explanation).
    ``relevance_fn(concept, latents) -> {latent: {"relevant", "similarity", "explanation"}}`` replaces the
    explanation-vs-description judge (e.g. :func:`~helpers.studies.steering_refinement.rsv_context_relevance`)."""
    keys = [k for k, v in vectors.items() if "rsv_decomposition" in v]
    concepts = {c: concepts[c] for c in sorted({k[0] for k in keys})}
    explainer.explain(sorted({i for k in keys for i in vectors[k]["rsv_support"]}))

    def judge(concept, latents):
        if relevance_fn is not None:
            return relevance_fn(concept, latents)
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

