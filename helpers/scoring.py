"""Study 3: LLM scoring of short answers with rubrics built by a learnable, item-agnostic *skill* (ASAP-SAS).

Reproduces the method of "Learnable Assessment Skills for LLM-based Automated Scoring: Rubric Construction via
Iterative Optimization" (arXiv 2605.29274) at small scale. A **skill** is item-independent procedural knowledge
that guides an LLM through one stage of scoring (here: writing a rubric for a new item); it is a fixed
**scaffold** (sections the rubric must fill) plus an ordered list of learnable, item-agnostic **rules**. Rules
are refined by letting the LLM diagnose scoring errors on a training pool and propose edits; an edited skill is
kept only when the mean QWK on a held-out validation (gate) set improves. No expert rubric is needed.

Where the paper's text is not available here, each choice is stated in one line where it is made and exposed as
a parameter. Data: :func:`load_item` (``helpers.data``: per-item ``train``/``val`` CSVs and the dataset's
``ReadMeFirst`` text, parsed by :func:`parse_readme`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

__all__ = [
    "DEFAULT_SCAFFOLD", "DEFAULT_SEED_RULES", "Item", "ReadmeInfo", "ScoreResult", "Skill", "apply_edit",
    "batch_calibrate", "bootstrap_ci", "build_rubric", "build_rubrics", "diagnose_errors", "evaluate", "is_item_specific",
    "load_item", "mean_over_items", "optimize_skill", "optimize_skills", "parse_edits", "parse_readme", "parse_score", "qwk",
    "rule_diff", "score_responses", "scoring_prompt", "stratified_sample", "split_train",
]

ITEMS = tuple(range(1, 11))


# ------------------------------------------------------------------------------------------------------
# Data: the ReadMeFirst files and the per-item CSVs
# ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReadmeInfo:
    """What an ASAP-SAS ``Data Set #N--ReadMeFirst.txt`` says about its item."""

    item: int
    title: str  # e.g. "Acid Rain"
    subject: str
    stem: str  # the prompt the students answered (with its procedure / data for science items)
    passage: str  # the reading passage ("" when the item has none)
    rubric: str  # the dataset's expert rubric (general scale + item-specific rubric)
    score_min: int
    score_max: int

    @property
    def labels(self) -> list[int]:
        return list(range(self.score_min, self.score_max + 1))


_RUBRIC_START = re.compile(r"^(Scoring Rubric|Rubric for|Reading for Information Scoring)", re.I)


def parse_readme(text: str | bytes, item: int | None = None) -> ReadmeInfo:
    """Parse an ASAP-SAS ReadMeFirst text (str, or the raw cp1252 bytes with CR / CRLF line endings).

    Layout (all 10 files): ``Key:`` / value header lines ending with ``Rubric range:`` ``a-b``; an optional
    ``Reading Passage-<title>`` section; a ``Prompt-<title>`` line (item 8 has one before and one after its
    passage: the text between them is the passage) followed by the stem; the expert rubric from the first line
    starting "Scoring Rubric", "Rubric for" or "Reading for Information Scoring"; a trailing page number.
    """
    if isinstance(text, bytes):
        text = text.decode("cp1252")
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = text.split("\n")
    m = re.match(r"Data Set #(\d+)", lines[0].strip())
    if not m:
        raise ValueError(f"not an ASAP-SAS ReadMeFirst text: first line is {lines[0][:60]!r}, expected 'Data Set #N'.")
    number = int(m.group(1))
    if item is not None and item != number:
        raise ValueError(f"the ReadMeFirst text is for data set #{number}, not item {item}.")
    header = {}
    for i in range(1, len(lines) - 1):
        if lines[i].rstrip().endswith(":") and lines[i + 1].strip():
            header[lines[i].strip().rstrip(":").lower()] = lines[i + 1].strip()
        if lines[i].strip().lower() == "rubric range:":
            body_start = i + 2
            break
    else:
        raise ValueError(f"data set #{number}: no 'Rubric range:' line in the ReadMeFirst text.")
    rng = re.fullmatch(r"(\d+)\s*-\s*(\d+)", header.get("rubric range", ""))
    if not rng:
        raise ValueError(f"data set #{number}: cannot read the score range from {header.get('rubric range')!r}.")
    lo, hi = int(rng.group(1)), int(rng.group(2))
    prompts = [i for i in range(body_start, len(lines)) if lines[i].startswith("Prompt-")]
    if not prompts:
        raise ValueError(f"data set #{number}: no 'Prompt-' line.")
    p = prompts[-1]
    r = next((i for i in range(p + 1, len(lines)) if _RUBRIC_START.match(lines[i].strip())), None)
    if r is None:
        raise ValueError(f"data set #{number}: no rubric section after the prompt.")
    title = lines[p][len("Prompt-"):].strip()
    title = re.sub(r"\s+Item$", "", title)
    passage_lines: list[str] = []
    reading = [i for i in range(body_start, p) if lines[i].startswith("Reading Passage-")]
    if reading:
        passage_lines = lines[reading[0] + 1:p]
    elif len(prompts) > 1:
        passage_lines = lines[prompts[0] + 1:p]

    def clean(block: list[str]) -> str:
        return re.sub(r"\n{3,}", "\n\n", "\n".join(x.rstrip() for x in block)).strip()

    rubric_lines = lines[r:]
    while rubric_lines and (not rubric_lines[-1].strip() or rubric_lines[-1].strip().isdigit()):
        rubric_lines.pop()  # trailing blank lines and the page number
    return ReadmeInfo(item=number, title=title, subject=header.get("subject", ""), stem=clean(lines[p + 1:r]),
                      passage=clean(passage_lines), rubric=clean(rubric_lines), score_min=lo, score_max=hi)


@dataclass
class Item:
    """One ASAP-SAS item: its ReadMeFirst content and responses (``train``, ``val``, optional ``test``)."""

    info: ReadmeInfo
    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame | None = None

    @property
    def number(self) -> int:
        return self.info.item

    @property
    def labels(self) -> list[int]:
        return self.info.labels

    def __repr__(self) -> str:
        return (f"Item({self.number}, {self.info.title!r}, scores {self.info.score_min}-{self.info.score_max}, "
                f"train={len(self.train)}, val={len(self.val)}, test={None if self.test is None else len(self.test)})")


_COLUMNS = ["Id", "EssaySet", "Score1", "Score2", "EssayText"]


def _check_frame(df: pd.DataFrame, info: ReadmeInfo, what: str) -> pd.DataFrame:
    missing = [c for c in _COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"item {info.item} {what}: columns {missing} missing (expected {_COLUMNS}).")
    df = df.copy()
    df["EssayText"] = df["EssayText"].fillna("").astype(str)
    bad = df[~df["Score1"].isin(info.labels)]
    if len(bad):
        raise ValueError(f"item {info.item} {what}: {len(bad)} Score1 values outside the ReadMeFirst range "
                         f"{info.score_min}-{info.score_max} (e.g. Id {bad['Id'].iloc[0]}: {bad['Score1'].iloc[0]}).")
    return df.reset_index(drop=True)


def load_item(number: int, test_csv: str | Path | None = None) -> Item:
    """Item ``number`` (1-10): ReadMeFirst parsed, ``train``/``val`` from the pinned mirror (``helpers.data``),
    and ``test`` from ``test_csv`` if given (same columns; a ``{item}`` in the path is filled in)."""
    from . import data

    if number not in ITEMS:
        raise ValueError(f"ASAP-SAS items are 1-10, got {number!r}.")
    info = parse_readme(data.load(f"asap-sas-{number}-readme"), number)
    train = _check_frame(data.load(f"asap-sas-{number}-train"), info, "train.csv")
    val = _check_frame(data.load(f"asap-sas-{number}-val"), info, "val.csv")
    test = None
    if test_csv:
        path = Path(str(test_csv).format(item=number))
        if not path.exists():
            raise FileNotFoundError(f"test_csv {path} does not exist (give a path, '{{item}}' is replaced by the item).")
        test = _check_frame(pd.read_csv(path), info, str(path))
    return Item(info, train, val, test)


def stratified_sample(df: pd.DataFrame, n: int, seed: int, col: str = "Score1") -> pd.DataFrame:
    """``n`` rows drawn without replacement, stratified by ``col`` (all rows if ``n >= len(df)``)."""
    from sklearn.model_selection import train_test_split

    if n >= len(df):
        return df.reset_index(drop=True)
    counts = df[col].value_counts()
    strat = df[col] if counts.min() >= 2 and n >= len(counts) else None
    part, _ = train_test_split(df, train_size=n, stratify=strat, random_state=seed)
    return part.sort_index().reset_index(drop=True)


def split_train(df: pd.DataFrame, n_pool: int, n_gate: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Cut a training pool (errors are diagnosed here) and a disjoint validation set (the gate) from
    ``train.csv``, each stratified by Score1 and seeded."""
    if n_pool < 1 or n_gate < 1:
        raise ValueError(f"n_pool and n_gate must be >= 1, got {n_pool}, {n_gate}.")
    if n_pool + n_gate > len(df):
        raise ValueError(f"n_pool + n_gate = {n_pool + n_gate} exceeds the {len(df)} training responses.")
    both = stratified_sample(df, n_pool + n_gate, seed)
    from sklearn.model_selection import train_test_split

    counts = both["Score1"].value_counts()
    strat = both["Score1"] if counts.min() >= 2 and min(n_pool, n_gate) >= len(counts) else None
    pool, gate = train_test_split(both, train_size=n_pool, stratify=strat, random_state=seed + 1)
    return pool.sort_index().reset_index(drop=True), gate.sort_index().reset_index(drop=True)


# ------------------------------------------------------------------------------------------------------
# Metrics
# ------------------------------------------------------------------------------------------------------
def qwk(y_true, y_pred, lo: int, hi: int) -> float:
    """Quadratic weighted kappa over the item's full score range ``lo..hi`` (sklearn's ``cohen_kappa_score``
    with ``labels=range(lo, hi+1)``, not the union of observed labels). 0/0 (both constant and equal) -> 1.0
    if every prediction is right, else 0.0."""
    from sklearn.metrics import cohen_kappa_score

    y_true, y_pred = np.asarray(y_true, int), np.asarray(y_pred, int)
    if len(y_true) == 0:
        return float("nan")
    with np.errstate(divide="ignore", invalid="ignore"):
        k = cohen_kappa_score(y_true, y_pred, weights="quadratic", labels=list(range(lo, hi + 1)))
    if np.isnan(k):
        return 1.0 if np.array_equal(y_true, y_pred) else 0.0
    return float(k)


def _qwk_fast(t: np.ndarray, p: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """QWK of many resamples at once: ``t``, ``p`` are (B, n) int arrays (same formula as sklearn)."""
    k = hi - lo + 1
    B = t.shape[0]
    idx = (t - lo) * k + (p - lo) + (np.arange(B)[:, None] * k * k)
    O = np.bincount(idx.ravel(), minlength=B * k * k).reshape(B, k, k).astype(float)
    n = O.sum((1, 2), keepdims=True)
    E = O.sum(2, keepdims=True) * O.sum(1, keepdims=True) / n
    w = (np.subtract.outer(np.arange(k), np.arange(k)) ** 2).astype(float)
    num, den = (w * O).sum((1, 2)), (w * E).sum((1, 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        out = 1 - num / den
    return np.where(den == 0, np.where(num == 0, 1.0, 0.0), out)


def bootstrap_ci(y_true, y_pred, lo: int, hi: int, *, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05,
                 stat: str = "qwk") -> tuple[float, float, np.ndarray]:
    """Percentile bootstrap CI (resampling responses) of ``qwk`` / ``accuracy`` / ``mae``; returns
    ``(low, high, draws)``."""
    t, p = np.asarray(y_true, int), np.asarray(y_pred, int)
    rng = np.random.default_rng(seed)
    ix = rng.integers(0, len(t), size=(n_boot, len(t)))
    if stat == "qwk":
        draws = _qwk_fast(t[ix], p[ix], lo, hi)
    elif stat == "accuracy":
        draws = (t[ix] == p[ix]).mean(1)
    elif stat == "mae":
        draws = np.abs(t[ix] - p[ix]).mean(1)
    else:
        raise ValueError(f"stat must be qwk, accuracy or mae, got {stat!r}.")
    return float(np.quantile(draws, alpha / 2)), float(np.quantile(draws, 1 - alpha / 2)), draws


def evaluate(gold, pred, lo: int, hi: int, *, n_boot: int = 1000, seed: int = 0,
             unparsed_as: str = "min") -> dict[str, Any]:
    """QWK (full range), accuracy, MAE and coverage with bootstrap CIs. ``pred`` may hold ``None``/NaN/-1
    for answers that could not be parsed: they are counted (``coverage``) and, never dropped, scored as
    ``unparsed_as`` ("min": the lowest score, the choice here; "max"; or "mode": the gold mode)."""
    gold = np.asarray(gold, int)
    raw = pd.to_numeric(pd.Series(list(pred), dtype=object), errors="coerce").to_numpy(float)
    ok = np.isfinite(raw) & (raw >= lo) & (raw <= hi)
    fill = {"min": lo, "max": hi, "mode": int(pd.Series(gold).mode().iloc[0]) if len(gold) else lo}
    if unparsed_as not in fill:
        raise ValueError(f"unparsed_as must be one of {sorted(fill)}, got {unparsed_as!r}.")
    p = np.where(ok, raw, fill[unparsed_as]).astype(int)
    q_lo, q_hi, draws = bootstrap_ci(gold, p, lo, hi, n_boot=n_boot, seed=seed)
    a_lo, a_hi, _ = bootstrap_ci(gold, p, lo, hi, n_boot=n_boot, seed=seed, stat="accuracy")
    return {"qwk": qwk(gold, p, lo, hi), "qwk_ci_low": q_lo, "qwk_ci_high": q_hi,
            "accuracy": float((gold == p).mean()), "accuracy_ci_low": a_lo, "accuracy_ci_high": a_hi,
            "mae": float(np.abs(gold - p).mean()), "coverage": float(ok.mean()), "n": int(len(gold)),
            "n_unparsed": int((~ok).sum()), "_draws": draws}


def mean_over_items(per_item: list[dict], alpha: float = 0.05) -> dict[str, float]:
    """Mean QWK over items with a CI from the items' independent bootstrap draws (stratified bootstrap)."""
    draws = np.mean([r["_draws"] for r in per_item], axis=0)
    return {"qwk": float(np.mean([r["qwk"] for r in per_item])), "qwk_ci_low": float(np.quantile(draws, alpha / 2)),
            "qwk_ci_high": float(np.quantile(draws, 1 - alpha / 2)),
            "accuracy": float(np.mean([r["accuracy"] for r in per_item])),
            "mae": float(np.mean([r["mae"] for r in per_item])),
            "coverage": float(np.mean([r["coverage"] for r in per_item])), "n": int(sum(r["n"] for r in per_item))}


# ------------------------------------------------------------------------------------------------------
# Scoring
# ------------------------------------------------------------------------------------------------------
def _truncate_words(text: str, n: int) -> str:
    words = text.split()
    return text.strip() if n <= 0 or len(words) <= n else " ".join(words[:n]) + " [...]"


def scoring_prompt(info: ReadmeInfo, rubric: str | None, *, passage_words: int = 120,
                   rubric_words: int = 400) -> tuple[str, str]:
    """The scoring prompt as (shared prefix, per-response template with ``{response}``): passage excerpt
    (first ``passage_words`` words; the paper is silent, long passages would dominate a small model's
    context), question, rubric (first ``rubric_words`` words) or none, then the answer and the instruction."""
    parts = [f"You are an experienced teacher scoring a grade-10 student's short answer from {info.score_min} "
             f"to {info.score_max}."]
    if info.passage and passage_words > 0:
        parts.append("Reading passage (excerpt):\n" + _truncate_words(info.passage, passage_words))
    parts.append("Question:\n" + _truncate_words(info.stem, 250))
    if rubric:
        parts.append("Scoring rubric:\n" + _truncate_words(rubric, rubric_words))
    prefix = "\n\n".join(parts) + "\n\nStudent answer:\n"
    tail = (f"\n\nWhat score ({info.score_min}-{info.score_max}) does this answer deserve? "
            f"Reply with the score digit only.")
    return prefix, "{response}" + tail


_DIGIT = re.compile(r"(?<![\d.])(\d+)(?![\d.])")


def parse_score(text: str, lo: int, hi: int) -> int | None:
    """The score in a generated reply: the first stand-alone integer in ``lo..hi`` after an optional
    "score"/"Score:" cue; ``None`` if there is none (counted as unparsed, never dropped)."""
    if not isinstance(text, str):
        return None
    m = re.search(r"score\s*(?:is|of|:|=)?\s*(\d+)", text, re.I)
    cands = [m.group(1)] if m else _DIGIT.findall(text)
    for c in cands:
        v = int(c)
        if lo <= v <= hi:
            return v
        break
    return None


def batch_calibrate(probs: np.ndarray) -> np.ndarray:
    """Batch calibration (Zhou et al., "Batch Calibration: Rethinking Calibration for In-Context Learning and
    Prompt Engineering", ICLR 2024, Eq. 6): subtract each label's mean log-probability over the batch of scored
    responses, removing the prompt's contextual bias toward one label; uses no gold scores."""
    lp = np.log(np.clip(probs, 1e-12, None))
    lp = lp - lp.mean(0, keepdims=True)
    p = np.exp(lp - lp.max(1, keepdims=True))
    return p / p.sum(1, keepdims=True)


@dataclass
class ScoreResult:
    """Predictions for a list of responses; ``pred`` is -1 where the answer could not be parsed."""

    pred: np.ndarray
    parsed: np.ndarray
    probs: np.ndarray | None = None  # (n, n_labels) for likelihood scoring
    label_mass: np.ndarray | None = None  # share of next-token mass on the labels
    raw: list[str] | None = None  # generated replies


def score_responses(backend, info: ReadmeInfo, rubric: str | None, responses: list[str], *,
                    method: str = "likelihood", decision: str = "calibrated", response_words: int = 80,
                    passage_words: int = 120, rubric_words: int = 400, max_tokens: int = 8,
                    progress: bool = False) -> ScoreResult:
    """Score ``responses`` with ``rubric`` (``None``: question only).

    ``method="likelihood"``: constrained next-token likelihood over the labels ``lo..hi`` (one forward pass per
    response with the shared prefix's KV cache; local backend). ``decision`` turns the distribution into a
    score: "calibrated" (:func:`batch_calibrate`, then argmax: the choice here, since a small model's raw argmax
    collapses onto one label), "argmax", or "expected" (the probability-weighted mean, rounded).
    ``method="generate"``: greedy generation, parsed by :func:`parse_score`; unparsed replies get ``-1``.
    """
    prefix, template = scoring_prompt(info, rubric, passage_words=passage_words, rubric_words=rubric_words)
    suffixes = [template.format(response=_truncate_words(r, response_words) or "(blank)") for r in responses]
    labels = info.labels
    if method == "likelihood":
        if not hasattr(backend, "label_distribution"):
            raise ValueError(f"method='likelihood' needs a local backend (LocalChat); {type(backend).__name__} "
                             f"only generates: use method='generate'.")
        probs, mass = backend.label_distribution(prefix, suffixes, [str(x) for x in labels], progress=progress)
        if decision == "argmax":
            pred = np.asarray(labels)[probs.argmax(1)]
        elif decision == "calibrated":
            pred = np.asarray(labels)[batch_calibrate(probs).argmax(1)]
        elif decision == "expected":
            pred = np.clip(np.floor(probs @ np.asarray(labels, float) + 0.5), labels[0], labels[-1]).astype(int)
        else:
            raise ValueError(f"decision must be 'calibrated', 'argmax' or 'expected', got {decision!r}.")
        return ScoreResult(pred=pred.astype(int), parsed=np.ones(len(pred), bool), probs=probs, label_mass=mass)
    if method != "generate":
        raise ValueError(f"method must be 'likelihood' or 'generate', got {method!r}.")
    replies = backend.complete_many([prefix + s for s in suffixes], max_tokens=max_tokens, return_errors=True,
                                    progress=progress)
    texts = [r if isinstance(r, str) else "" for r in replies]
    vals = [parse_score(t, labels[0], labels[-1]) for t in texts]
    parsed = np.array([v is not None for v in vals])
    pred = np.array([v if v is not None else -1 for v in vals], int)
    return ScoreResult(pred=pred, parsed=parsed, raw=[r if isinstance(r, str) else f"ERROR: {r}" for r in replies])


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
    head = [f"Write a scoring rubric for the short-answer question below (scores {info.score_min} to "
            f"{info.score_max})."]
    if skill is not None:
        head.append("Follow this rubric-writing skill.\n" + skill.render())
    if info.passage and passage_words > 0:
        head.append("Reading passage (excerpt):\n" + _truncate_words(info.passage, passage_words))
    head.append("Question:\n" + _truncate_words(info.stem, 250) + _examples_block(examples))
    head.append(f"Write the rubric now, at most {rubric_max_words} words.")
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
#: Words an item-agnostic rule may use although they occur in item texts (assessment / generic vocabulary).
GENERIC_WORDS = frozenset("""
a about above accept accepted accepts according account accurate across action actual add added adequate after
again against all allow also alternative although always amount analysis another answer answers any apply
appropriate are area argument article assess assign attempt author award awarded based basic be because been
before being below best between both brief but by can case cases cause cite claim clear clearly code complete
completely concept concepts conclusion consider contain contains content correct correctly could credit
criteria data define demonstrate demonstrates describe described describes description descriptor descriptors
detail details develop did different distinct does each edge effect either element elements else emphasize
ensure even every evidence example examples experiment explain explained explains explanation explicit
explicitly express fact factual fail few first focus follow following for from full fully general give given
gives good grade half has have high higher highest how idea ideas identify if important include included
includes including incomplete incorrect information instead into irrelevant is it its item key know knowledge
lack least less level levels like list listed little logical low lower lowest main make many mark may mention
mentioned mentions minor misconception misconceptions missing more most much must need needed needs no none
not number of off on one only or other others own paraphrase part partial partially point points possible
precise prompt proper provide provided provides question questions reason reasonable reasoning reasons related
relevant required requirement requirements response responses rubric rule rules same score scored scores
scoring section sections should show shows simple since single some specific spelling state stated states
statement student students such sufficient support supported supporting task text than that the their them
then there these they thing things this those three through to too topic two under understand understanding
unless use used uses using vague valid variant variants various very was ways well were what when where which
while who whole why will with within without word words would write written wrong year zero
acceptable additional address along altogether appear category characteristics clarity consideration considered
descriptions dimension discussion elaboration error errors excellent extension flaws fluency followed fulfill
fulfills generally grammar guide higher-order holistic holistically illogical inaccuracies inaccurate
inappropriate independently insightful involves items judging limited marginal might move necessarily omissions
open-ended overall particular possibly prior proficient quality range readers received reflect serious
significant simplistic text-based therefore thinking though unsatisfactory meaning penalize penalise mistakes
punctuation length short long sentence sentences copy copied copying restate restates restating repeat repeats
story stories passage article procedure procedures step steps second third fourth fifth next last reader author
paragraph table diagram chart graph title character characters trait traits
""".split())


def _generic_words() -> frozenset[str]:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

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


# ------------------------------------------------------------------------------------------------------
# Diagnosis and rule edits
# ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Edit:
    op: str  # "add" | "revise" | "delete"
    index: int | None  # 1-based rule number for revise / delete
    text: str

    def __str__(self) -> str:
        return {"add": f"ADD: {self.text}", "revise": f"REVISE R{self.index}: {self.text}",
                "delete": f"DELETE R{self.index}"}[self.op]


_EDIT = re.compile(r"^\s*(?:[-*\d.)\s]*)\**\s*(ADD|REVISE|DELETE)\b\s*(?:R(?:ULE)?\s*)?(\d+)?\s*\**\s*[:\-]?\s*(.*)$",
                   re.I)


def parse_edits(text: str) -> tuple[list[Edit], list[str]]:
    """Edits in a diagnosis reply (``ADD: rule`` / ``REVISE R2: rule`` / ``DELETE R3``); returns
    ``(edits, unparsed non-empty lines)`` so that malformed proposals are counted, not silently lost."""
    edits, bad = [], []
    for line in (text or "").splitlines():
        if not line.strip():
            continue
        m = _EDIT.match(line)
        if not m:
            bad.append(line.strip())
            continue
        op, idx, body = m.group(1).lower(), m.group(2), m.group(3).strip().strip('"').strip()
        if op == "add" and body:
            edits.append(Edit("add", None, body))
        elif op == "revise" and idx and body:
            edits.append(Edit("revise", int(idx), body))
        elif op == "delete" and idx:
            edits.append(Edit("delete", int(idx), ""))
        else:
            bad.append(line.strip())
    return edits, bad


def apply_edit(skill: Skill, edit: Edit, max_rules: int = 8) -> Skill | None:
    """The skill with ``edit`` applied, or ``None`` if it does not apply (bad rule number, too many rules,
    duplicate rule)."""
    rules = list(skill.rules)
    if edit.op == "add":
        if len(rules) >= max_rules or edit.text in rules:
            return None
        rules.append(edit.text)
    elif edit.index is None or not 1 <= edit.index <= len(rules):
        return None
    elif edit.op == "revise":
        if rules[edit.index - 1] == edit.text:
            return None
        rules[edit.index - 1] = edit.text
    else:
        del rules[edit.index - 1]
    return Skill(tuple(rules), skill.scaffold)


def diagnosis_prompt(skill: Skill, errors: list[dict], max_edits: int) -> str:
    """Ask the LLM to diagnose scoring errors and propose item-agnostic rule edits in a strict format."""
    ex = "\n".join(f"- Question: {_truncate_words(e['stem'], 30)}\n  Rubric excerpt: {_truncate_words(e['rubric'], 40)}\n"
                   f"  Answer: {_truncate_words(e['response'], 40)}\n  Correct score: {e['gold']}, rubric-based "
                   f"score: {e['pred']}" for e in errors)
    rules = "\n".join(f"R{i}. {r}" for i, r in enumerate(skill.rules, 1))
    return (f"A rubric-writing skill is a list of general rules for writing scoring rubrics. Rubrics written with "
            f"it led to these scoring errors:\n{ex}\n\nCurrent rules:\n{rules}\n\n"
            f"Why did the rubrics mis-score these answers? Propose at most {max_edits} changes to the rules that "
            f"would fix such errors on ANY question. Never mention a specific question's topic, terms or content. "
            f"Write one change per line, exactly in one of these forms:\nADD: <new rule>\nREVISE R<n>: <new text>\n"
            f"DELETE R<n>")


def collect_errors(info: ReadmeInfo, rubric: str, pool: pd.DataFrame, pred: np.ndarray, k: int,
                   seed: int) -> tuple[list[dict], dict]:
    """The ``k`` worst errors (largest |gold - pred|, ties broken by a seeded shuffle) and the confusion counts."""
    gold = pool["Score1"].to_numpy(int)
    conf = pd.crosstab(pd.Series(gold, name="gold"), pd.Series(pred, name="pred"))
    err = np.flatnonzero(gold != pred)
    rng = np.random.default_rng(seed)
    err = err[rng.permutation(len(err))]
    err = err[np.argsort(-np.abs(gold[err] - pred[err]), kind="stable")][:k]
    rows = [{"stem": info.stem, "rubric": rubric, "response": pool["EssayText"].iloc[i], "gold": int(gold[i]),
             "pred": int(pred[i])} for i in err]
    return rows, {f"{g}->{p}": int(conf.loc[g, p]) for g in conf.index for p in conf.columns if g != p and conf.loc[g, p]}


def diagnose_errors(backend, skill: Skill, errors: list[dict], *, max_edits: int = 3,
                    max_tokens: int = 120) -> tuple[str, list[Edit], list[str]]:
    """One diagnosis call: (reply, parsed edits, unparsed lines)."""
    if not errors:
        return "", [], []
    reply = backend.complete(diagnosis_prompt(skill, errors, max_edits), max_tokens=max_tokens)
    edits, bad = parse_edits(reply)
    return reply, edits, bad


# ------------------------------------------------------------------------------------------------------
# The optimisation loop with a validation gate
# ------------------------------------------------------------------------------------------------------
@dataclass
class TrainItem:
    """An item the skill is optimised on: its pool (errors are diagnosed here) and gate (validation) sets."""

    info: ReadmeInfo
    pool: pd.DataFrame
    gate: pd.DataFrame
    examples: pd.DataFrame | None = None


@dataclass
class OptimizationResult:
    initial: Skill
    skill: Skill
    history: list[dict] = field(default_factory=list)
    rubrics: dict[str, dict[int, str]] = field(default_factory=dict)  # "initial"/"final" -> item -> rubric


def rule_diff(a: Skill, b: Skill) -> list[str]:
    """A line diff of two skills' rules (``-`` removed, ``+`` added, two spaces kept)."""
    import difflib

    return [l for l in difflib.ndiff(list(a.rules), list(b.rules)) if not l.startswith("?")]


def optimize_skill(backend, items: list[TrainItem], skill: Skill | None = None, **kw) -> OptimizationResult:
    """One optimisation of a skill on ``items`` (see :func:`optimize_skills`, which runs several in lockstep)."""
    return optimize_skills(backend, {0: items}, skill, **kw)[0]


def optimize_skills(backend, runs: dict[Any, list[TrainItem]], skill: Skill | None = None, *, iterations: int = 2,
                    n_candidates: int = 2, patience: int = 1, n_errors: int = 4, max_edits: int = 3,
                    max_rules: int = 8, min_delta: float = 0.0, diagnosis_max_tokens: int = 120,
                    score_fn: Callable | None = None, rubric_kw: dict | None = None, score_kw: dict | None = None,
                    seed: int = 0, reject_infos: list[ReadmeInfo] | None = None,
                    log: Callable = print) -> dict[Any, OptimizationResult]:
    """Iteratively refine a skill's rules (the paper's loop; its exact schedule is not available here).

    For t = 1..T: build rubrics for the training items with the current skill, score each item's pool, collect
    the worst errors, let the LLM diagnose them and propose rule edits (ADD / REVISE / DELETE); rules that
    mention item-specific content (:func:`is_item_specific` against ``reject_infos``, default the training
    items) are rejected; each remaining edit gives a candidate skill (at most ``n_candidates``); every candidate
    builds rubrics and scores the gate sets; the best candidate replaces the current skill only if its mean
    gate QWK exceeds the current one by more than ``min_delta`` (the validation gate). Stops after
    ``patience`` iterations without an accepted candidate.

    ``runs`` maps a name to the training items of one independent optimisation (e.g. one per item, for the
    transfer study); all runs advance in lockstep so that each phase's generations (diagnoses, candidate
    rubrics) go to the backend as one batch. ``score_fn(backend, info, rubric, texts)`` -> ``ScoreResult``
    (default :func:`score_responses` with ``score_kw``).
    """
    skill = skill or Skill()
    rubric_kw, score_kw = rubric_kw or {}, score_kw or {}
    score_fn = score_fn or (lambda b, info, rub, texts: score_responses(b, info, rub, texts, **score_kw))
    all_infos = reject_infos or [it.info for items in runs.values() for it in items]

    def build(jobs: list[tuple[Any, Skill]]) -> list[dict[int, str]]:
        """Rubrics for every (run, skill) job in one batch: a dict item -> rubric per job."""
        reqs = [(it.info, sk, it.examples) for r, sk in jobs for it in runs[r]]
        flat = iter(build_rubrics(backend, reqs, **rubric_kw))
        return [{it.info.item: next(flat) for it in runs[r]} for r, _ in jobs]

    def score(r, rubrics: dict[int, str], split: str) -> tuple[float, dict[int, np.ndarray]]:
        q, preds = [], {}
        for it in runs[r]:
            df = getattr(it, split)
            res = score_fn(backend, it.info, rubrics[it.info.item], df["EssayText"].tolist())
            preds[it.info.item] = np.where(res.parsed, res.pred, it.info.score_min)
            q.append(qwk(df["Score1"], preds[it.info.item], it.info.score_min, it.info.score_max))
        return float(np.mean(q)), preds

    out = {r: OptimizationResult(initial=skill, skill=skill) for r in runs}
    current = {r: skill for r in runs}
    rub0 = build([(r, skill) for r in runs])
    gate_q = {}
    for r, rubs in zip(runs, rub0):
        out[r].rubrics["initial"] = rubs
        gate_q[r] = score(r, rubs, "gate")[0]
    stale = {r: 0 for r in runs}
    active = list(runs)
    for t in range(1, iterations + 1):
        if not active:
            break
        rubs_now = build([(r, current[r]) for r in active])  # the same prompts as the gate step: cached
        state = {}
        for r, rubs in zip(active, rubs_now):
            pool_q, preds = score(r, rubs, "pool")
            errors, confusions = [], {}
            for it in runs[r]:
                e, c = collect_errors(it.info, rubs[it.info.item], it.pool, preds[it.info.item],
                                      max(1, n_errors // len(runs[r])), seed + t)
                errors += e
                confusions[it.info.item] = c
            state[r] = {"pool_qwk": pool_q, "errors": errors, "confusions": confusions}
        need = [r for r in active if state[r]["errors"]]
        replies = backend.complete_many([diagnosis_prompt(current[r], state[r]["errors"], max_edits) for r in need],
                                        max_tokens=diagnosis_max_tokens, return_errors=True)
        replies = dict(zip(need, [x if isinstance(x, str) else "" for x in replies]))
        jobs = []
        for r in active:
            edits, bad = parse_edits(replies.get(r, ""))
            cands, proposals = [], []
            infos = reject_infos or [it.info for it in runs[r]]
            for e in edits:
                rec = {"edit": str(e), "status": "candidate"}
                if e.op != "delete":
                    specific, words = is_item_specific(e.text, infos)
                    if specific:
                        rec.update(status="rejected: item-specific", words=words)
                        proposals.append(rec)
                        continue
                new = apply_edit(current[r], e, max_rules)
                if new is None:
                    rec["status"] = "rejected: does not apply"
                elif any(new == c for c, _ in cands):
                    rec["status"] = "duplicate"
                elif len(cands) >= n_candidates:
                    rec["status"] = "not tried (candidate budget)"
                else:
                    cands.append((new, rec))
                    jobs.append((r, new))
                proposals.append(rec)
            state[r].update(reply=replies.get(r, ""), edits=edits, bad=bad, cands=cands, proposals=proposals)
        cand_rubrics = build(jobs)
        for r in list(active):
            st = state[r]
            best, best_q = None, -np.inf
            for (cand, rec) in st["cands"]:
                rubs = cand_rubrics[jobs.index((r, cand))]
                rec["gate_qwk"] = score(r, rubs, "gate")[0]
                if rec["gate_qwk"] > best_q:
                    best, best_q = cand, rec["gate_qwk"]
            accepted = best is not None and best_q > gate_q[r] + min_delta
            for cand, rec in st["cands"]:
                rec["status"] = (("accepted" if cand == best else "rejected: not the best") if accepted
                                 else "rejected: gate (no validation gain)")
            out[r].history.append({"iteration": t, "rules": list(current[r].rules), "pool_qwk": st["pool_qwk"],
                                   "gate_qwk": gate_q[r], "diagnosis": st["reply"], "unparsed_lines": len(st["bad"]),
                                   "proposals": st["proposals"], "confusions": st["confusions"],
                                   "best_candidate_gate_qwk": None if best is None else best_q,
                                   "accepted": bool(accepted)})
            log(f"[{r}] iteration {t}: pool QWK {st['pool_qwk']:.3f}, gate QWK {gate_q[r]:.3f}, "
                f"{len(st['edits'])} edits ({len(st['bad'])} unparsed lines), {len(st['cands'])} candidates"
                + (f", best {best_q:.3f} -> {'accepted' if accepted else 'rejected'}" if st["cands"] else ""))
            if accepted:
                current[r], gate_q[r], stale[r] = best, best_q, 0
            else:
                stale[r] += 1
                if stale[r] >= patience:
                    active.remove(r)
    finals = build([(r, current[r]) for r in runs])
    for r, rubs in zip(runs, finals):
        out[r].skill = current[r]
        out[r].rubrics["final"] = rubs
        out[r].history.append({"iteration": "final", "rules": list(current[r].rules), "gate_qwk": gate_q[r]})
    return out


# ------------------------------------------------------------------------------------------------------
# Study driver pieces used by notebook 04 (conditions, transfer, figures, viewer)
# ------------------------------------------------------------------------------------------------------
CONDITIONS = ("no rubric", "expert rubric", "zero-shot rubric", "initial skill", "optimized skill")


def score_condition(backend, info: ReadmeInfo, rubric: str | None, eval_df: pd.DataFrame, *, n_boot: int = 1000,
                    seed: int = 0, **score_kw) -> tuple[dict, np.ndarray]:
    """Score ``eval_df`` with ``rubric``; returns (metrics of :func:`evaluate`, predictions with -1 unparsed)."""
    res = score_responses(backend, info, rubric, eval_df["EssayText"].tolist(), **score_kw)
    pred = np.where(res.parsed, res.pred, -1)
    m = evaluate(eval_df["Score1"].to_numpy(), [p if p >= 0 else None for p in pred], info.score_min,
                 info.score_max, n_boot=n_boot, seed=seed)
    if res.label_mass is not None:
        m["label_mass"] = float(np.mean(res.label_mass))
    return m, pred


def conditions_table(records: list[dict], digits: int = 3) -> pd.DataFrame:
    """Rows (item, condition) with QWK [CI], accuracy, MAE, coverage, plus the mean over items per condition."""
    df = pd.DataFrame([{k: v for k, v in r.items() if not k.startswith("_")} for r in records])
    cols = ["item", "condition", "qwk", "qwk_ci_low", "qwk_ci_high", "accuracy", "mae", "coverage", "n"]
    return df[cols].round(digits)


def transfer_matrix(backend, items: dict[int, Item], skills: dict[int, Skill], eval_sets: dict[int, pd.DataFrame],
                    examples: dict[int, pd.DataFrame | None], *, rubric_kw: dict | None = None,
                    score_kw: dict | None = None, n_boot: int = 200, seed: int = 0) -> tuple[pd.DataFrame, dict]:
    """QWK on each target item's evaluation set of a rubric built by the skill learned on each source item,
    without re-optimising (rows: source, columns: target). Also returns the rubrics by (source, target)."""
    pairs = [(s, t) for s in skills for t in items]
    rubrics = build_rubrics(backend, [(items[t].info, skills[s], examples[t]) for s, t in pairs], **(rubric_kw or {}))
    mat = pd.DataFrame(index=pd.Index(list(skills), name="skill learned on item"),
                       columns=pd.Index(list(items), name="applied to item"), dtype=float)
    for (s, t), rub in zip(pairs, rubrics):
        m, _ = score_condition(backend, items[t].info, rub, eval_sets[t], n_boot=n_boot, seed=seed, **(score_kw or {}))
        mat.loc[s, t] = m["qwk"]
    return mat, {f"{s}->{t}": r for (s, t), r in zip(pairs, rubrics)}


def plot_conditions(table: pd.DataFrame):
    """Bar chart of QWK per item and condition with bootstrap CIs."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(8, 3.6))
    order = [c for c in CONDITIONS if c in set(table["condition"])]
    sns.barplot(data=table, x="item", y="qwk", hue="condition", hue_order=order, ax=ax, palette="viridis")
    xs = sorted(table["item"].unique())
    n = len(order)
    for j, c in enumerate(order):
        sub = table[table["condition"] == c].set_index("item").reindex(xs)
        x = np.arange(len(xs)) - 0.4 + (j + 0.5) * 0.8 / n
        ax.errorbar(x, sub["qwk"], yerr=[sub["qwk"] - sub["qwk_ci_low"], sub["qwk_ci_high"] - sub["qwk"]],
                    fmt="none", ecolor="black", elinewidth=1, capsize=2)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set(xlabel="ASAP-SAS item", ylabel="QWK (95% bootstrap CI)", title="Scoring quality by rubric condition")
    ax.legend(fontsize=8, bbox_to_anchor=(1.01, 1), loc="upper left")
    return fig


def plot_trace(histories: dict[int, list[dict]]):
    """QWK by iteration on the training pool and the validation gate, per optimised item."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    rows = []
    for item, hist in histories.items():
        for h in hist:
            if h["iteration"] == "final":
                continue
            rows.append({"item": f"item {item}", "iteration": h["iteration"], "split": "training pool", "qwk": h["pool_qwk"]})
            rows.append({"item": f"item {item}", "iteration": h["iteration"], "split": "validation gate", "qwk": h["gate_qwk"]})
            if h.get("best_candidate_gate_qwk") is not None:
                rows.append({"item": f"item {item}", "iteration": h["iteration"], "split": "best candidate (gate)",
                             "qwk": h["best_candidate_gate_qwk"]})
    fig, ax = plt.subplots(figsize=(7, 3.4))
    sns.lineplot(data=pd.DataFrame(rows), x="iteration", y="qwk", hue="item", style="split", markers=True, ax=ax)
    ax.set(title="Skill optimisation: QWK of the current skill by iteration", xlabel="iteration", ylabel="QWK")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=8, bbox_to_anchor=(1.01, 1), loc="upper left")
    return fig


def plot_transfer(mat: pd.DataFrame):
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(1.4 + 1.1 * mat.shape[1], 1.0 + 0.9 * mat.shape[0]))
    sns.heatmap(mat.astype(float), annot=True, fmt=".2f", cmap="viridis", vmin=min(0, float(np.nanmin(mat.values))),
                vmax=1, ax=ax, cbar_kws={"label": "QWK"})
    ax.set(title="Cross-item transfer of the optimized skill")
    return fig


def response_viewer(frames: dict[int, pd.DataFrame], conditions: list[str]):
    """An ipywidgets browser: pick an item and a response; shows the answer, the gold score and the score
    predicted under each condition (``frames[item]`` has EssayText, Score1 and one column per condition)."""
    import html

    import ipywidgets as W

    item = W.Dropdown(options=list(frames), description="item")
    idx = W.IntSlider(0, 0, len(frames[list(frames)[0]]) - 1, description="response")
    out = W.HTML()

    def show(*_):
        df = frames[item.value]
        idx.max = len(df) - 1
        r = df.iloc[min(idx.value, len(df) - 1)]
        preds = "".join(f"<tr><td>{c}</td><td>{'unparsed' if r[c] < 0 else int(r[c])}</td></tr>" for c in conditions)
        out.value = (f"<p><b>gold score {int(r['Score1'])}</b></p><p>{html.escape(r['EssayText'])}</p>"
                     f"<table><tr><th>condition</th><th>predicted</th></tr>{preds}</table>")

    item.observe(show, "value")
    idx.observe(show, "value")
    show()
    return W.VBox([W.HBox([item, idx]), out])
