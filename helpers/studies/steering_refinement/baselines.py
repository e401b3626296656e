"""Study 2 baselines: LoRA-SFT on the positive examples (peft) and the CAA A/B read-out."""
from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import torch

from helpers.core import activations as A
from helpers.core.text import chat_prompt

__all__ = ["ab_probabilities", "lora_sft"]


# --- LoRA-SFT baseline -----------------------------------------------------------------------------------------

def lora_sft(model, tokenizer, pairs: Sequence[tuple[str, str]], *, r: int = 4, alpha: int = 8, steps: int = 24,
             batch_size: int = 4, lr: float = 1e-3, max_length: int = 1024, seed: int = 0,
             target_modules: Sequence[str] = ("q_proj", "v_proj")):
    """LoRA-SFT baseline (peft): train adapters on (prompt, completion) pairs with the loss on completion tokens
    only (sequences up to ``max_length`` tokens: long enough for whole CAA questions and completions; a pair whose
    prompt alone is longer is an error, never a row with every label masked). Returns the ``PeftModel`` (call
    ``.unload()`` / ``.disable_adapter()`` to get the base model back; ``model`` itself is wrapped in place by peft).
    Deterministic for a seed on CPU."""
    from peft import LoraConfig, get_peft_model  # optional: only this baseline needs peft

    if not pairs:
        raise ValueError("LoRA-SFT needs at least one (prompt, completion) pair.")
    rows = []
    for p, c in pairs:
        h = tokenizer(chat_prompt(tokenizer, p), add_special_tokens=False).input_ids
        t = tokenizer(c + (tokenizer.eos_token or ""), add_special_tokens=False).input_ids
        if len(h) >= max_length:
            raise ValueError(f"a LoRA-SFT prompt has {len(h)} tokens, max_length={max_length}: its completion would "
                             f"be cut away entirely. Raise max_length.")
        seq = (h + t)[:max_length]
        rows.append((seq, [-100] * min(len(h), max_length) + t[:max(0, max_length - len(h))]))
    torch.manual_seed(seed)
    cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=list(target_modules), bias="none",
                     task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, cfg)
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=lr)
    rng = random.Random(seed)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    peft_model.train()
    losses = []
    for _ in range(steps):
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
    bare = chat_prompt(tokenizer, "q", generation_prompt=False)
    n_tail = len(tokenizer(chat_prompt(tokenizer, "q", assistant_prefix=prefix), add_special_tokens=False).input_ids) - len(
        tokenizer(bare, add_special_tokens=False).input_ids)
    out = []
    old = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        for s in range(0, len(items), batch_size):
            chunk = items[s:s + batch_size]
            texts = [chat_prompt(tokenizer, it["question"], assistant_prefix=prefix) for it in chunk]
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


