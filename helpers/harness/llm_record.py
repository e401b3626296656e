"""A record of LLM answers: export the on-disk LLM cache to one small file, and seed an empty cache from it.

    python -m helpers llm record [--cache DIR] [--out notebooks/results/llm-record.jsonl.gz]
    python -m helpers llm seed [RECORD]        (``make test`` runs it first; ``XAI_LLM_REPLAY=0`` skips it)

Why: an answer of the llama.cpp server is not a pure function of its request. The same request gives another
answer on another CPU, with another thread count, or batched beside other requests (``concurrency`` > 1); on
2026-12-07, 39 of 251 requests common to two cold runs on one machine (2 threads vs 1) came back different, and
every explanation downstream of a changed one became a new request. A record makes the published run's answers
an input, like a dataset: a fresh clone replays them and recomputes everything else (activations, SAEs, steering,
the statistics over the answers) on its own CPU, in minutes instead of the ~45 core-minutes those ~1,800 calls
cost on 2 cores. A request that is not in the record (a changed prompt, another model) is still sent to the model.

What is kept: for each cache file, its path (the sha256 of the request: model, messages, decoding parameters) and
the reply (``value`` / ``content`` and the decoding ``params``), never the prompt text (prompts carry dataset text,
e.g. ASAP-SAS student answers, which this repository does not redistribute). Answers from an ``http(s)://``
endpoint (a remote API, the tests' fake servers) are left out: only the local llama.cpp models' answers are recorded.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import time
from pathlib import Path

from helpers.core.paths import cache_dir

__all__ = ["DEFAULT_RECORD", "record", "seed"]

DEFAULT_RECORD = Path(__file__).resolve().parents[2] / "notebooks" / "results" / "llm-record.jsonl.gz"
FORMAT = "usable-xai llm record v1"


def _llm_dir(cache: str | Path | None) -> Path:
    return Path(cache) if cache else cache_dir() / "llm"


def record(out: str | Path = DEFAULT_RECORD, *, cache: str | Path | None = None, note: str = "") -> dict:
    """Write every local-model answer in the LLM cache (``cache``, default ``$XAI_CACHE/llm``) to ``out``."""
    src = _llm_dir(cache)
    if not src.is_dir():
        raise FileNotFoundError(f"no LLM cache at {src}: run the notebooks (or `make test`) first, or pass --cache DIR.")
    rows, skipped = [], {"remote": 0, "unreadable": 0}
    for f in sorted(src.glob("*/*.json")):
        try:
            data = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError):
            skipped["unreadable"] += 1
            continue
        base = str((data.get("key") or {}).get("base_url", ""))
        if base.startswith(("http://", "https://")):
            skipped["remote"] += 1
            continue
        payload = {k: v for k, v in data.items() if k in ("value", "content", "params")}
        if "value" not in payload and "content" not in payload:
            skipped["unreadable"] += 1
            continue
        rows.append({"path": f"{f.parent.name}/{f.name}", "payload": payload})
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    header = {"format": FORMAT, "n": len(rows), "recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "note": note, "skipped": skipped}
    tmp = out.with_name(out.name + f".{os.getpid()}.tmp")
    with gzip.open(tmp, "wt", compresslevel=9) as g:
        g.write(json.dumps(header) + "\n")
        for r in rows:
            g.write(json.dumps(r, sort_keys=True) + "\n")
    tmp.replace(out)
    return header


def seed(path: str | Path = DEFAULT_RECORD, *, cache: str | Path | None = None) -> dict:
    """Write the record's answers into the LLM cache where a file is missing (an existing answer is never replaced)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no LLM record at {path}: `python -m helpers llm record` writes one from a cache.")
    dst = _llm_dir(cache)
    counts = {"seeded": 0, "present": 0}
    with gzip.open(path, "rt") as g:
        header = json.loads(g.readline())
        if header.get("format") != FORMAT:
            raise ValueError(f"{path} is not an LLM record ({FORMAT!r}); got header {header!r:.200}.")
        for line in g:
            r = json.loads(line)
            rel = Path(r["path"])
            if len(rel.parts) != 2 or rel.suffix != ".json" or ".." in rel.parts:
                raise ValueError(f"{path}: bad entry path {r['path']!r} (expected <h[:2]>/<sha256>.json).")
            target = dst / rel
            if target.exists():
                counts["present"] += 1
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_suffix(f".{os.getpid()}.seed.tmp")
            tmp.write_text(json.dumps(r["payload"]))
            tmp.replace(target)
            counts["seeded"] += 1
    if counts["seeded"] + counts["present"] != header.get("n"):
        raise ValueError(f"{path}: header says {header.get('n')} answers, found {sum(counts.values())} (truncated?).")
    return {**counts, "n": header["n"], "recorded": header.get("recorded"), "cache": str(dst)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m helpers llm", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record", help="export the LLM cache's local-model answers to a record file")
    r.add_argument("--cache", default=None, help="an LLM cache folder (default: $XAI_CACHE/llm)")
    r.add_argument("--out", default=str(DEFAULT_RECORD))
    r.add_argument("--note", default="", help="where the answers come from (kept in the header)")
    s = sub.add_parser("seed", help="write a record's answers into the LLM cache where missing")
    s.add_argument("record", nargs="?", default=str(DEFAULT_RECORD))
    s.add_argument("--cache", default=None, help="an LLM cache folder (default: $XAI_CACHE/llm)")
    a = ap.parse_args(argv)
    try:
        if a.cmd == "record":
            h = record(a.out, cache=a.cache, note=a.note)
            print(f"[llm] recorded {h['n']:,} answers -> {a.out} (left out: {h['skipped']})")
        else:
            c = seed(a.record, cache=a.cache)
            print(f"[llm] replay record {a.record} ({c['n']:,} answers, recorded {c['recorded']}): {c['seeded']:,} "
                  f"written into {c['cache']}, {c['present']:,} already there; other requests go to the model")
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
