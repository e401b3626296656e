"""SAE benchmark: activation caching tokens/s, and SAE training tokens/s of our path (SAELens' SAETrainer +
TopKTrainingSAE) vs a plain-PyTorch TopK loop on the same cached activations (same d_sae, k, batch, Adam).

The plain loop is the floor (the same forward/backward math, none of the trainer's bookkeeping: dead-latent
tracking, AuxK, activation-norm estimation); the ratio says what the maintained library costs. EleutherAI's
``sparsify`` was the other candidate: its PyPI release 1.7.0 is a source distribution that does not build here.
Writes ``outputs/bench/sae.json``.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from helpers.core import activations as A
from helpers.core import sae as S
from helpers.core.models import load_model

from .common import OUT, write_result


def plain_topk_tokens_per_s(x: torch.Tensor, d_sae: int, k: int, batch: int, steps: int) -> float:
    torch.manual_seed(0)
    d = x.shape[1]
    W_dec = torch.nn.Parameter(torch.nn.functional.normalize(torch.randn(d_sae, d), dim=-1))
    W_enc = torch.nn.Parameter(W_dec.detach().T.clone())
    b_enc, b_dec = torch.nn.Parameter(torch.zeros(d_sae)), torch.nn.Parameter(x.mean(0).clone())
    opt = torch.optim.Adam([W_dec, W_enc, b_enc, b_dec], lr=1e-3)
    batches = S._token_batches(x, batch, 0)
    t0 = time.perf_counter()
    for _ in range(steps):
        xb = next(batches)
        pre = torch.relu((xb - b_dec) @ W_enc + b_enc)
        v, i = pre.topk(k, dim=-1)
        f = torch.zeros_like(pre).scatter(-1, i, v)
        loss = (f @ W_dec + b_dec - xb).pow(2).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            W_dec.data = torch.nn.functional.normalize(W_dec.data, dim=-1)
    return steps * batch / (time.perf_counter() - t0)


def main() -> dict:
    OUT.mkdir(parents=True, exist_ok=True)
    model, tok = load_model("smollm2-135m-instruct", dtype="float32")
    cfg = S.SAETrainConfig(corpus=(("nltk", 300), ("chat", 150), ("reasoning", 150)), n_train_tokens=20 * 4096)
    texts, _ = S.build_corpus(tok, cfg.corpus, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        store = A.capture_to_disk(model, tok, texts, [cfg.layer], Path(tmp) / "acts", max_length=cfg.max_length,
                                  store_dtype=torch.float32, progress=False)
        cache_s = time.perf_counter() - t0
        x = S.split_tokens(store, cfg)["train"]
        n_cached = len(store)
    print(f"[bench] cached {n_cached} tokens in {cache_s:.1f} s")
    sae = S._make_training_sae(cfg, x.shape[1])
    t0 = time.perf_counter()
    S._fit(cfg, sae, S._token_batches(x, cfg.batch_size, 0), progress=False)
    ours = cfg.n_train_tokens / (time.perf_counter() - t0)
    plain = plain_topk_tokens_per_s(x, cfg.d_sae, cfg.k, cfg.batch_size, steps=20)
    res = {"activation_caching": {"tokens": n_cached, "seconds": round(cache_s, 2),
                                  "tokens_per_s": round(n_cached / cache_s, 1), "layer": cfg.layer},
           "sae_training": {"d_sae": cfg.d_sae, "k": cfg.k, "batch": cfg.batch_size, "tokens": cfg.n_train_tokens,
                            "saelens_trainer_tokens_per_s": round(ours, 1),
                            "plain_torch_topk_tokens_per_s": round(plain, 1),
                            "saelens_over_plain": round(ours / plain, 2),
                            "note": "sparsify 1.7.0 (PyPI sdist) fails to build here; not compared"}}
    return write_result("sae", res)


if __name__ == "__main__":
    main()
