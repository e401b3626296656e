"""Study 3 - LLM scoring of short answers with rubrics built by a learnable, item-agnostic *skill* (ASAP-SAS).

Reproduces the method of "Learnable Assessment Skills for LLM-based Automated Scoring: Rubric Construction via
Iterative Optimization" (arXiv 2605.29274) at small scale. A **skill** is item-independent procedural knowledge
that guides an LLM through one stage of scoring (here: writing a rubric for a new item); it is a fixed
**scaffold** (sections the rubric must fill) plus an ordered list of learnable, item-agnostic **rules**. Rules
are refined by letting the LLM diagnose scoring errors on a training pool and propose edits; an edited skill is
kept only when the mean QWK on a held-out validation (gate) set improves. No expert rubric is needed.

Where the paper's text is not available here, each choice is stated in one line where it is made and exposed as
a parameter. Modules: ``items`` (this one: data), ``evaluation`` (prompts, parsing, decision rules, scoring,
QWK summaries), ``skills`` (skills, rubric building, the item-specific rule check), ``optimize`` (diagnosis, rule
edits, the gated loop), ``conditions`` (study driver pieces and figures); prompts are text files in ``prompts/``.
Data: :func:`load_item` (``helpers.core.data``: per-item ``train``/``val`` CSVs and the dataset's
``ReadMeFirst`` text, parsed by :func:`parse_readme`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from helpers.core import data

__all__ = ["ITEMS", "Item", "ReadmeInfo", "load_item", "parse_readme", "split_train", "split_train_examples",
           "stratified_sample"]

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
    """Item ``number`` (1-10): ReadMeFirst parsed, ``train``/``val`` from the pinned mirror (``helpers.core.data``),
    and ``test`` from ``test_csv`` if given (same columns; a ``{item}`` in the path is filled in)."""
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




def split_train_examples(df: pd.DataFrame, n_pool: int, n_gate: int, per_score: int,
                         seed: int) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame | None]:
    """:func:`split_train` plus a third, disjoint slice of rubric examples: ``per_score`` responses per score point
    (seeded, lowest score first) drawn from the training responses that are in neither the diagnosis pool nor the
    gate, so that examples shown to the rubric writer are never the errors it is diagnosed on, and every condition
    that takes examples can get the same ones. ``per_score <= 0`` gives ``None`` for the examples."""
    pool, gate = split_train(df, n_pool, n_gate, seed)
    if per_score <= 0:
        return pool, gate, None
    rest = df[~df["Id"].isin(set(pool["Id"]) | set(gate["Id"]))]
    parts = [g.sample(min(per_score, len(g)), random_state=seed) for _, g in rest.groupby("Score1")]
    return pool, gate, pd.concat(parts).sort_values("Score1").reset_index(drop=True)
