"""Study 3: the item-specific rule check, version 2 (issue 15, fix 3).

The original check (:func:`helpers.studies.scoring.skills.is_item_specific`, kept unchanged for notebook 04) looks
only at single content words and whitelists genre words (story, procedure, step, trait, character, ...), so rules
such as "Include a specific detail from the story that supports your answer" (item 7's own question) pass. This
check rejects a rule when any of these holds:

* **shared 3-word sequence**: the rule shares an ``n``-word sequence (default 3; lower-cased, punctuation
  normalised, stop words *kept*) with any item's title, stem, passage, expert rubric or sample answers. A sequence
  made only of whitelisted words (:data:`GENERIC_WORDS_V2` and stop words, e.g. "for each score") is generic
  assessment language and does not count (``exempt_generic_ngrams=False`` counts it too);
* **item word**: a content word (>= 4 letters) of the item's own texts (not the answers) that is not in :data:`GENERIC_WORDS_V2` - the original
  whitelist *minus* the genre words of ``prompts/genre_words.txt`` - nor a stop word;
* **item number**: "item 5", "question #3", "data set 2";
* **addressed to the student** ("you", "your"): rules are instructions to the rubric writer;
* **not about the rubric**: the rule names nothing a rubric-writing rule is about (rubric, descriptor, score, point,
  credit, response, answer, student, ...), e.g. "Mention the second step of the procedure".
"""
from __future__ import annotations

import re
from functools import lru_cache

from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

from .items import ReadmeInfo
from .prompts import word_list
from .skills import GENERIC_WORDS, _content_words

__all__ = ["GENERIC_WORDS_V2", "GENRE_WORDS", "RUBRIC_TERMS", "is_item_specific_ngram", "ngrams", "normalize_words"]

#: Genre words removed from the whitelist (``prompts/genre_words.txt``).
GENRE_WORDS = word_list("genre_words")
#: The v2 whitelist: the original generic words without the genre words, plus a few ordinary rubric-writing words
#: (``prompts/generic_words_v2_extra.txt``: base, treat, require, adjacent, ...).
GENERIC_WORDS_V2 = (GENERIC_WORDS - GENRE_WORDS) | (word_list("generic_words_v2_extra") - GENRE_WORDS)
#: Words that show a rule is about writing or applying a rubric (at least one must occur).
RUBRIC_TERMS = frozenset(
    "rubric rubrics descriptor descriptors score scores scoring scored point points credit credits response responses "
    "answer answers student students level levels grade grading mark marks award awarded criterion criteria "
    "section sections example examples misconception misconceptions variant variants penalize penalise accept "
    "accepted reward full partial zero".split())

_STUDENT_VOICE = re.compile(r"\b(you|your|yours|yourself)\b", re.I)
_ITEM_NUMBER = re.compile(r"\b(item|question|data\s*set|prompt)\s*#?\s*\d+\b", re.I)


def normalize_words(text: str) -> list[str]:
    """Lower-cased word tokens with punctuation normalised: curly quotes and dashes unified, every other
    non-alphanumeric character a separator; stop words kept; a possessive 's kept with its word."""
    t = (text or "").lower().replace("\u2019", "'").replace("\u2018", "'")
    return re.findall(r"[a-z0-9]+(?:'[a-z]+)?", t)


def ngrams(words: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def _generic(w: str, generic: frozenset[str]) -> bool:
    w = w.removesuffix("'s")
    return (w in generic or w in ENGLISH_STOP_WORDS or w.removesuffix("s") in generic
            or w.removesuffix("es") in generic or w.isdigit() and len(w) == 1)


@lru_cache(maxsize=256)
def _item_texts(info: ReadmeInfo, answers: tuple[str, ...]) -> tuple[list[str], set[str]]:
    """(word tokens of the item's texts and the answers, content words of the item's texts only: students'
    answers use every-day words, so they count through shared sequences, not single words)."""
    text = "\n".join([info.title, info.stem, info.passage, info.rubric])
    return normalize_words(text + "\n" + "\n".join(answers)), _content_words(text)


def is_item_specific_ngram(rule: str, infos: list[ReadmeInfo], *, sample_answers: dict | list | None = None,
                           n: int = 3, generic: frozenset[str] = GENERIC_WORDS_V2, exempt_generic_ngrams: bool = True,
                           check_voice: bool = True, require_rubric_term: bool = True) -> tuple[bool, list[str]]:
    """Whether ``rule`` is item-specific or not a rule for the rubric writer (see the module docstring).

    ``sample_answers``: the students' answers seen while optimising (a list used for every item, or a dict item ->
    list). Returns ``(rejected, reasons)``, reasons like ``"3-gram 'from the story'"``, ``"word 'vinegar'"``,
    ``"<item number>"``, ``"addressed to the student"``, ``"not about the rubric"``."""
    words = normalize_words(rule)
    rule_ngrams = ngrams(words, n)
    rule_content = {w for w in _content_words(rule) if not _generic(w, generic)}
    reasons: list[str] = []
    seen_ngrams: set[tuple[str, ...]] = set()
    hits: set[str] = set()
    for info in infos:
        if isinstance(sample_answers, dict):
            answers = tuple(str(a) for a in sample_answers.get(info.item, ()))
        else:
            answers = tuple(str(a) for a in (sample_answers or ()))
        item_words, vocab = _item_texts(info, answers)
        for g in rule_ngrams & ngrams(item_words, n):
            if exempt_generic_ngrams and all(_generic(w, generic) for w in g):
                continue
            seen_ngrams.add(g)
        vocab = {w for w in vocab if not _generic(w, generic)}
        vocab |= {w.rstrip("s") for w in vocab} | {w + "s" for w in vocab}
        hits |= {w for w in rule_content if w in vocab or w.rstrip("s") in vocab}
    reasons += [f"{n}-gram {' '.join(g)!r}" for g in sorted(seen_ngrams)]
    reasons += [f"word {w!r}" for w in sorted(hits)]
    if _ITEM_NUMBER.search(rule):
        reasons.append("<item number>")
    if check_voice and _STUDENT_VOICE.search(rule):
        reasons.append("addressed to the student")
    if require_rubric_term and not any(w.removesuffix("'s") in RUBRIC_TERMS for w in words):
        reasons.append("not about the rubric")
    return bool(reasons), reasons
