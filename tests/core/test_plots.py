"""Figures: readable log axes (plain ticks at the data's values) and a sentence instead of a flat chart."""
from __future__ import annotations

import pandas as pd

from helpers.core import plots


def test_constant_data_gives_a_sentence_not_a_chart(capsys):
    flat = pd.DataFrame({"gamma": [0, 1, 2], "rate": [0.0, 0.0, 0.0]})
    assert plots.lineplot(flat, x="gamma", y="rate", title="Steering", xlabel="γ", ylabel="reflection rate") is None
    assert "every value of reflection rate is 0.0" in capsys.readouterr().out
    varied = flat.assign(rate=[0.0, 0.5, 1.0])
    assert plots.lineplot(varied, x="gamma", y="rate", title="t", xlabel="x", ylabel="y") is not None


def test_log_x_facets_have_plain_ticks_at_the_data_values():
    df = pd.DataFrame({"N": [10, 20, 50, 10, 20, 50], "gain": [0.1, 0.2, 0.3, 0.0, 0.1, 0.2], "method": ["a"] * 3 + ["b"] * 3,
                       "concept": ["c"] * 6})
    fig = plots.facet_lineplot(df, x="N", y="gain", hue="method", col="concept", title="t", xlabel="N", ylabel="gain", logx=True)
    ax = fig.axes[0]
    fig.canvas.draw()
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == ["10", "20", "50"] and ax.xaxis.get_minor_ticks() == []
