"""Text in and out of chat models: the one place the chat template is applied, and text statistics.

* :func:`chat_messages` / :func:`chat_prompt` / :func:`chat_encode`: a user turn (optional system turn, optional
  start of the assistant's reply) rendered with the tokenizer's chat template, as text or as a batch of ids.
* :func:`distinct_n`, :func:`repetition_rate`: whitespace-token statistics of generated text.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["chunk_text", "chat_encode", "chat_messages", "chat_prompt", "distinct_n", "repetition_rate", "word_pattern"]


def chat_messages(user: str | list[dict], system: str | None = None) -> list[dict]:
    """``[{"role": "system", ...}?, {"role": "user", ...}]``; a list of messages passes through (system prepended)."""
    if isinstance(user, str):
        msgs = [{"role": "user", "content": user}]
    elif isinstance(user, list) and all(isinstance(m, dict) and {"role", "content"} <= set(m) for m in user):
        msgs = list(user)
    else:
        raise TypeError(f"expected a user message (str) or a list of {{'role', 'content'}} dicts, got {type(user).__name__}.")
    return ([{"role": "system", "content": system}] if system else []) + msgs


def chat_prompt(tokenizer, user: str | list[dict], *, system: str | None = None, assistant_prefix: str = "",
                generation_prompt: bool = True) -> str:
    """The text the model reads for one chat turn (generation prompt opened), plus ``assistant_prefix``."""
    return tokenizer.apply_chat_template(chat_messages(user, system), add_generation_prompt=generation_prompt,
                                         tokenize=False) + assistant_prefix


def chat_encode(tokenizer, users: Sequence[str | list[dict]], *, system: str | None = None) -> dict:
    """A padded batch (``input_ids``, ``attention_mask``; the tokenizer's padding side) of chat turns."""
    return tokenizer.apply_chat_template([chat_messages(u, system) for u in users], add_generation_prompt=True,
                                         return_tensors="pt", padding=True, return_dict=True)


def chunk_text(text: str, size: int) -> list[str]:
    """Split on paragraph / sentence boundaries into pieces of about ``size`` characters."""
    text = " ".join(text.split())
    out, start = [], 0
    while start < len(text):
        end = min(start + size, len(text))
        if end < len(text):
            cut = text.rfind(". ", start + size // 2, end)
            end = cut + 1 if cut > 0 else end
        piece = text[start:end].strip()
        if len(piece) > 40:
            out.append(piece)
        start = end
    return out


def word_pattern(word: str) -> re.Pattern:
    """Case-insensitive whole-word (or whole-phrase, any whitespace between words) pattern."""
    parts = [re.escape(p) for p in word.split()]
    return re.compile(r"(?<![\w'])" + r"\s+".join(parts) + r"(?![\w'])", flags=re.IGNORECASE)


def _ngrams(text: str, n: int) -> list[tuple[str, ...]]:
    toks = text.split()
    return [tuple(toks[i:i + n]) for i in range(len(toks) - n + 1)]


def distinct_n(text: str, n: int = 2) -> float:
    """Distinct-n: unique n-grams / total n-grams over whitespace tokens (1.0 when the text has no n-gram)."""
    grams = _ngrams(text, n)
    return len(set(grams)) / len(grams) if grams else 1.0


def repetition_rate(text: str, n: int = 4) -> float:
    """Fraction of the n-grams that repeat an earlier n-gram of the same text (0.0 when there is no n-gram)."""
    grams = _ngrams(text, n)
    if not grams:
        return 0.0
    seen, rep = set(), 0
    for g in grams:
        rep += g in seen
        seen.add(g)
    return rep / len(grams)


