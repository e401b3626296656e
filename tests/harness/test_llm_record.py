"""helpers/harness/llm_record.py: the LLM answers as a record that `make test` replays."""
from __future__ import annotations

import gzip
import json

import pytest

from helpers.core.llm import OpenAIChat, _DiskCache
from helpers.harness import llm_record


def _cache_with_answers(d):
    """A cache holding: a llama.cpp key/value answer, a fake-server answer, a chat completion, a torn file."""
    c = _DiskCache(d)
    c.put({"base_url": "llama.cpp:model.gguf", "messages": [{"role": "user", "content": "SECRET student answer"}]},
          {"top": [["2", -0.1]]})
    c.put({"base_url": "http://127.0.0.1:4321/v1", "messages": "x"}, {"top": []})
    chat = OpenAIChat(model="m", base_url="http://127.0.0.1:9/v1", cache_dir=d, timeout=0.5, max_retries=0)
    msgs = [{"role": "user", "content": "SECRET prompt text"}]
    p = _DiskCache(d).path(chat._keydict(msgs, {"temperature": 0.0, "max_tokens": 8}))
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps({"messages": msgs, "params": {"temperature": 0.0, "max_tokens": 8}, "content": "Score: 2"}))
    (d / "zz").mkdir(exist_ok=True)
    (d / "zz" / "torn.json").write_text('{"value": ')
    return msgs


def test_record_keeps_local_answers_without_prompts_and_seed_replays_them(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    msgs = _cache_with_answers(src)
    h = llm_record.record(tmp_path / "r.jsonl.gz", cache=src, note="unit test")
    assert h["n"] == 2 and h["skipped"] == {"remote": 1, "unreadable": 1} and h["note"] == "unit test"
    raw = gzip.open(tmp_path / "r.jsonl.gz", "rt").read()
    assert "SECRET" not in raw and '"messages"' not in raw and '"key"' not in raw
    c = llm_record.seed(tmp_path / "r.jsonl.gz", cache=dst)
    assert (c["seeded"], c["present"], c["n"]) == (2, 0, 2)
    # the replayed answer is what the client returns, with no server behind it (port 9 refuses)
    chat = OpenAIChat(model="m", base_url="http://127.0.0.1:9/v1", cache_dir=dst, timeout=0.5, max_retries=0)
    assert chat.complete(msgs, max_tokens=8) == "Score: 2" and chat.stats["cached"] == 1
    assert _DiskCache(dst).get({"base_url": "llama.cpp:model.gguf",
                                "messages": [{"role": "user", "content": "SECRET student answer"}]}) == {"top": [["2", -0.1]]}
    # a second seed writes nothing and never replaces an answer already in the cache
    first = sorted(dst.glob("*/*.json"))[0]
    first.write_text(json.dumps({"value": "local"}))
    assert llm_record.seed(tmp_path / "r.jsonl.gz", cache=dst)["present"] == 2
    assert json.loads(first.read_text()) == {"value": "local"}
    # a request that is not in the record still goes to the model (here: no server, a clear error)
    from helpers.core.llm import LLMError
    with pytest.raises(LLMError, match="127.0.0.1:9"):
        chat.complete("a prompt nobody recorded", max_tokens=8)


def test_bad_records_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="helpers llm record"):
        llm_record.seed(tmp_path / "missing.jsonl.gz", cache=tmp_path / "c")
    with pytest.raises(FileNotFoundError, match="no LLM cache"):
        llm_record.record(tmp_path / "o.gz", cache=tmp_path / "nothing")
    def write(name, *lines):
        with gzip.open(tmp_path / name, "wt") as g:
            g.writelines(json.dumps(x) + "\n" for x in lines)
        return tmp_path / name

    cases = [(write("bad.gz", {"format": "something else"}), "not an LLM record"),
             (write("short.gz", {"format": llm_record.FORMAT, "n": 3}, {"path": "ab/abc.json", "payload": {"value": 1}}),
              "truncated"),
             (write("evil.gz", {"format": llm_record.FORMAT, "n": 1}, {"path": "../../etc.json", "payload": {"value": 1}}),
              "bad entry path")]
    for path, message in cases:
        with pytest.raises(ValueError, match=message):
            llm_record.seed(path, cache=tmp_path / "c")
    assert llm_record.main(["seed", str(tmp_path / "missing.jsonl.gz")]) == 2


def test_the_committed_record_is_well_formed_and_holds_no_prompt_text():
    with gzip.open(llm_record.DEFAULT_RECORD, "rt") as g:
        header = json.loads(g.readline())
        rows = [json.loads(line) for line in g]
    assert header["format"] == llm_record.FORMAT and header["n"] == len(rows) > 1000
    assert all(set(r) == {"path", "payload"} and set(r["payload"]) <= {"value", "content", "params"} for r in rows)
    assert len({r["path"] for r in rows}) == len(rows)
