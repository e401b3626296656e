"""Steering: generation under an added residual-stream vector (one application path for every method).

``generate`` runs batched greedy (or seeded sampled) chat generation, optionally adding ``scale * vector`` to the
residual stream after block ``layer`` through ``helpers.activations.add_vector`` — from the first *generated*
position on by default (``from_prompt=True`` steers the prompt tokens too) — and optionally forbidding token
sequences (``bad_words_ids``, for word-ban ablations). Each row's threshold is its own prompt length, so left
padding in a batch does not shift where steering starts.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from . import activations as A

__all__ = ["Generation", "generate", "sae_feature_vector", "steering_panel"]


@dataclass
class Generation:
    prompt: str
    text: str
    n_tokens: int  # generated tokens, up to and excluding EOS
    hit_limit: bool  # stopped by max_new_tokens rather than EOS


def sae_feature_vector(sae, latent: int, f_max: float, gamma: float) -> torch.Tensor:
    """``gamma * f_max * W_dec[latent]``: the feature-steering vector of arXiv 2503.18878 (Sec. 5, following
    Templeton et al. 2024), with ``f_max`` the latent's maximum activation on the analysis corpus."""
    return gamma * f_max * sae.W_dec[latent].detach().float()


@torch.no_grad()
def generate(model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int = 128, layer: int | None = None,
             vector: torch.Tensor | None = None, scale: float = 1.0, from_prompt: bool = False,
             bad_words_ids: list[list[int]] | None = None, batch_size: int = 8, system: str | None = None,
             do_sample: bool = False, temperature: float = 1.0, seed: int = 0, chat: bool = True,
             progress: bool = False) -> list[Generation]:
    """Generate a reply for each prompt (chat template applied when ``chat``), steered when ``vector`` is given."""
    from tqdm.auto import tqdm

    if vector is not None and layer is None:
        raise ValueError("a steering vector needs the layer it is added at (layer=...).")
    out: list[Generation] = []
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        for s in tqdm(range(0, len(prompts), batch_size), desc="generate", disable=not progress):
            batch = list(prompts[s:s + batch_size])
            if chat:
                msgs = [([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": p}]
                        for p in batch]
                enc = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt",
                                                    padding=True, return_dict=True)
            else:
                enc = tokenizer(batch, return_tensors="pt", padding=True)
            enc = {k: v.to(model.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
            width = enc["input_ids"].shape[1]
            prompt_len = enc["attention_mask"].sum(1)  # positions are per row, padding excluded
            torch.manual_seed(seed + s)
            kw = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, pad_token_id=tokenizer.pad_token_id,
                      bad_words_ids=bad_words_ids or None)
            if do_sample:
                kw["temperature"] = temperature
            if vector is not None:
                thr = torch.zeros_like(prompt_len) if from_prompt else prompt_len
                with A.add_vector(model, layer, vector, scale, min_token_index=thr):
                    seqs = model.generate(**enc, **kw)
            else:
                seqs = model.generate(**enc, **kw)
            for p, row in zip(batch, seqs[:, width:]):
                ids = row.tolist()
                eos = [i for i, t in enumerate(ids) if t in (tokenizer.eos_token_id, tokenizer.pad_token_id)]
                n = eos[0] if eos else len(ids)
                out.append(Generation(prompt=p, text=tokenizer.decode(ids[:n], skip_special_tokens=True).strip(),
                                      n_tokens=n, hit_limit=not eos))
    finally:
        tokenizer.padding_side = old_side
    return out


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
