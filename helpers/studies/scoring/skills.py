"""Study 3: skills (fixed scaffold + learnable item-agnostic rules), rubric building, the item-specific rule check."""
from __future__ import annotations

import re
from dataclasses import dataclass

import pandas as pd
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

from .evaluation import _truncate_words
from .items import ReadmeInfo
from .prompts import prompt, word_list

__all__ = ["DEFAULT_SCAFFOLD", "DEFAULT_SEED_RULES", "GENERIC_WORDS", "Skill", "build_rubric", "build_rubrics",
           "is_item_specific", "rubric_examples", "rubric_prompt"]


# ------------------------------------------------------------------------------------------------------
# Skills
# ------------------------------------------------------------------------------------------------------
#: Sections the rubric builder must fill (fixed; the paper's scaffold wording is not available: this is ours).
DEFAULT_SCAFFOLD = ("Key concepts", "Score-level descriptors", "Accepted variants", "Common misconceptions",
                    "Edge cases")
#: The initial skill's seed rules (item-agnostic).
DEFAULT_SEED_RULES = (
    "Base every descriptor on what the question explicitly asks the student to do.",
    "Write one descriptor per score point, from the highest score to the lowest.",
    "State how many correct, distinct ideas a response needs for each score point.",
)


@dataclass(frozen=True)
class Skill:
    """A rubric-building skill: a fixed scaffold plus an ordered list of learnable item-agnostic rules."""

    rules: tuple[str, ...] = DEFAULT_SEED_RULES
    scaffold: tuple[str, ...] = DEFAULT_SCAFFOLD

    def render(self) -> str:
        sec = "\n".join(f"{i}. {s}" for i, s in enumerate(self.scaffold, 1))
        rules = "\n".join(f"R{i}. {r}" for i, r in enumerate(self.rules, 1)) or "(no rules)"
        return f"Sections to fill, in this order:\n{sec}\n\nRules:\n{rules}"


def _examples_block(examples: pd.DataFrame | None, words: int = 40) -> str:
    if examples is None or not len(examples):
        return ""
    rows = [f"- score {int(r.Score1)}: {_truncate_words(r.EssayText, words)}" for r in examples.itertuples()]
    return "\n\nScored student answers (examples):\n" + "\n".join(rows)


def rubric_prompt(info: ReadmeInfo, skill: Skill | None, examples: pd.DataFrame | None = None, *,
                  passage_words: int = 120, rubric_max_words: int = 120) -> str:
    """The rubric-building prompt: with a skill (scaffold + rules) or, ``skill=None``, zero-shot."""
    head = [prompt("rubric_task", score_min=info.score_min, score_max=info.score_max)]
    if skill is not None:
        head.append(prompt("rubric_skill", skill=skill.render()))
    if info.passage and passage_words > 0:
        head.append("Reading passage (excerpt):\n" + _truncate_words(info.passage, passage_words))
    head.append("Question:\n" + _truncate_words(info.stem, 250) + _examples_block(examples))
    head.append(prompt("rubric_close", max_words=rubric_max_words))
    return "\n\n".join(head)


def rubric_examples(pool: pd.DataFrame, info: ReadmeInfo, per_score: int, seed: int) -> pd.DataFrame | None:
    """``per_score`` scored examples per score point from the training pool (seeded), lowest score first."""
    if per_score <= 0:
        return None
    parts = [g.sample(min(per_score, len(g)), random_state=seed) for _, g in pool.groupby("Score1")]
    return pd.concat(parts).sort_values("Score1") if parts else None


def build_rubrics(backend, requests: list[tuple[ReadmeInfo, Skill | None, pd.DataFrame | None]], *,
                  max_tokens: int = 160, progress: bool = False, **prompt_kw) -> list[str]:
    """Rubrics for several (item, skill or None, examples) at once (one batched / concurrent call; cached)."""
    prompts = [rubric_prompt(i, s, e, **prompt_kw) for i, s, e in requests]
    out = backend.complete_many(prompts, max_tokens=max_tokens, return_errors=True, progress=progress)
    return [o if isinstance(o, str) else "" for o in out]


def build_rubric(backend, info: ReadmeInfo, skill: Skill | None, examples: pd.DataFrame | None = None,
                 **kw) -> str:
    return build_rubrics(backend, [(info, skill, examples)], **kw)[0]


# ------------------------------------------------------------------------------------------------------
# Item-specific rule check
# ------------------------------------------------------------------------------------------------------
#: Words an item-agnostic rule may use although they occur in item texts (``prompts/generic_words.txt``).
GENERIC_WORDS = word_list("generic_words")


def _generic_words() -> frozenset[str]:
    return GENERIC_WORDS | ENGLISH_STOP_WORDS


def _content_words(text: str) -> set[str]:
    words = re.findall(r"[a-z][a-z'\-]+", text.lower())
    return {w.strip("'-").removesuffix("'s") for w in words if len(w) >= 4}


def is_item_specific(rule: str, infos: list[ReadmeInfo], *, min_hits: int = 1) -> tuple[bool, list[str]]:
    """Whether ``rule`` mentions item-specific content: a content word (>= 4 letters, not in
    :data:`GENERIC_WORDS` or scikit-learn's English stop words) of any item's title, stem, passage or expert rubric, or a quoted phrase / a mention
    of an item number. ``min_hits`` such words make it specific (1 here: rules must be item-agnostic).
    Returns ``(specific, offending words)``."""
    hits: set[str] = set()
    generic = _generic_words()
    rule_words = {w for w in _content_words(rule) if w not in generic and w.removesuffix("s") not in generic
                  and w.removesuffix("es") not in generic}
    for info in infos:
        vocab = _content_words(" ".join([info.title, info.stem, info.passage, info.rubric])) - generic
        vocab |= {w.rstrip("s") for w in vocab} | {w + "s" for w in vocab}
        hits |= {w for w in rule_words if w in vocab or w.rstrip("s") in vocab}
    hits -= generic
    if re.search(r"\b(item|question|data set)\s*#?\d+\b", rule, re.I):
        hits.add("<item number>")
    return len(hits) >= min_hits, sorted(hits)


