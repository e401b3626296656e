"""Foundation benchmark: model load (GGUF vs cache), capture tokens/s (full vs truncated) against the machine's
matmul FLOP/s, fp32 vs bf16 forward, and plain vs hooked generation. Writes ``outputs/bench/foundation.json``.

Method: each timing is the median of ``REPEATS`` runs after one warm-up, with torch using all cores.
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from helpers.core import activations as A
from helpers.core import data
from helpers.core.models import load_model
from helpers.harness.notebook import environment

from .common import OUT, median_time, write_result

REPEATS = 3


def matmul_flops(dtype=torch.float32, n: int = 2048) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    t = median_time(lambda: a @ b)
    return 2 * n**3 / t


def load_times() -> dict:
    """Cold load (dequantize the GGUF into an empty cache) in a subprocess, then warm loads."""
    code = ("import time; t=time.time(); from helpers.core.models import load_model; "
            "load_model('smollm2-135m-instruct', dtype='float32'); print(time.time()-t)")
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "XAI_CACHE": tmp}
        cold = float(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                    check=True).stdout.strip().splitlines()[-1])
        warm = float(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                    check=True).stdout.strip().splitlines()[-1])
    return {"gguf_dequantize_s": round(cold, 2), "cached_safetensors_s": round(warm, 2),
            "speedup": round(cold / warm, 1)}


def forward_flops_per_token(model, seq_len: int, upto_layer: int | None = None) -> float:
    """2 x (matmul parameters used) per token + attention score/value matmuls (causal: ~seq/2 keys per query)."""
    cfg = model.config
    L = cfg.num_hidden_layers if upto_layer is None else upto_layer + 1
    d, h = cfg.hidden_size, cfg.num_attention_heads
    dh = d // h
    kv = cfg.num_key_value_heads * dh
    per_layer = 2 * (d * d + 2 * d * kv + d * d + 3 * d * cfg.intermediate_size) + 2 * 2 * h * dh * seq_len / 2
    head = 2 * d * cfg.vocab_size if upto_layer is None else 0
    return L * per_layer + head


def capture_bench(model, tok, texts, seq_len: int, peak: float) -> dict:
    out = {}
    n_tok = None
    for label, layers, stop in (("full_forward", [model.config.num_hidden_layers - 1], False),
                                ("truncated_layer15", [15], True), ("truncated_layer5", [5], True)):
        res = {}

        def go():
            res["a"] = A.capture(model, tok, texts, layers, max_length=seq_len, batch_size=16, stop_early=stop,
                                 progress=False)

        t = median_time(go)
        n_tok = res["a"].n_tokens
        upto = None if not stop else layers[0]
        achieved = forward_flops_per_token(model, seq_len, upto) * n_tok / t
        out[label] = {"tokens_per_s": round(n_tok / t, 1), "seconds": round(t, 3),
                      "achieved_gflops": round(achieved / 1e9, 1), "fraction_of_matmul_peak": round(achieved / peak, 3)}
    out["n_tokens"] = n_tok
    out["speedup_layer15_vs_full"] = round(out["truncated_layer15"]["tokens_per_s"] / out["full_forward"]["tokens_per_s"], 2)
    return out


def dtype_bench(texts, seq_len: int) -> dict:
    out = {}
    for dt in ("float32", "bfloat16"):
        model, tok = load_model("smollm2-135m-instruct", dtype=dt)
        sub = texts[:32]
        res = {}

        def go():
            res["a"] = A.capture(model, tok, sub, [29], max_length=seq_len, batch_size=16, stop_early=False,
                                 progress=False)

        t = median_time(go, repeats=1)
        out[dt] = {"forward_tokens_per_s": round(res["a"].n_tokens / t, 1)}
    out["bf16_over_fp32"] = round(out["bfloat16"]["forward_tokens_per_s"] / out["float32"]["forward_tokens_per_s"], 2)
    return out


def generation_bench(model, tok, new_tokens: int = 48) -> dict:
    prompts = ["Write a short story about a robot.", "Explain photosynthesis.", "List three fruits.",
               "What is the tallest mountain?"]
    tok.padding_side = "left"
    enc = tok.apply_chat_template([[{"role": "user", "content": p}] for p in prompts], add_generation_prompt=True,
                                  return_tensors="pt", padding=True, return_dict=True)
    tok.padding_side = "right"
    kw = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)

    def plain():
        with torch.inference_mode():
            model.generate(**enc, **kw)

    def hooked():
        with A.add_vector(model, 15, torch.zeros(A.d_model(model)), 1.0), torch.inference_mode():
            model.generate(**enc, **kw)

    # interleave to cancel drift
    tp, th = [], []
    plain(), hooked()
    for _ in range(REPEATS):
        t0 = time.perf_counter(); plain(); tp.append(time.perf_counter() - t0)
        t0 = time.perf_counter(); hooked(); th.append(time.perf_counter() - t0)
    n = len(prompts) * new_tokens
    p, h = statistics.median(tp), statistics.median(th)
    return {"batch": len(prompts), "new_tokens": new_tokens, "plain_tokens_per_s": round(n / p, 1),
            "hooked_tokens_per_s": round(n / h, 1), "overhead_ratio": round(h / p, 3), "target_overhead": 1.03}


def main() -> dict:
    OUT.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    print("[bench] matmul FLOP/s")
    peak32, peak16 = matmul_flops(torch.float32), matmul_flops(torch.bfloat16)
    print("[bench] model load: GGUF dequantize vs cached safetensors")
    loads = load_times()
    model, tok = load_model("smollm2-135m-instruct", dtype="float32")
    texts = [t for t in data.load("gsm8k-train")["answer"].tolist()[:64]]
    print("[bench] capture tokens/s")
    cap = capture_bench(model, tok, texts, 128, peak32)
    print("[bench] fp32 vs bf16 forward")
    dts = dtype_bench(texts, 128)
    print("[bench] plain vs hooked generation")
    gen = generation_bench(model, tok)
    res = {"machine": {**environment(), "matmul_gflops_fp32": round(peak32 / 1e9, 1),
                       "matmul_gflops_bf16": round(peak16 / 1e9, 1)},
           "load": loads, "capture": cap, "dtype": dts, "generation": gen}
    return write_result("foundation", res)


if __name__ == "__main__":
    main()
