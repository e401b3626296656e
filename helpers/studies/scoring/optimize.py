"""Study 3: rule edits (parsing, applying), scoring errors for the diagnoser, and the types of the optimisation
loop (:func:`helpers.studies.scoring.optimize_v2.optimize_skill_v2`)."""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .items import ReadmeInfo
from .skills import Skill

__all__ = ["Edit", "OptimizationResult", "TrainItem", "apply_edit", "collect_errors", "parse_edits", "rule_diff"]


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


_LABEL = re.compile(r"^R(?:ULE)?\s*\d+\s*[.:)\-]\s*", re.I)


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
        body = _LABEL.sub("", body).strip('"').strip()  # "ADD: R4. <rule>": the number is not part of the rule
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
        if edit.text in rules:  # unchanged, or a copy of another rule: a duplicate rule changes nothing real
            return None
        rules[edit.index - 1] = edit.text
    else:
        del rules[edit.index - 1]
    return Skill(tuple(rules), skill.scaffold)



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
    return [l for l in difflib.ndiff(list(a.rules), list(b.rules)) if not l.startswith("?")]
