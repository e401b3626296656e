"""Scoring benchmark: constrained label likelihood with the shared prompt prefix's KV cache reused vs every full
prompt run from scratch, and batched greedy generation tokens/s, for the embedded models used by notebook 04;
then the same scoring and generation through llama.cpp's server (xllamacpp, the same GGUF file), side by side.
Writes ``outputs/bench/scoring.json``.

Method: 24 real ASAP-SAS item-1 answers scored with the expert-rubric prompt (prefix ~700 tokens), disk cache
off, median of ``REPEATS`` runs after one warm-up; torch uses all cores.
"""
from __future__ import annotations

from helpers.core.llm import LocalChat
from helpers.harness.notebook import environment
from helpers.studies import scoring as S

from .common import OUT, median_time, write_result

REPEATS = 2
MODELS = ("smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct")


def bench_model(name: str, n: int = 24) -> dict:
    chat = LocalChat(name, batch_size=8, cache=False)
    item = S.load_item(1)
    texts = S.stratified_sample(item.val, n, 0)["EssayText"].tolist()
    prefix, tmpl = S.scoring_prompt(item.info, item.info.rubric)
    sufs = [tmpl.format(response=S._truncate_words(t, 60)) for t in texts]
    labels = [str(x) for x in item.labels]
    n_prefix = len(chat.tokenizer(chat.split_prompt(prefix, "")[0], add_special_tokens=False).input_ids)
    cached = median_time(lambda: chat.label_distribution(prefix, sufs, labels, reuse_prefix=True), REPEATS)
    full = median_time(lambda: chat.label_distribution(prefix, sufs, labels, reuse_prefix=False), REPEATS)
    prompts = [f"Write one sentence about scoring answer {i}." for i in range(4)]
    chat.stats["tokens_generated"] = 0
    gen = median_time(lambda: chat.complete_many(prompts, max_tokens=24), repeats=1)
    toks = chat.stats["tokens_generated"] / 2  # warm-up + 1 repeat
    return {"prefix_tokens": n_prefix, "responses": n, "cached_prefix_s": round(cached, 2),
            "full_prompt_s": round(full, 2), "speedup": round(full / cached, 2),
            "responses_per_s_cached": round(n / cached, 2), "generate_batch4_tokens_per_s": round(toks / gen, 2)}


def bench_llamacpp(name: str, n: int = 24) -> dict:
    """The same 24 responses and generation prompts through llama.cpp's OpenAI-compatible server (one slot, all
    cores; the server caches the shared prefix itself). Server start-up is timed separately."""
    import time

    from helpers.core.llama_server import LlamaServer
    from helpers.core.llm import OpenAIChat

    item = S.load_item(1)
    texts = S.stratified_sample(item.val, n, 0)["EssayText"].tolist()
    prefix, tmpl = S.scoring_prompt(item.info, item.info.rubric)
    sufs = [tmpl.format(response=S._truncate_words(t, 60)) for t in texts]
    labels = [str(x) for x in item.labels]
    t0 = time.perf_counter()
    with LlamaServer(name) as srv:
        start = time.perf_counter() - t0
        chat = OpenAIChat(model=srv.model_alias, base_url=srv.base_url, cache=False, concurrency=1)
        score = median_time(lambda: chat.label_distribution(prefix, sufs, labels), REPEATS)
        prompts = [f"Write one sentence about scoring answer {i}." for i in range(4)]
        toks = []

        def gen():
            for p in prompts:
                r = chat._client().chat.completions.create(model=chat.model, max_tokens=24, temperature=0.0,
                                                           messages=[{"role": "user", "content": p}])
                toks.append(r.usage.completion_tokens)

        g = median_time(gen, repeats=1)
    return {"server_start_s": round(start, 2), "responses": n, "score_s": round(score, 2),
            "responses_per_s": round(n / score, 2), "generate_tokens_per_s": round(sum(toks) / 2 / g, 2)}


def main() -> dict:
    res = {"machine": environment(), **{m: bench_model(m) for m in MODELS},
           "llama.cpp": {m: bench_llamacpp(m) for m in MODELS}}
    OUT.mkdir(parents=True, exist_ok=True)
    return write_result("scoring", res)


if __name__ == "__main__":
    main()
