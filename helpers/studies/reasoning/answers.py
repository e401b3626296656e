"""Study 1: reading generations - GSM8K-style numeric answers and the reasoning-word rate."""
from __future__ import annotations

import re
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation

from helpers.core.text import word_pattern

from .reason_score import REASONING_WORDS

__all__ = ["answers_match", "extract_numeric_answer", "reflection_word_rate"]


# --------------------------------------------------------------------------------------------------
# Answers (GSM8K-style)
# --------------------------------------------------------------------------------------------------

# a minus sign counts only when not preceded by a word character or a closing bracket ("5-3" -> 5, 3)
_NUM = r"(?:(?<![\w)\]])-)?\$?-?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?"
_NUM_RE = re.compile(_NUM)


def _canon_number(s: str) -> str | None:
    s = s.replace(",", "").replace("$", "").replace(" ", "")
    neg = s.count("-") % 2 == 1
    s = s.replace("-", "")
    try:
        d = Decimal(s)
    except InvalidOperation:
        return None
    if not d.is_finite():
        return None
    if neg:
        d = -d
    if d == d.to_integral_value():
        return str(int(d))
    return format(d.normalize(), "f")


def _first_number(text: str) -> str | None:
    m = _NUM_RE.search(text)
    return _canon_number(m.group(0)) if m else None


def _last_number(text: str) -> str | None:
    ms = _NUM_RE.findall(text)
    return _canon_number(ms[-1]) if ms else None


def _boxed_contents(text: str) -> list[str]:
    out, i = [], 0
    while True:
        i = text.find("\\boxed{", i)
        if i < 0:
            return out
        j, depth = i + len("\\boxed{"), 1
        k = j
        while k < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[k], 0)
            k += 1
        out.append(text[j:k - 1] if depth == 0 else text[j:])
        i = k


def extract_numeric_answer(text: str) -> str | None:
    """The final numeric answer of a GSM8K-style solution, as a canonical string ("18", "0.5", "-3"), or None.

    Preference: the number after "####", then after the last "answer is" (or "answer:"), then in the last
    ``\\boxed{...}``, else the last number in the text. Commas, "$" and a trailing ".0" are dropped.
    """
    if not text:
        return None
    if "####" in text:
        n = _first_number(text.split("####")[-1])
        if n is not None:
            return n
    hits = list(re.finditer(r"answer\s*(?:is|:)\s*(?:approximately\s*)?", text, flags=re.IGNORECASE))
    for m in reversed(hits):
        n = _first_number(text[m.end():m.end() + 40])
        if n is not None:
            return n
    for box in reversed(_boxed_contents(text)):
        n = _first_number(box)
        if n is not None:
            return n
    return _last_number(text)


def answers_match(pred: str | None, gold: str) -> bool:
    """True when ``pred`` and ``gold`` are the same number (|diff| <= 1e-6); plain string equality otherwise."""
    if pred is None or gold is None:
        return False

    def num(x):
        c = _canon_number(str(x).strip())
        if c is None:
            c = extract_numeric_answer(str(x))
        try:
            return float(c) if c is not None else None
        except ValueError:
            return None

    a, b = num(pred), num(gold)
    if a is not None and b is not None:
        return abs(a - b) <= 1e-6
    return str(pred).strip() == str(gold).strip()




def reflection_word_rate(text: str, words: Sequence[str] = REASONING_WORDS) -> float:
    """Occurrences of the words of R (case-insensitive whole words/phrases) per 100 whitespace-separated words."""
    n = len(text.split())
    if n == 0:
        return 0.0
    hits = sum(len(word_pattern(w).findall(text)) for w in words)
    return 100.0 * hits / n


