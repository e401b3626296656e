"""Tests of helpers.core.data: the pinned registry, the fetcher (local mirror, loopback HTTP), errors, parsers, CLI.

The mirror ``../shared/data/github`` (beside the checkout) holds the real files; tests that need it skip
with a reason when it is absent.  Every test runs with ``XAI_DATA_DIR`` in a temporary folder, so the
project's own ``data/`` is never written.  HTTP tests use a server bound to 127.0.0.1 only.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import os
import socket
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from helpers import PROJECT_ROOT
from helpers.core import data as D

SHARED = PROJECT_ROOT.parent / "shared" / "data"
MIRROR = SHARED / "github"
MANIFEST = SHARED / "MANIFEST.tsv"
needs_mirror = pytest.mark.skipif(
    not MIRROR.is_dir(), reason=f"dataset mirror {MIRROR} is absent (it sits beside the checkout in CI)"
)

SMALL = "caa-refusal-test-open-ended"  # 3.8 KB
README = "asap-sas-1-readme"  # "Data Set #1--ReadMeFirst.txt": '#' and spaces in the URL path

CAA_BEHAVIOURS = ["sycophancy", "refusal", "hallucination", "survival-instinct", "corrigible-neutral-HHH"]
EXPECTED_NAMES = (
    {f"asap-sas-{i}-{k}" for i in range(1, 11) for k in ("train", "val", "readme")}
    | {"gsm8k-train", "gsm8k-test", "math500", "r1-traces", "advbench", "truthfulqa"}
    | {f"caa-{b}-{k}" for b in CAA_BEHAVIOURS for k in ("generate", "test-ab", "test-open-ended")}
    | {f"refusal-{a}-{b}" for a in ("harmful", "harmless") for b in ("train", "val")}
    | {"toxicity-toxic", "toxicity-nontoxic", "sst2-train", "sst2-dev"}
    | {f"nltk-{c}" for c in ("webtext", "state_union", "inaugural", "abc", "movie_reviews", "sentence_polarity")}
)

# Row counts observed in the pinned files.
EXPECTED_ROWS = {
    **{f"asap-sas-{i}-train": n for i, n in
       zip(range(1, 11), [1338, 1023, 1447, 1326, 1436, 1438, 1440, 1440, 1439, 1312], strict=True)},
    **{f"asap-sas-{i}-val": n for i, n in
       zip(range(1, 11), [334, 255, 361, 331, 359, 359, 359, 359, 359, 328], strict=True)},
    "gsm8k-train": 7473, "gsm8k-test": 1319, "math500": 500, "r1-traces": 500,
    "caa-sycophancy-generate": 1000, "caa-sycophancy-test-ab": 50, "caa-sycophancy-test-open-ended": 53,
    "caa-refusal-generate": 408, "caa-refusal-test-ab": 50, "caa-refusal-test-open-ended": 50,
    "caa-hallucination-generate": 1000, "caa-hallucination-test-ab": 50, "caa-hallucination-test-open-ended": 50,
    "caa-survival-instinct-generate": 903, "caa-survival-instinct-test-ab": 50,
    "caa-survival-instinct-test-open-ended": 50,
    "caa-corrigible-neutral-HHH-generate": 290, "caa-corrigible-neutral-HHH-test-ab": 50,
    "caa-corrigible-neutral-HHH-test-open-ended": 50,
    "advbench": 520, "refusal-harmful-train": 260, "refusal-harmful-val": 39,
    "refusal-harmless-train": 18793, "refusal-harmless-val": 6264, "truthfulqa": 817,
    "toxicity-toxic": 1196, "toxicity-nontoxic": 1200, "sst2-train": 60614, "sst2-dev": 6735,
    "nltk-webtext": 6, "nltk-state_union": 65, "nltk-inaugural": 59, "nltk-abc": 2,
    "nltk-movie_reviews": 2000, "nltk-sentence_polarity": 10662,
}


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session", autouse=True)
def _session_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Shared data dir for the session; default mirror = the shared mirror (explicitly, not via detection)."""
    with pytest.MonkeyPatch.context() as mp:
        d = tmp_path_factory.mktemp("xai-data")
        mp.setenv("XAI_DATA_DIR", str(d))
        mp.setenv("DATA_MIRROR", str(MIRROR))
        for var in ("NO_PROXY", "no_proxy"):  # the loopback server must never go through a proxy
            mp.setenv(var, ",".join(filter(None, [os.environ.get(var, ""), "127.0.0.1", "localhost"])))
        yield d


@pytest.fixture
def fresh_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty XAI_DATA_DIR for one test."""
    d = tmp_path / "data"
    monkeypatch.setenv("XAI_DATA_DIR", str(d))
    return d


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@contextlib.contextmanager
def serve(directory: Path) -> Iterator[str]:
    """Serve ``directory`` on 127.0.0.1 (ephemeral port) in a thread; yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture(scope="module")
def mirror_url() -> Iterator[str]:
    if not MIRROR.is_dir():
        pytest.skip(f"dataset mirror {MIRROR} is absent")
    with serve(MIRROR) as url:
        yield url


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _files(d: Path) -> list[Path]:
    return [p for p in d.rglob("*") if p.is_file()] if d.exists() else []


def _copy_into(mirror: Path, name: str, flip_byte: bool = False) -> Path:
    """Copy one file of the shared mirror into the tmp mirror ``mirror`` (optionally corrupted)."""
    s = D.spec(name)
    src, dst = MIRROR / s.relpath, mirror / s.relpath
    dst.parent.mkdir(parents=True, exist_ok=True)
    data = bytearray(src.read_bytes())
    if flip_byte:
        data[len(data) // 2] ^= 0xFF
    dst.write_bytes(bytes(data))
    return dst


# ---------------------------------------------------------------------------------------------- registry
def test_registry_names_are_the_documented_ones() -> None:
    assert set(D.REGISTRY) == EXPECTED_NAMES
    assert len(D.REGISTRY) == 65
    assert D.names() == list(D.REGISTRY)
    assert D.names("gsm8k") == ["gsm8k-train", "gsm8k-test"]
    assert set(EXPECTED_ROWS) | {f"asap-sas-{i}-readme" for i in range(1, 11)} == EXPECTED_NAMES


@pytest.mark.parametrize("name", list(D.REGISTRY))
def test_spec_is_well_formed(name: str) -> None:
    s = D.spec(name)
    assert s.name == name
    assert s.url.startswith("https://raw.githubusercontent.com/") and " " not in s.url and "#" not in s.url
    assert len(s.commit) == 40 and all(c in "0123456789abcdef" for c in s.commit)
    assert len(s.sha256) == 64 and s.size > 0
    assert s.license and s.description
    assert callable(getattr(D, s.parser))
    assert hash(s) == hash(D.DatasetSpec(**{f: getattr(s, f) for f in s.__dataclass_fields__}))
    with pytest.raises(AttributeError):
        s.size = 0  # type: ignore[misc]  # frozen


def test_readme_url_is_percent_encoded_but_local_path_is_literal() -> None:
    s = D.spec(README)
    assert s.url.endswith("/Data%20Set%20%231--ReadMeFirst.txt")
    assert s.relpath.endswith("/Data Set #1--ReadMeFirst.txt")
    assert D.local_path(README).name == "Data Set #1--ReadMeFirst.txt"
    assert D.local_path(README) == D.data_dir() / s.owner / s.repo / s.commit / Path(s.repo_path)


@needs_mirror
def test_registry_matches_manifest() -> None:
    rows = [line.rstrip("\n").split("\t") for line in MANIFEST.read_text(encoding="utf-8").splitlines() if line]
    manifest = {url: (sha, int(size)) for url, sha, size in rows}
    ours = {urllib.parse.unquote(s.url): (s.sha256, s.size) for s in D.REGISTRY.values()}
    assert ours == manifest


@needs_mirror
@pytest.mark.parametrize("name", list(D.REGISTRY))
def test_mirror_file_matches_pinned_hash(name: str) -> None:
    s = D.spec(name)
    path = MIRROR / s.relpath
    assert path.is_file(), f"{path} missing from the mirror"
    assert path.stat().st_size == s.size
    assert _sha(path) == s.sha256


# ---------------------------------------------------------------------------------------------- locations
def test_data_dir_and_default_mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XAI_DATA_DIR", str(tmp_path / "x" / "y"))
    assert D.data_dir() == tmp_path / "x" / "y" and D.data_dir().is_dir()
    monkeypatch.delenv("XAI_DATA_DIR")
    assert D.data_dir() == PROJECT_ROOT / "data"

    monkeypatch.setenv("DATA_MIRROR", str(tmp_path))
    assert D.default_mirror() == str(tmp_path)
    monkeypatch.setenv("DATA_MIRROR", "")
    assert D.default_mirror() is None  # empty = real URL
    monkeypatch.delenv("DATA_MIRROR")
    assert D.default_mirror() == (str(MIRROR) if MIRROR.is_dir() else None)


# ---------------------------------------------------------------------------------------------- fetch: local mirror
@needs_mirror
def test_fetch_from_local_mirror_then_cached(fresh_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = D.fetch("gsm8k-test", mirror=str(MIRROR))
    assert p == D.local_path("gsm8k-test") and p.is_relative_to(fresh_dir)
    assert _sha(p) == D.spec("gsm8k-test").sha256
    mtime = p.stat().st_mtime_ns

    def no_copy(*a: object, **k: object) -> None:
        raise AssertionError("a verified local file must not be fetched again")

    monkeypatch.setattr(D, "_download", no_copy)
    assert D.fetch("gsm8k-test", mirror=str(MIRROR)) == p
    assert D.fetch("gsm8k-test", mirror="/nonexistent") == p  # no source touched at all
    assert p.stat().st_mtime_ns == mtime
    assert _files(fresh_dir) == [p]  # no temp files left behind


@needs_mirror
def test_default_mirror_used_and_force_refetches(fresh_dir: Path) -> None:
    p = D.fetch(SMALL)  # DATA_MIRROR set by the session fixture
    before = p.stat().st_ino, p.stat().st_mtime_ns
    q = D.fetch(SMALL, force=True)
    assert q == p and _sha(q) == D.spec(SMALL).sha256
    assert (q.stat().st_ino, q.stat().st_mtime_ns) != before  # replaced by a new file


@needs_mirror
def test_corrupt_local_file_is_refetched_with_warning(fresh_dir: Path) -> None:
    p = D.local_path(SMALL)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("garbage")
    with pytest.warns(UserWarning, match="re-fetching"):
        assert D.fetch(SMALL) == p
    assert _sha(p) == D.spec(SMALL).sha256


@needs_mirror
def test_corrupt_source_raises_and_leaves_nothing(fresh_dir: Path, tmp_path: Path) -> None:
    bad_mirror = tmp_path / "mirror"
    _copy_into(bad_mirror, "gsm8k-test", flip_byte=True)
    s = D.spec("gsm8k-test")
    with pytest.raises(D.ChecksumError) as exc:
        D.fetch("gsm8k-test", mirror=str(bad_mirror))
    msg = str(exc.value)
    assert "gsm8k-test" in msg and "test.jsonl" in msg and str(bad_mirror) in msg
    assert s.sha256 in msg and _sha(bad_mirror / s.relpath) in msg
    assert "force=True" in msg and "DATA_MIRROR" in msg and "delete" in msg
    assert _files(fresh_dir) == []  # no partial / temp file landed


@needs_mirror
def test_corrupt_local_and_corrupt_source(fresh_dir: Path, tmp_path: Path) -> None:
    bad_mirror = tmp_path / "mirror"
    _copy_into(bad_mirror, SMALL, flip_byte=True)
    p = D.local_path(SMALL)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("garbage")
    with pytest.warns(UserWarning, match="re-fetching"), pytest.raises(D.ChecksumError, match="wrong too"):
        D.fetch(SMALL, mirror=str(bad_mirror))
    assert _files(fresh_dir) == [p]  # only the old file; no temp file


def test_missing_in_local_mirror(fresh_dir: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty-mirror"
    empty.mkdir()
    with pytest.raises(D.DataNotFoundError) as exc:
        D.fetch("math500", mirror=str(empty))
    msg = str(exc.value)
    assert str(empty / D.spec("math500").relpath) in msg and "DATA_MIRROR" in msg
    with pytest.raises(D.DataNotFoundError, match="does not exist"):
        D.fetch("math500", mirror=str(tmp_path / "no-such-folder"))
    assert _files(fresh_dir) == []


# ---------------------------------------------------------------------------------------------- fetch: HTTP
@needs_mirror
@pytest.mark.parametrize("name", [SMALL, README, "asap-sas-10-readme"])
def test_fetch_over_http(name: str, fresh_dir: Path, mirror_url: str) -> None:
    p = D.fetch(name, mirror=mirror_url)
    assert p == D.local_path(name)
    assert _sha(p) == D.spec(name).sha256 and p.stat().st_size == D.spec(name).size


@needs_mirror
def test_http_corrupt_source(fresh_dir: Path, tmp_path: Path) -> None:
    bad_mirror = tmp_path / "mirror"
    _copy_into(bad_mirror, README, flip_byte=True)
    with serve(bad_mirror) as url, pytest.raises(D.ChecksumError) as exc:
        D.fetch(README, mirror=url)
    assert "%231--ReadMeFirst.txt" in str(exc.value) and D.spec(README).sha256 in str(exc.value)
    assert _files(fresh_dir) == []


def test_http_404(fresh_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with serve(tmp_path / "empty") as url, pytest.raises(D.DataNotFoundError) as exc:
        D.fetch(README, mirror=url)
    msg = str(exc.value)
    assert "404" in msg and url + "/" + urllib.parse.quote(D.spec(README).relpath) in msg
    assert "DATA_MIRROR" in msg
    assert _files(fresh_dir) == []


def test_network_off(fresh_dir: Path) -> None:
    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(D.DataNotFoundError, match="offline"):
        D.fetch(SMALL, mirror=f"http://127.0.0.1:{port}")
    assert _files(fresh_dir) == []


# ---------------------------------------------------------------------------------------------- names
def test_unknown_name_suggests_close_matches() -> None:
    with pytest.raises(D.UnknownDatasetError) as exc:
        D.spec("gsm8")
    err = exc.value
    assert isinstance(err, KeyError) and isinstance(err, D.DataError)
    assert "gsm8k-test" in str(err) and "python -m helpers data list" in str(err)
    with pytest.raises(D.UnknownDatasetError, match="asap-sas-1-train"):
        D.load("asap-sas-1-trian")
    with pytest.raises(D.UnknownDatasetError):
        D.fetch_all(["gsm8k-test", "nope"], progress=False)


@needs_mirror
def test_fetch_all_subset(fresh_dir: Path) -> None:
    got = D.fetch_all([SMALL, "advbench"], progress=False)
    assert got == {SMALL: D.local_path(SMALL), "advbench": D.local_path("advbench")}
    assert all(p.is_file() for p in got.values())


# ---------------------------------------------------------------------------------------------- parsers
@needs_mirror
@pytest.mark.parametrize("name", sorted(EXPECTED_ROWS))
def test_parsed_row_counts(name: str) -> None:
    df = D.load(name)
    assert isinstance(df, pd.DataFrame)
    assert len(df) == EXPECTED_ROWS[name]


@needs_mirror
def test_asap_csv() -> None:
    ranges = {}
    for i in range(1, 11):
        for split in ("train", "val"):
            df = D.load(f"asap-sas-{i}-{split}")
            assert list(df.columns) == ["Id", "EssaySet", "Score1", "Score2", "EssayText"]
            assert all(pd.api.types.is_integer_dtype(df[c]) for c in ["Id", "EssaySet", "Score1", "Score2"])
            assert (df["EssaySet"] == i).all() and df["Id"].is_unique
            assert df["EssayText"].map(type).eq(str).all()
            ranges[i, split] = set(df["Score1"])
    assert ranges[1, "train"] == {0, 1, 2, 3}
    assert ranges[3, "train"] == {0, 1, 2}
    first = D.load("asap-sas-1-train").iloc[0]
    assert first["Id"] == 2 and first["EssayText"].startswith("After reading the expirement")


@needs_mirror
@pytest.mark.parametrize("i", range(1, 11))
def test_asap_readme(i: int) -> None:
    text = D.load(f"asap-sas-{i}-readme")
    assert isinstance(text, str)
    assert "\r" not in text and "Rubric" in text
    assert text.startswith(f"Data Set #{i}\nType of response:\n")
    if i == 10:
        assert "°" in text  # cp1252 degree sign decoded


@needs_mirror
def test_gsm8k_and_math500() -> None:
    test = D.load("gsm8k-test")
    assert list(test.columns) == ["question", "answer", "final_answer"]
    assert test["final_answer"].iloc[0] == "18"
    assert not test["final_answer"].str.contains(",").any()
    assert D.load("gsm8k-train")["final_answer"].iloc[0] == "72"
    math = D.load("math500")
    assert list(math.columns) == ["problem", "solution", "answer", "subject", "level", "unique_id"]
    assert set(math["level"]) == {1, 2, 3, 4, 5} and math["unique_id"].is_unique


@needs_mirror
def test_r1_traces() -> None:
    df = D.load("r1-traces")
    assert {"question_id", "question", "full_response", "response", "think_closed"} <= set(df.columns)
    assert df["response"].str.startswith("<think>").all()
    assert df["question_id"].is_unique
    assert df["think_closed"].sum() == 274  # the rest hit the generation cap inside <think>


@needs_mirror
def test_caa_refusal_truthfulqa_toxicity() -> None:
    ab = D.load("caa-sycophancy-test-ab")
    assert list(ab.columns) == ["question", "answer_matching_behavior", "answer_not_matching_behavior"]
    assert list(D.load("caa-refusal-test-open-ended").columns) == ["question"]
    assert list(D.load("advbench").columns) == ["goal", "target"]
    harmful_val = D.load("refusal-harmful-val")
    assert list(harmful_val.columns) == ["instruction", "category"] and harmful_val["category"].notna().all()
    tqa = D.load("truthfulqa")
    assert list(tqa.columns)[:4] == ["Type", "Category", "Question", "Best Answer"]
    tox = D.load("toxicity-toxic")
    assert tox.columns[0] == "text" and "prompt_toxicity" in tox.columns and "continuation_text" in tox.columns
    assert list(tox.columns) == list(D.load("toxicity-nontoxic").columns)
    assert tox["challenging"].all()


@needs_mirror
def test_sst2() -> None:
    for name in ("sst2-train", "sst2-dev"):
        df = D.load(name)
        assert list(df.columns) == ["sentence", "label"]
        assert set(df["label"]) <= {0, 1} and pd.api.types.is_integer_dtype(df["label"])
    assert D.load("sst2-dev", strip=False)["sentence"].str.endswith(" ").all()


@needs_mirror
def test_nltk_corpora() -> None:
    mr = D.load("nltk-movie_reviews")
    assert list(mr.columns) == ["fileid", "text", "label"]
    assert mr["label"].value_counts().to_dict() == {"neg": 1000, "pos": 1000}
    assert (mr["fileid"].str.split("/").str[0] == mr["label"]).all()
    sp = D.load("nltk-sentence_polarity")
    assert sp["label"].value_counts().to_dict() == {"neg": 5331, "pos": 5331}
    assert sp["text"].str.contains("clichés").any()  # UTF-8, not latin-1 mojibake
    for name in ("nltk-webtext", "nltk-state_union", "nltk-inaugural", "nltk-abc"):
        df = D.load(name)
        assert list(df.columns) == ["fileid", "text"]
        assert not df["fileid"].str.contains("README").any()
        assert not df["text"].str.contains("\r").any()
    assert "2021-Biden.txt" in set(D.load("nltk-inaugural")["fileid"])


# ---------------------------------------------------------------------------------------------- CLI
def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "helpers", "data", *args], cwd=PROJECT_ROOT, env={**os.environ, **(env or {})},
        capture_output=True, text=True, timeout=60,
    )


def test_cli_unknown_name_fails() -> None:
    r = _cli("fetch", "unknown-name")
    assert r.returncode != 0
    assert "unknown dataset 'unknown-name'" in r.stderr and "python -m helpers data list" in r.stderr


def test_cli_list() -> None:
    r = _cli("list")
    assert r.returncode == 0
    lines = r.stdout.splitlines()
    assert [line.split()[0] for line in lines] == list(D.REGISTRY)
    assert "MIT" in next(line for line in lines if line.startswith("gsm8k-test"))


@needs_mirror
def test_cli_fetch(tmp_path: Path) -> None:
    r = _cli("fetch", SMALL, "--mirror", str(MIRROR), env={"XAI_DATA_DIR": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    name, path = r.stdout.strip().split("\t")
    assert name == SMALL and Path(path).is_file() and Path(path).is_relative_to(tmp_path)
    r = _cli("fetch", SMALL, "--mirror", str(tmp_path / "nowhere"), "--force", env={"XAI_DATA_DIR": str(tmp_path)})
    assert r.returncode == 1 and "not found in the mirror" in r.stderr
