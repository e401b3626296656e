"""Scoring benchmark: constrained label likelihood with the shared prompt prefix's KV cache reused vs every full
prompt run from scratch, and batched greedy generation tokens/s, for the embedded models used by notebook 04.
Writes ``outputs/bench/scoring.json``.

Method: 24 real ASAP-SAS item-1 answers scored with the expert-rubric prompt (prefix ~700 tokens), disk cache
off, median of ``REPEATS`` runs after one warm-up; torch uses all cores.
"""
from __future__ import annotations

import json
import statistics
import time

from helpers import PROJECT_ROOT
from helpers import scoring as S
from helpers.llm import LocalChat
from helpers.notebook import environment

REPEATS = 2
OUT = PROJECT_ROOT / "outputs" / "bench"
MODELS = ("smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct")


def _median(fn, repeats: int = REPEATS) -> float:
    fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def bench_model(name: str, n: int = 24) -> dict:
    chat = LocalChat(name, batch_size=8, cache=False)
    item = S.load_item(1)
    texts = S.stratified_sample(item.val, n, 0)["EssayText"].tolist()
    prefix, tmpl = S.scoring_prompt(item.info, item.info.rubric)
    sufs = [tmpl.format(response=S._truncate_words(t, 60)) for t in texts]
    labels = [str(x) for x in item.labels]
    n_prefix = len(chat.tokenizer(chat.split_prompt(prefix, "")[0], add_special_tokens=False).input_ids)
    cached = _median(lambda: chat.label_distribution(prefix, sufs, labels, reuse_prefix=True))
    full = _median(lambda: chat.label_distribution(prefix, sufs, labels, reuse_prefix=False))
    prompts = [f"Write one sentence about scoring answer {i}." for i in range(4)]
    chat.stats["tokens_generated"] = 0
    gen = _median(lambda: chat.complete_many(prompts, max_tokens=24), repeats=1)
    toks = chat.stats["tokens_generated"] / 2  # warm-up + 1 repeat
    return {"prefix_tokens": n_prefix, "responses": n, "cached_prefix_s": round(cached, 2),
            "full_prompt_s": round(full, 2), "speedup": round(full / cached, 2),
            "responses_per_s_cached": round(n / cached, 2), "generate_batch4_tokens_per_s": round(toks / gen, 2)}


def main() -> dict:
    res = {"machine": environment(), **{m: bench_model(m) for m in MODELS}}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "scoring.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
