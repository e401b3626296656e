"""SAE benchmark: activation caching tokens/s, then one TopK SAE config (d_sae, k, batch) trained at equal tokens on
the same cached activations by three trainers, side by side: tokens/s and held-out variance explained.

* ``saelens``: the collection's other trainer (``helpers.core.sae``: SAELens' ``SAETrainer`` + ``TopKTrainingSAE``, AuxK,
  Adam lr 1e-3, ``expected_average_only_in`` normalisation).
* ``plain_torch``: a plain-PyTorch TopK loop (Adam lr 1e-3, unit-norm decoder, no AuxK, no bookkeeping): the floor.
* ``eai_sparsify``: the collection's default trainer, EleutherAI's ``sparsify`` (PyPI ``eai-sparsify``) through
  ``helpers.core.sae.fit_sparsify``: its own ``Trainer.fit`` with its defaults (signum + schedule-free, lr
  5e-3 / sqrt(latents / 2^14), b_dec set to the first batch's mean, decoder unit-norm with parallel-gradient
  removal, its FVU loss) plus AuxK as in the SAELens path; a stand-in "model" whose one module replays the cached
  activations feeds it the same rows in the same order as the others.

Variance explained is measured on held-out texts, on all tokens and on the ordinary tokens of the collection's
outlier policy (``helpers.core.sae.reconstruction_metrics``). ``SAE_BENCH_STEPS`` sets the steps (default 25).
Writes ``outputs/bench/sae.json``.
"""
from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from pathlib import Path

import torch

from helpers.core import activations as A
from helpers.core import sae as S
from helpers.core.models import load_model

from .common import OUT, write_result


class _DenseView:
    """Any TopK coder as ``encode(x) -> dense latents`` / ``decode(f)`` for ``S.reconstruction_metrics``."""

    def __init__(self, W_enc, b_enc, W_dec, b_dec, k, encode=None):
        self.W_enc, self.b_enc, self.W_dec, self.b_dec, self.k = W_enc, b_enc, W_dec, b_dec, k
        self._encode = encode

    @torch.no_grad()
    def encode(self, x):
        if self._encode is not None:
            return self._encode(x)
        pre = torch.relu((x - self.b_dec) @ self.W_enc + self.b_enc)
        v, i = pre.topk(self.k, dim=-1)
        return torch.zeros_like(pre).scatter_(-1, i, v)

    @torch.no_grad()
    def decode(self, f):
        return f @ self.W_dec + self.b_dec


def _quality(view, heldout: torch.Tensor) -> dict:
    r = S.reconstruction_metrics(view, heldout)
    return {m: round(float(r[m]), 4) for m in ("variance_explained", "variance_explained_no_outliers",
                                               "variance_explained_ordinary", "variance_explained_ordinary_no_outliers",
                                               "dead_fraction")}


def run_saelens(cfg: S.SAETrainConfig, x: torch.Tensor, heldout: torch.Tensor) -> dict:
    sae = S._make_training_sae(cfg, x.shape[1])
    t0 = time.perf_counter()
    S._fit(cfg, sae, S._token_batches(x, cfg.batch_size, 0), progress=False)
    dt = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        sae.save_inference_model(tmp)
        inf = S.load_sae(tmp)
    return {"tokens_per_s": round(cfg.n_train_tokens / dt, 1), **_quality(inf, heldout)}


def run_plain(cfg: S.SAETrainConfig, x: torch.Tensor, heldout: torch.Tensor) -> dict:
    torch.manual_seed(0)
    d, steps = x.shape[1], cfg.n_train_tokens // cfg.batch_size
    W_dec = torch.nn.Parameter(torch.nn.functional.normalize(torch.randn(cfg.d_sae, d), dim=-1))
    W_enc = torch.nn.Parameter(W_dec.detach().T.clone())
    b_enc, b_dec = torch.nn.Parameter(torch.zeros(cfg.d_sae)), torch.nn.Parameter(x.mean(0).clone())
    opt = torch.optim.Adam([W_dec, W_enc, b_enc, b_dec], lr=cfg.lr)
    batches = S._token_batches(x, cfg.batch_size, 0)
    t0 = time.perf_counter()
    for _ in range(steps):
        xb = next(batches)
        pre = torch.relu((xb - b_dec) @ W_enc + b_enc)
        v, i = pre.topk(cfg.k, dim=-1)
        f = torch.zeros_like(pre).scatter(-1, i, v)
        loss = (f @ W_dec + b_dec - xb).pow(2).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            W_dec.data = torch.nn.functional.normalize(W_dec.data, dim=-1)
    dt = time.perf_counter() - t0
    view = _DenseView(W_enc.detach(), b_enc.detach(), W_dec.detach(), b_dec.detach(), cfg.k)
    return {"tokens_per_s": round(steps * cfg.batch_size / dt, 1), **_quality(view, heldout)}


def run_sparsify(cfg: S.SAETrainConfig, x: torch.Tensor, heldout: torch.Tensor) -> dict:
    """The collection's default trainer: ``helpers.core.sae.fit_sparsify`` (EleutherAI's sparsify ``Trainer.fit``
    on the same rows, saved in SAELens' layout and loaded back the way notebooks load it)."""
    try:
        from importlib.metadata import version

        ver = version("eai-sparsify")
    except Exception as e:  # noqa: BLE001 - the error text is the result
        return {"error": f"{type(e).__name__}: {e}"}
    scfg = dataclasses.replace(cfg, trainer="sparsify")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        S.fit_sparsify(scfg, S._token_batches(x, cfg.batch_size, 0), Path(tmp) / "sae")
        dt = time.perf_counter() - t0
        inf = S.load_sae(Path(tmp) / "sae")
    return {"tokens_per_s": round(cfg.n_train_tokens // cfg.batch_size * cfg.batch_size / dt, 1), "version": ver,
            "optimizer": "signum + schedule-free (sparsify's default), lr 5e-3/sqrt(d_sae/2^14)",
            "note": "the collection's default trainer; includes sparsify's first-step b_dec init and the save", **_quality(inf, heldout)}


def main() -> dict:
    OUT.mkdir(parents=True, exist_ok=True)
    steps = int(os.environ.get("SAE_BENCH_STEPS", "25"))
    model, tok = load_model("smollm2-135m-instruct", dtype="float32")
    cfg = S.SAETrainConfig(corpus=(("nltk", 300), ("chat", 150), ("reasoning", 150)), n_train_tokens=steps * 4096)
    texts, _ = S.build_corpus(tok, cfg.corpus, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        store = A.capture_to_disk(model, tok, texts, [cfg.layer], Path(tmp) / "acts", max_length=cfg.max_length,
                                  store_dtype=torch.float32, progress=False)
        cache_s = time.perf_counter() - t0
        split = S.split_tokens(store, cfg)
        n_cached = len(store)
    x, heldout = split["train"], split["heldout"]
    print(f"[bench] cached {n_cached} tokens in {cache_s:.1f} s; training {steps} steps x {cfg.batch_size} tokens")
    trainers = {"eai_sparsify": run_sparsify(cfg, x, heldout), "saelens": run_saelens(cfg, x, heldout),
                "plain_torch": run_plain(cfg, x, heldout)}
    ok = {n: r for n, r in trainers.items() if "tokens_per_s" in r}
    fastest = max(ok, key=lambda n: ok[n]["tokens_per_s"])
    res = {"activation_caching": {"tokens": n_cached, "seconds": round(cache_s, 2),
                                  "tokens_per_s": round(n_cached / cache_s, 1), "layer": cfg.layer},
           "sae_training": {"d_sae": cfg.d_sae, "k": cfg.k, "batch": cfg.batch_size, "tokens": cfg.n_train_tokens,
                            "n_train_rows": len(x), "n_heldout_tokens": len(heldout), "threads": torch.get_num_threads(),
                            "trainers": trainers, "fastest": fastest, "default_trainer": "eai_sparsify",
                            "default_over_fastest": round(ok["eai_sparsify"]["tokens_per_s"] / ok[fastest]["tokens_per_s"], 2)
                            if "eai_sparsify" in ok else None,
                            "saelens_over_fastest": round(ok["saelens"]["tokens_per_s"] / ok[fastest]["tokens_per_s"], 2),
                            "saelens_over_plain": round(ok["saelens"]["tokens_per_s"] / ok["plain_torch"]["tokens_per_s"], 2)}}
    return write_result("sae", res)


if __name__ == "__main__":
    main()
