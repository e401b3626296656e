"""Study 3: skills (fixed scaffold + learnable item-agnostic rules), rubric building, the item-specific rule check."""
from __future__ import annotations

import datetime as _dt
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

from .evaluation import _truncate_words
from .items import ReadmeInfo
from .prompts import prompt, word_list

__all__ = ["DEFAULT_SCAFFOLD", "DEFAULT_SEED_RULES", "DESCRIPTORS_FIRST_SCAFFOLD", "GENERIC_WORDS", "Skill",
           "SkillFile", "build_rubric", "build_rubrics", "build_rubrics_checked", "descriptors_first_budget",
           "is_item_specific", "rubric_examples", "rubric_missing_score_points", "rubric_prompt"]


# ------------------------------------------------------------------------------------------------------
# Skills
# ------------------------------------------------------------------------------------------------------
#: Sections the rubric builder must fill (fixed; the paper's scaffold wording is not available: this is ours).
DEFAULT_SCAFFOLD = ("Key concepts", "Score-level descriptors", "Accepted variants", "Common misconceptions",
                    "Edge cases")
#: The "descriptors first" scaffold (issue 15, fix 2): every score point's descriptor comes first, so that a token
#: cap can only cut the later, optional sections. Use with ``rubric_format="descriptors_first"``.
DESCRIPTORS_FIRST_SCAFFOLD = ("Score-point descriptors (one line per score point, highest first)", "Key concepts",
                              "Accepted variants", "Common misconceptions")
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

    def to_dict(self) -> dict:
        return {"rules": list(self.rules), "scaffold": list(self.scaffold)}

    @classmethod
    def from_dict(cls, d: dict) -> Skill:
        if not isinstance(d.get("rules"), list) or not isinstance(d.get("scaffold"), list):
            raise ValueError(f"a skill needs 'rules' and 'scaffold' lists, got keys {sorted(d)}.")
        return cls(tuple(str(r) for r in d["rules"]), tuple(str(x) for x in d["scaffold"]))

    def save(self, path: str | Path, *, provenance: dict | None = None, settings: dict | None = None) -> Path:
        """Write the skill as JSON (see :class:`SkillFile`)."""
        return SkillFile(self, provenance or {}, settings or {}).save(path)

    @classmethod
    def load(cls, path: str | Path) -> Skill:
        return SkillFile.load(path).skill


@dataclass
class SkillFile:
    """A learned skill as a practitioner's file: the skill (rules + scaffold), its ``provenance`` (model, date,
    items trained on, gate statistics, ...) and the ``settings`` the rubrics were built and scored with
    (``rubric_format``, ``rubric_max_tokens``, ...). JSON: ``{"format": "usable-xai/scoring-skill", "version": 1,
    "skill": {...}, "provenance": {...}, "settings": {...}}``."""

    skill: Skill
    provenance: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)

    FORMAT = "usable-xai/scoring-skill"
    VERSION = 1

    def to_dict(self) -> dict:
        prov = {"date": _dt.date.today().isoformat(), **self.provenance}
        return {"format": self.FORMAT, "version": self.VERSION, "skill": self.skill.to_dict(), "provenance": prov,
                "settings": dict(self.settings)}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, default=str) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> SkillFile:
        path = Path(path)
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"skill file {path} does not exist.") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"skill file {path} is not JSON: {e}.") from None
        if d.get("format") != cls.FORMAT:
            raise ValueError(f"{path} is not a scoring-skill file (format {d.get('format')!r}, expected {cls.FORMAT!r}).")
        if d.get("version") != cls.VERSION:
            raise ValueError(f"{path}: skill file version {d.get('version')!r}, this code reads {cls.VERSION}.")
        return cls(Skill.from_dict(d["skill"]), dict(d.get("provenance") or {}), dict(d.get("settings") or {}))


def _examples_block(examples: pd.DataFrame | None, words: int = 40) -> str:
    if examples is None or not len(examples):
        return ""
    rows = [f"- score {int(r.Score1)}: {_truncate_words(r.EssayText, words)}" for r in examples.itertuples()]
    return "\n\nScored student answers (examples):\n" + "\n".join(rows)


def rubric_prompt(info: ReadmeInfo, skill: Skill | None, examples: pd.DataFrame | None = None, *,
                  passage_words: int = 120, rubric_max_words: int = 120, rubric_format: str = "free") -> str:
    """The rubric-building prompt: with a skill (scaffold + rules) or, ``skill=None``, zero-shot.
    ``rubric_format="descriptors_first"`` asks for one ``Score <n>:`` line per score point before anything else
    (``prompts/rubric_close_descriptors.txt``); "free" (the default) is the original closing line."""
    if rubric_format not in ("free", "descriptors_first"):
        raise ValueError(f"rubric_format must be 'free' or 'descriptors_first', got {rubric_format!r}.")
    head = [prompt("rubric_task", score_min=info.score_min, score_max=info.score_max)]
    if skill is not None:
        head.append(prompt("rubric_skill", skill=skill.render()))
    if info.passage and passage_words > 0:
        head.append("Reading passage (excerpt):\n" + _truncate_words(info.passage, passage_words))
    head.append("Question:\n" + _truncate_words(info.stem, 250) + _examples_block(examples))
    if rubric_format == "descriptors_first":
        head.append(prompt("rubric_close_descriptors", max_words=rubric_max_words, score_min=info.score_min,
                           score_max=info.score_max))
    else:
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
# Descriptors-first rubrics: a token cap that fits them, a check for missing score points, bounded regeneration
# ------------------------------------------------------------------------------------------------------
def descriptors_first_budget(info: ReadmeInfo, *, words_per_point: int = 30, other_words: int = 90,
                             tokens_per_word: float = 1.5) -> tuple[int, int]:
    """``(max_words, max_tokens)`` for a descriptors-first rubric of ``info``: ``words_per_point`` per score point
    plus ``other_words`` for the other sections, and a token cap of ``tokens_per_word`` tokens a word (English with
    a BPE tokenizer: ~1.3-1.5) plus 16 for list markup, so that the cap does not cut the sections asked for."""
    words = words_per_point * len(info.labels) + other_words
    return words, int(math.ceil(words * tokens_per_word)) + 16


def rubric_missing_score_points(rubric: str, lo: int, hi: int) -> list[int]:
    """Score points in ``lo..hi`` that the rubric gives no descriptor for. A score point ``k`` counts as present
    when the text has "Score k", "score of k", "k point(s)"/"k pts", "k-point" or a line starting with ``k``
    followed by ``:``, ``-``, ``.`` or ``)`` (after list / markdown markers)."""
    text = rubric or ""
    missing = []
    for k in range(lo, hi + 1):
        pats = [rf"\bscore(?:\s+point)?s?\s*(?:of\s*|=\s*|:\s*)?\**\s*{k}(?![\d.]\d)\b",
                rf"(?<![\d.])\b{k}\s*(?:-\s*)?(?:points?|pts?)\b",
                rf"(?m)^[\s>*#\-\u2022|]*\(?{k}\)?\s*\**\s*[:\-.)\u2013\u2014]"]
        if not any(re.search(p, text, re.I) for p in pats):
            missing.append(k)
    return missing


def build_rubrics_checked(backend, requests: list[tuple[ReadmeInfo, Skill | None, pd.DataFrame | None]], *,
                          max_retries: int = 2, rubric_format: str = "descriptors_first", max_tokens: int | None = None,
                          rubric_max_words: int | None = None, progress: bool = False,
                          **prompt_kw) -> tuple[list[str], list[dict]]:
    """Descriptors-first rubrics that name every score point: like :func:`build_rubrics`, then each rubric missing
    a score point (:func:`rubric_missing_score_points`) is regenerated, at most ``max_retries`` times, with the
    original prompt plus a note naming the missing points (``prompts/rubric_retry.txt``; deterministic, so the
    disk cache still applies). The budget (``max_tokens``, ``rubric_max_words``) defaults to
    :func:`descriptors_first_budget` per item. Returns ``(rubrics, reports)``; a report per request:
    ``{"retries": int, "missing": [...] after the last try, "missing_first": [...]}`` (the last try is kept even
    if it still misses points: counted, never hidden)."""
    prompts, caps = [], []
    for info, skill, ex in requests:
        words, cap = descriptors_first_budget(info)
        prompts.append(rubric_prompt(info, skill, ex, rubric_format=rubric_format,
                                     rubric_max_words=rubric_max_words or words, **prompt_kw))
        caps.append(max_tokens or cap)
    out = [""] * len(requests)
    reports = [{"retries": 0, "missing": [], "missing_first": []} for _ in requests]
    todo = list(range(len(requests)))
    current = list(prompts)
    for attempt in range(max_retries + 1):
        for cap in sorted(set(caps[i] for i in todo)):  # one batch per token cap
            idx = [i for i in todo if caps[i] == cap]
            got = backend.complete_many([current[i] for i in idx], max_tokens=cap, return_errors=True,
                                        progress=progress)
            for i, g in zip(idx, got):
                out[i] = g if isinstance(g, str) else ""
        still = []
        for i in todo:
            info = requests[i][0]
            miss = rubric_missing_score_points(out[i], info.score_min, info.score_max)
            if attempt == 0:
                reports[i]["missing_first"] = miss
            reports[i]["missing"] = miss
            if miss and attempt < max_retries:
                reports[i]["retries"] += 1
                note = prompt("rubric_retry", missing=", ".join(map(str, miss)), score_min=info.score_min,
                              score_max=info.score_max)
                current[i] = prompts[i] + "\n\n" + note
                still.append(i)
        todo = still
        if not todo:
            break
    return out, reports


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


