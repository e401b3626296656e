"""Study 3 driver pieces used by notebook 04: conditions, cross-item transfer, figures."""
from __future__ import annotations

import numpy as np
import pandas as pd

from .evaluation import evaluate, score_responses
from .items import Item, ReadmeInfo
from .skills import Skill, build_rubrics

__all__ = ["CONDITIONS", "conditions_table", "plot_conditions", "plot_trace", "plot_transfer", "score_condition",
           "transfer_matrix"]


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


