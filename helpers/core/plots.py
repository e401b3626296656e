"""Seaborn figures with readable titles and axes, shown inline and saved as PNG by ``Run.savefig``."""
from __future__ import annotations

import matplotlib.pyplot as plt
import seaborn as sns
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

__all__ = ["barplot", "boxplot", "facet_lineplot", "heatmap", "histplot", "lineplot", "scatter"]


def _finish(ax, title: str, xlabel: str, ylabel: str):
    ax.set_title(title, fontsize=12)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.figure.tight_layout()
    return ax.figure


def heatmap(table, *, title: str, xlabel: str, ylabel: str, cmap: str = "viridis", annot=None, fmt: str = "",
            figsize=(10, 3.5), vmin=None, vmax=None, cbar_label: str = ""):
    """``table``: a DataFrame (rows x columns) of numbers; ``annot``: same shape of labels, or None."""
    fig, ax = plt.subplots(figsize=figsize)
    sns.heatmap(table, ax=ax, cmap=cmap, annot=annot if annot is not None else False, fmt=fmt, vmin=vmin,
                vmax=vmax, cbar_kws={"label": cbar_label} if cbar_label else None, annot_kws={"fontsize": 7})
    return _finish(ax, title, xlabel, ylabel)


def lineplot(data, *, x: str, y: str, hue: str | None = None, title: str, xlabel: str, ylabel: str,
             logy: bool = False, figsize=(7, 3.5), marker: str = "o"):
    """A line per ``hue``. When every ``y`` is the same value the chart is replaced by a sentence (printed) and
    ``None`` is returned (``Run.savefig`` skips it): a flat line at one value reads as a result."""
    if data[y].nunique(dropna=True) <= 1:
        value = data[y].dropna().iloc[0] if data[y].notna().any() else "missing"
        print(f"{title}: every value of {ylabel} is {value} (no chart drawn).")
        return None
    fig, ax = plt.subplots(figsize=figsize)
    sns.lineplot(data=data, x=x, y=y, hue=hue, ax=ax, marker=marker)
    if logy:
        ax.set_yscale("log")
    return _finish(ax, title, xlabel, ylabel)


def scatter(data, *, x: str, y: str, hue: str, title: str, xlabel: str, ylabel: str, figsize=(6, 5)):
    fig, ax = plt.subplots(figsize=figsize)
    sns.scatterplot(data=data, x=x, y=y, hue=hue, ax=ax, s=28, alpha=0.8)
    return _finish(ax, title, xlabel, ylabel)


def histplot(values, *, title: str, xlabel: str, ylabel: str, bins="auto", discrete: bool = False, figsize=(7, 3.5)):
    fig, ax = plt.subplots(figsize=figsize)
    sns.histplot(x=values, bins=bins, discrete=discrete, ax=ax)
    return _finish(ax, title, xlabel, ylabel)


def barplot(data, *, x: str, y: str, hue: str | None = None, title: str, xlabel: str, ylabel: str, figsize=(8, 3.5)):
    fig, ax = plt.subplots(figsize=figsize)
    sns.barplot(data=data, x=x, y=y, hue=hue, ax=ax, errorbar=("ci", 95), seed=0)
    return _finish(ax, title, xlabel, ylabel)


def boxplot(data, *, x: str, y: str, title: str, xlabel: str, ylabel: str, figsize=(8, 3.5), ref: float | None = 0.5):
    """A box per ``x`` with every point drawn on top (small samples: the points are the data); ``ref`` draws a
    dashed reference line (e.g. chance)."""
    fig, ax = plt.subplots(figsize=figsize)
    sns.boxplot(data=data, x=x, y=y, ax=ax, color="0.85", showfliers=False)
    sns.stripplot(data=data, x=x, y=y, ax=ax, color="C0", size=4, jitter=0.15)
    if ref is not None:
        ax.axhline(ref, ls="--", color="0.4", lw=1)
    return _finish(ax, title, xlabel, ylabel)


def facet_lineplot(data, *, x: str, y: str, hue: str, col: str, title: str, xlabel: str, ylabel: str,
                   logx: bool = False, height: float = 3.2, errorbar=("ci", 95)):
    """One line panel per value of ``col`` (e.g. concept), hue by ``hue`` (e.g. method); a seaborn FacetGrid."""
    g = sns.relplot(data=data, x=x, y=y, hue=hue, col=col, kind="line", marker="o", height=height, aspect=1.1,
                    facet_kws={"sharey": False}, errorbar=errorbar)
    if logx:
        g.set(xscale="log")
        ticks = sorted({float(v) for v in data[x].dropna().unique() if float(v) > 0})
        for ax in g.axes.flat:  # plain ticks at the data's own x values, no 2x10^1-style minor labels
            ax.xaxis.set_major_locator(FixedLocator(ticks))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_locator(NullLocator())
    g.set_axis_labels(xlabel, ylabel)
    g.figure.suptitle(title, fontsize=12, y=1.04)
    return g.figure
