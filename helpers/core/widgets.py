"""Interactive widgets (ipywidgets). Each has a static rendering beside it in the notebooks."""
from __future__ import annotations

import pandas as pd

from .features import static_report
from .steering import generate

__all__ = ["feature_browser", "response_viewer", "steering_panel"]


def steering_panel(model, tokenizer, layer: int, vectors: dict, *, prompt: str = "", scales=(-4.0, 4.0),
                   default_scale: float = 2.0, max_new_tokens: int = 64):
    """ipywidgets panel: pick a vector (e.g. an SAE feature), a multiplier and a prompt; 'Generate' shows the
    unsteered and the steered completion side by side (greedy). ``vectors`` maps a name to a unit-scale vector."""
    import html

    import ipywidgets as w
    from IPython.display import HTML, display

    pick = w.Dropdown(options=list(vectors), description="vector")
    scale = w.FloatSlider(value=default_scale, min=scales[0], max=scales[1], step=0.5, description="multiplier")
    text = w.Textarea(value=prompt, description="prompt", layout=w.Layout(width="90%"))
    button = w.Button(description="Generate")
    out = w.Output()

    def run(_=None):
        out.clear_output()
        plain = generate(model, tokenizer, [text.value], max_new_tokens=max_new_tokens)[0].text
        steered = generate(model, tokenizer, [text.value], max_new_tokens=max_new_tokens, layer=layer,
                           vector=vectors[pick.value], scale=scale.value)[0].text
        with out:
            display(HTML(f"<table><tr><th>unsteered</th><th>{html.escape(pick.value)} x {scale.value}</th></tr>"
                         f"<tr><td style='vertical-align:top'>{html.escape(plain)}</td>"
                         f"<td style='vertical-align:top'>{html.escape(steered)}</td></tr></table>"))

    button.on_click(run)
    return w.VBox([pick, scale, text, button, out])



def feature_browser(features: dict[int, dict]):
    """ipywidgets panel: choose a latent, see its label, logit-lens tokens and contexts."""
    import ipywidgets as w
    from IPython.display import HTML, display

    pick = w.Dropdown(options=[(f"{i}: {f.get('label', '')}", i) for i, f in features.items()], description="latent")
    out = w.Output()

    def show(change=None):
        out.clear_output()
        with out:
            display(HTML(static_report({pick.value: features[pick.value]})))

    pick.observe(show, names="value")
    show()
    return w.VBox([pick, out])




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

