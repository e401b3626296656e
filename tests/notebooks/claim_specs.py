"""What each notebook claims, and how the tolerance of each claim is set: the generator of ``claims.py``.

Every row: (path in results.json "metrics", kind, floor, note). The tolerance is **measured**: the published run
(native CPU) is compared with a run of the same default profile on another CPU (``make test-other-cpu``:
``MKL_ENABLE_INSTRUCTIONS=AVX2 ATEN_CPU_CAPABILITY=avx2``, an empty model cache so notebook 01's SAE is retrained
there and every downstream notebook reads that SAE), and

* ``abs``: tolerance = max(3 x |native - emulated|, floor) — the floor is the precision the claim is stated at;
* ``exact``: counts and discrete facts that must not move (tokenizer-only quantities, sizes);
* ``min_shared``: a selected set; tolerance = (items shared by the two runs) - 2 (a near-tie may swap an item or
  two more); a set the other CPU shares less than half of is an error, not a claim.

Regenerate after republishing a notebook and re-running it on the other CPU::

    python -m tests.notebooks.claim_specs notebooks/results <folder with the other CPU's results.json files> [notebook ...]

(it rewrites ``claims.py``: the tables of the notebooks named, default all in SPECS; the others are kept;
the other CPU's folder holds ``<notebook>.json`` or ``<notebook>/results.json``, e.g. ``outputs/`` after
``make test-other-cpu``).
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

_LENS_PROMPTS = ("The capital of France is", "The opposite of hot is", "One, two, three, four,", "Water freezes at zero degrees")

SPECS: dict[str, list[tuple[str, str, float | None, str]]] = {
    "00_inside_a_language_model": [
        ("tokenize/n_tokens", "exact", None, "tokenizer only"),
        *[(f"logit_lens/{p}/final_token", "exact", None, "argmax with a wide margin")
          for p in _LENS_PROMPTS],
        *[(f"logit_lens/{p}/top1_from_block", "abs", 1.0, "a rank threshold: one block either way on near-ties")
          for p in _LENS_PROMPTS],
        *[(f"logit_lens/{p}/p_final", "abs", 0.01, "printed to 2 decimals")
          for p in _LENS_PROMPTS],
        ("probe/acc_full", "abs", 0.01, "probe accuracy, middle block"),
        ("probe/acc_pca2", "abs", 0.02, "2 PCs"),
        ("probe/acc_shuffled", "abs", 0.05, "chance control"),
        ("norms/median_norm/15", "abs", 0.5, "median norm, block 15"),
    ],
    # notebook 01 on EleutherAI's sparsify trainer (issue 16): four variance-explained figures, the k sweep at
    # inference on all and on ordinary tokens, and the detection score of the LLM's explanations over the control
    "01_sparse_autoencoders": [
        ("n_heldout_tokens", "exact", None, "held-out split by document, no arithmetic"),
        ("l0", "abs", 0.05, "TopK: k active latents but where fewer than k pre-activations are positive"),
        ("variance_explained", "abs", 0.01, "all held-out tokens"),
        ("variance_explained_no_outliers", "abs", 0.02, "outlier dims out"),
        ("variance_explained_ordinary", "abs", 0.01, "ordinary tokens (the outlier policy)"),
        ("variance_explained_ordinary_no_outliers", "abs", 0.01, "ordinary tokens, outlier dims out (the >= 0.70 target)"),
        ("dead_fraction", "abs", 0.01, "latents never active on held-out tokens"),
        ("dense_fraction", "abs", 0.005, "latents active on > 10% of held-out tokens"),
        ("ce_clean", "abs", 0.001, "the model alone"),
        ("ce_loss_recovered", "abs", 0.005, "the SAE spliced in"),
        ("variance_explained_by_k/64", "abs", 0.03, "k sweep at inference, all tokens (the anomaly of issue 16)"),
        ("variance_explained_ordinary_by_k/16", "abs", 0.03, "k sweep at inference, ordinary tokens"),
        ("variance_explained_ordinary_by_k/64", "abs", 0.03, "k sweep at inference, ordinary tokens"),
        ("detection_minus_control/LLM/estimate", "abs", 0.15,
         "detection AUROC, LLM explanations minus shuffled control (floor wide: llama.cpp kernels are not switched by the emulation)"),
    ],
    "02_reasoning_features": [
        ("n_tokens_corpus", "exact", None, "tokenizer only"),
        ("n_selected", "exact", None, "count above a quantile: fixed by construction"),
        *[(f"word_occurrences/{w}", "exact", None, "tokenizer only")
          for w in ("alternatively", "hmm", "maybe", "wait", "perhaps", "let me", "therefore", "however", "but")],
        ("selected", "min_shared", None, "ReasonScore selection; near-ties may swap a feature"),
        ("steered", "min_shared", None, "the top 8 selected features"),
        ("median_norm", "abs", 1.0, "median residual norm, block 15"),
        ("sink_kept_shared", "abs", 2.0, "selection with the sink kept vs excluded: features shared"),
        ("code_window_shared", "abs", 2.0, "selection with the code's 1/2 window vs the paper's 2/3: features shared"),
        ("contrast/gamma=0.0,measure=specificity/selected_minus_random", "abs", 0.03, "ablation: specificity, selected minus random"),
        ("contrast/gamma=0.5,measure=specificity/selected_minus_random", "abs", 0.08, "γ=0.5: specificity, selected minus random (the claim)"),
        ("contrast/gamma=1.0,measure=specificity/selected_minus_random", "abs", 0.15, "γ=1: specificity, selected minus random"),
        ("contrast/gamma=0.0,measure=d_mass/selected_minus_random", "abs", 0.05, "ablation: log-mass at sentence starts, selected minus random"),
        ("contrast/gamma=0.5,measure=d_mass/selected_minus_random", "abs", 0.08, "γ=0.5: log-mass at sentence starts, selected minus random"),
        ("contrast/gamma=1.0,measure=d_mass/selected_minus_random", "abs", 0.15, "γ=1: log-mass at sentence starts, selected minus random"),
        ("contrast_non_reasoning/gamma=0.5,measure=d_mass/selected_minus_non-reasoning", "abs", 0.1, "γ=0.5: selected minus non-reasoning"),
    ],
    "03_steering_refinement": [
        ("layer", "exact", None, "the SAE's block"),
        ("median_norm", "abs", 1.0, "median residual norm at the SAE's block"),
        ("concept_choice/concept=sentiment/AUROC (held out)", "abs", 0.02, "all-pairs direction, held-out AUROC"),
        ("concept_choice/concept=science/AUROC (held out)", "abs", 0.02, "all-pairs direction, held-out AUROC"),
        ("concept_choice/concept=formality/AUROC (held out)", "abs", 0.02, "all-pairs direction, held-out AUROC"),
        *[(f"grid_paired/concept={c},n_train={n},method={m}/minus_caa", "abs", 0.05, f"{m} minus CAA at N={n}, {c}")
          for c in ("sentiment", "science", "formality") for n in (5, 20) for m in ("sdcv", "sae_rsv", "probe")],
        *[(f"generation_paired/concept={c},method={m}/minus_caa", "abs", 0.05, f"generation contrast, {m} minus CAA, {c}")
          for c in ("sentiment", "science", "formality") for m in ("sdcv", "sae_rsv")],
    ],
}


def _get(d, path: str):
    from tests.notebooks.test_results import _get as get

    return get(d, path)


def _load(folder: Path, notebook: str) -> dict:
    for p in (folder / f"{notebook}.json", folder / notebook / "results.json"):
        if p.exists():
            return json.loads(p.read_text())
    raise FileNotFoundError(f"no results for {notebook} in {folder}")


def _fmt(x) -> str:
    return f"{x:.2g}" if isinstance(x, float) else str(x)


def rows(notebook: str, native: dict, other: dict) -> dict[str, tuple]:
    out = {}
    for path, kind, floor, note in SPECS[notebook]:
        a, b = _get(native["metrics"], path), _get(other["metrics"], path)
        if kind == "exact":
            if a != b:
                raise ValueError(f"{notebook} {path}: 'exact' claim moved between CPUs ({a!r} vs {b!r}); give it a tolerance")
            out[path] = (a, "exact", None, f"{note}; other CPU: same")
        elif kind == "abs":
            if any(isinstance(v, float) and math.isnan(v) for v in (a, b)):
                raise ValueError(f"{notebook} {path}: NaN in a claim")
            d = abs(float(a) - float(b))
            out[path] = (a, "abs", round(max(3 * d, floor), 4), f"{note}; measured |native - other CPU| = {_fmt(d)}")
        elif kind == "min_shared":
            shared = len(set(a) & set(b))
            if shared < len(a) / 2:
                raise ValueError(f"{notebook} {path}: the other CPU shares only {shared} of {len(a)}: not a robust set")
            tol = shared - 2
            out[path] = (list(a), "min_shared", tol, f"{note}; the other CPU shares {shared} of {len(a)}")
        else:
            raise ValueError(kind)
    return out


def main(argv: list[str]) -> None:
    """Regenerate the tables of the notebooks named (default: every notebook in SPECS); the other notebooks'
    tables in the current ``claims.py`` are kept as they are."""
    from tests.notebooks.claims import CLAIMS as current

    native, other = Path(argv[0]), Path(argv[1])
    only = argv[2:] or list(SPECS)
    table = dict(current)
    for nb in only:
        table[nb] = rows(nb, _load(native, nb), _load(other, nb))
    head = ('"""Expected values of the claims per notebook (default profile), generated by tests/notebooks/claim_specs.py\n'
            'from the published run and a run on another CPU; see that module for how each tolerance is set."""\n\nCLAIMS = {\n')
    body = []
    for nb in sorted(table):
        lines = [f"        {k!r}: {v!r}," for k, v in table[nb].items()]
        body.append(f"    {nb!r}: {{\n" + "\n".join(lines) + "\n    },")
    target = Path(__file__).with_name("claims.py")
    target.write_text(head + "\n".join(body) + "\n}\n")
    print(f"wrote {target}: {', '.join(f'{nb} ({len(table[nb])} claims)' for nb in sorted(table))}")


if __name__ == "__main__":
    main(sys.argv[1:])
