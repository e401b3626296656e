"""The real datasets the notebooks use: pinned, verified, fetched on demand, parsed.

Design
------
* **The registry is data.**  Each dataset is an entry of ``helpers/registry/datasets.yaml`` (read as a typed
  :class:`~helpers.registry.DatasetSpec`): the raw GitHub URL *at a pinned commit*, the file's sha256 and size,
  a short licence note, a description and the name of a parser in this module.  No data is committed to the
  project; files are fetched into :func:`data_dir` (``$XAI_DATA_DIR`` or ``<checkout>/data``, which git
  ignores) and verified against the pinned sha256 before they are used.
* **Mirrors.**  A mirror is a local folder or an ``http(s)://`` base URL laid out like raw GitHub,
  ``<owner>/<repo>/<commit>/<path>``.  :func:`default_mirror` picks ``$DATA_MIRROR`` (empty string: no
  mirror, use the real URL), else ``<checkout>/../shared/data/github`` when it exists, else none.
  On a connected machine without a mirror the real URL is downloaded; on an offline machine the mirror
  is read.  Either way the bytes must hash to the pinned sha256.
* **Paths with odd characters.**  ``url`` is a valid URL (``#`` and spaces percent-encoded, e.g.
  ``Data%20Set%20%231--ReadMeFirst.txt``); :attr:`DatasetSpec.relpath` is the literal path
  (``Data Set #1--ReadMeFirst.txt``) used for the local mirror and for :func:`local_path`.
* **Safe writes.**  :func:`fetch` streams into a temporary file in the destination folder, checks size and
  sha256, and only then renames it into place atomically: a corrupt or partial download never lands.
  A file already present with the right hash is returned after hashing it, without any copy.
  A file present with the wrong hash is re-fetched (with a warning).
* **Clear errors.**  Everything raised here derives from :class:`DataError`; each message says what was
  wrong and how to fix it.  :class:`UnknownDatasetError` suggests close names.
* **Parsers** turn a verified file into a pandas DataFrame (the ASAP-SAS ReadMeFirst files into a ``str``);
  ``load(name, **kw)`` passes ``kw`` to the parser.  They depend on pandas and the standard library only
  (the NLTK corpora are read straight from their zip files, no ``nltk`` needed).

Command line (``helpers.harness.data``)::

    python -m helpers data list [PREFIX]
    python -m helpers data fetch NAME [NAME ...] | --all   [--mirror DIR_OR_URL] [--force]
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import tempfile
import urllib.parse
import warnings
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd

from helpers import PROJECT_ROOT, registry
from helpers.registry import DatasetSpec

__all__ = [
    "DatasetSpec",
    "REGISTRY",
    "DataError",
    "UnknownDatasetError",
    "ChecksumError",
    "DataNotFoundError",
    "data_dir",
    "default_mirror",
    "local_path",
    "fetch",
    "fetch_all",
    "load",
    "spec",
    "names",
]

HTTP_TIMEOUT_S = 30
_CHUNK = 1 << 20
_SHARED_MIRROR = PROJECT_ROOT.parent / "shared" / "data" / "github"


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------
class DataError(RuntimeError):
    """Base class of every error raised by :mod:`helpers.core.data`."""


class UnknownDatasetError(DataError, KeyError):
    """The name is not in :data:`REGISTRY`; the message lists close matches."""

    def __str__(self) -> str:  # KeyError would repr() the message; print it as written
        return str(self.args[0]) if self.args else ""


class ChecksumError(DataError):
    """A file's bytes do not hash to the pinned sha256 (or have the wrong size)."""


class DataNotFoundError(DataError):
    """The file could not be obtained: missing in the mirror, HTTP error (e.g. 404), or no network."""


#: name -> spec, in the registry file's order (helpers/registry/datasets.yaml).
REGISTRY: dict[str, DatasetSpec] = registry.entries("datasets")


# --------------------------------------------------------------------------------------------------
# Lookup
# --------------------------------------------------------------------------------------------------
def names(prefix: str = "") -> list[str]:
    """Registered dataset names starting with ``prefix``, in registry order."""
    return [n for n in REGISTRY if n.startswith(prefix)]


def spec(name: str) -> DatasetSpec:
    """The :class:`DatasetSpec` of ``name``; :class:`UnknownDatasetError` with suggestions if unknown."""
    try:
        return registry.dataset(name)
    except registry.UnknownEntryError as e:
        raise UnknownDatasetError(f"{e} Run `python -m helpers data list` to see them all.") from None


# --------------------------------------------------------------------------------------------------
# Locations
# --------------------------------------------------------------------------------------------------
def data_dir() -> Path:
    """Folder where fetched files live: ``$XAI_DATA_DIR`` or ``<checkout>/data`` (created if missing)."""
    env = os.environ.get("XAI_DATA_DIR", "").strip()
    d = Path(env).expanduser() if env else PROJECT_ROOT / "data"
    d.mkdir(parents=True, exist_ok=True)
    return d


def default_mirror() -> str | None:
    """The mirror :func:`fetch` uses by default.

    ``$DATA_MIRROR`` if set (an empty value gives ``None``: use the real URL); else
    ``<checkout>/../shared/data/github`` if that folder exists; else ``None``.
    """
    if "DATA_MIRROR" in os.environ:
        return os.environ["DATA_MIRROR"].strip() or None
    if _SHARED_MIRROR.is_dir():
        return str(_SHARED_MIRROR)
    return None


def local_path(name: str) -> Path:
    """Where :func:`fetch` stores ``name``: ``data_dir()/<owner>/<repo>/<commit>/<path>``."""
    return data_dir().joinpath(*PurePosixPath(spec(name).relpath).parts)


# --------------------------------------------------------------------------------------------------
# Fetching
# --------------------------------------------------------------------------------------------------
def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _is_http(mirror: str) -> bool:
    return mirror.lower().startswith(("http://", "https://"))


def _source(s: DatasetSpec, mirror: str | None) -> str:
    """The URL or local path the bytes of ``s`` are read from, for the given (resolved) mirror."""
    if mirror is None:
        return s.url
    if _is_http(mirror):
        return mirror.rstrip("/") + "/" + urllib.parse.quote(s.relpath, safe="/")
    if mirror.lower().startswith("file://"):
        mirror = urllib.parse.unquote(urllib.parse.urlparse(mirror).path)
    return str(Path(mirror).expanduser().joinpath(*PurePosixPath(s.relpath).parts))


_HOW_TO_GET = (
    "Fix: set DATA_MIRROR to a folder (or http(s) base URL) laid out as <owner>/<repo>/<commit>/<path> "
    "that holds this file (e.g. ../shared/data/github beside the checkout), "
    "or go online and fetch the real URL with fetch(name, mirror=None) / DATA_MIRROR=''."
)


def _write_from(source: str, out: Any, s: DatasetSpec) -> None:
    """Stream ``source`` (path or URL) into the open binary file ``out``; raise DataNotFoundError."""
    if _is_http(source):
        try:
            import requests
        except ImportError as e:  # pragma: no cover - requests is a project dependency
            raise DataError("downloading needs the `requests` package: pip install requests") from e
        try:
            with requests.get(source, stream=True, timeout=HTTP_TIMEOUT_S) as r:
                if r.status_code != 200:
                    raise DataNotFoundError(
                        f"{s.name}: HTTP {r.status_code} {r.reason or ''} for {source}. {_HOW_TO_GET}"
                    )
                n = 0
                for chunk in r.iter_content(chunk_size=_CHUNK):
                    n += len(chunk)
                    if n > s.size:  # cannot be the pinned file: stop early (bounded download)
                        out.write(chunk[: max(0, s.size + 1 - (n - len(chunk)))])
                        return
                    out.write(chunk)
        except requests.RequestException as e:
            raise DataNotFoundError(
                f"{s.name}: could not download {source} ({type(e).__name__}: {e}). Are you offline? {_HOW_TO_GET}"
            ) from e
        return
    path = Path(source)
    if not path.is_file():
        root = path.parents[len(PurePosixPath(s.relpath).parts) - 1]
        where = "" if root.is_dir() else f" (the mirror folder {root} does not exist)"
        raise DataNotFoundError(f"{s.name}: {path} not found in the mirror{where}. {_HOW_TO_GET}")
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            out.write(chunk)


def _download(s: DatasetSpec, source: str, dest: Path) -> None:
    """Fetch ``source`` into a temp file beside ``dest``, verify it, then atomically rename it to ``dest``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            _write_from(source, out, s)
        size, actual = tmp.stat().st_size, _sha256_file(tmp)
        if size != s.size or actual != s.sha256:
            got = f"{size} bytes" if size <= s.size else f"more than {s.size} bytes"
            stale = f" The existing local copy {dest} is wrong too: delete it." if dest.exists() else ""
            raise ChecksumError(
                f"{s.name}: checksum mismatch for {source} (file {s.repo_path!r}).\n"
                f"  expected sha256 {s.sha256} ({s.size} bytes)\n"
                f"  actual   sha256 {actual} ({got})\n"
                f"The source is corrupt or a different version, so nothing was written to {dest.parent}. "
                f"Fix: delete or restore the corrupt copy at the source, check DATA_MIRROR "
                f"(now {os.environ.get('DATA_MIRROR', '<unset>')!r}; '' means the real URL), "
                f"or re-fetch from the pinned URL with fetch({s.name!r}, mirror=None, force=True).{stale}"
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def fetch(name: str, *, mirror: str | None = "default", force: bool = False) -> Path:
    """Return the verified local copy of ``name``, fetching it if missing, corrupt or ``force``.

    ``mirror``: ``"default"`` -> :func:`default_mirror`; ``None`` (or ``""``) -> the real URL; otherwise a
    local folder or an ``http(s)://`` base URL laid out as ``<owner>/<repo>/<commit>/<path>``.
    """
    s = spec(name)
    dest = local_path(name)
    if dest.exists() and not force:
        actual = _sha256_file(dest)
        if actual == s.sha256:
            return dest
        warnings.warn(
            f"{s.name}: local file {dest} has sha256 {actual}, expected {s.sha256}; re-fetching it.",
            stacklevel=2,
        )
    resolved = default_mirror() if mirror == "default" else (mirror or None)
    _download(s, _source(s, resolved), dest)
    return dest


def fetch_all(
    names: Iterable[str] | None = None,
    *,
    mirror: str | None = "default",
    force: bool = False,
    progress: bool = True,
) -> dict[str, Path]:
    """Fetch several datasets (all by default) with a tqdm progress bar; returns ``{name: path}``.

    Every name is attempted; failures are raised together at the end (a single failure as itself).
    """
    from tqdm.auto import tqdm

    todo = list(REGISTRY) if names is None else list(names)
    for n in todo:
        spec(n)  # fail fast on typos, before any download
    done: dict[str, Path] = {}
    failed: dict[str, DataError] = {}
    bar = tqdm(todo, desc="datasets", unit="file", disable=not progress)
    for n in bar:
        bar.set_postfix_str(n, refresh=False)
        try:
            done[n] = fetch(n, mirror=mirror, force=force)
        except DataError as e:
            failed[n] = e
    bar.close()
    if len(failed) == 1:
        raise next(iter(failed.values()))
    if failed:
        lines = "\n".join(f"- {n}: {e}" for n, e in failed.items())
        raise DataError(f"{len(failed)} of {len(todo)} datasets could not be fetched:\n{lines}")
    return done


def load(name: str, *, mirror: str | None = "default", force: bool = False, **kw: Any) -> Any:
    """Fetch ``name`` and parse it (usually into a DataFrame); ``kw`` go to the parser."""
    s = spec(name)
    path = fetch(name, mirror=mirror, force=force)
    return _PARSERS[s.parser](path, **kw)


# --------------------------------------------------------------------------------------------------
# Parsers: (verified path, **kw) -> DataFrame | str
# --------------------------------------------------------------------------------------------------
_PARSERS: dict[str, Callable[..., Any]] = {}


def _parser(fn: Callable[..., Any]) -> Callable[..., Any]:
    _PARSERS[fn.__name__] = fn
    return fn


def _normalise_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _read_json_lines(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _expect_columns(df: pd.DataFrame, expected: list[str], path: Path) -> None:
    if list(df.columns) != expected:
        raise DataError(f"{path}: expected columns {expected}, found {list(df.columns)}; has the format changed?")


@_parser
def parse_asap_csv(path: Path) -> pd.DataFrame:
    """ASAP-SAS split csv (UTF-8/ASCII, standard quoting): Id, EssaySet, Score1, Score2 (int), EssayText (str)."""
    cols = ["Id", "EssaySet", "Score1", "Score2", "EssayText"]
    dtypes: dict[str, Any] = {c: "int64" for c in cols[:4]} | {"EssayText": str}
    df = pd.read_csv(
        path,
        encoding="utf-8",
        dtype=dtypes,
        keep_default_na=False,  # an answer such as "NA" or "None" is text, not missing
    )
    _expect_columns(df, cols, path)
    return df


@_parser
def parse_cp1252_text(path: Path) -> str:
    """Whole file decoded from cp1252, CR and CRLF line ends normalised to ``\\n``."""
    return _normalise_newlines(path.read_bytes().decode("cp1252"))


@_parser
def parse_gsm8k(path: Path) -> pd.DataFrame:
    """GSM8K jsonl -> question, answer, final_answer (text after ``####``, stripped, commas removed, str)."""
    df = pd.DataFrame(_read_json_lines(path), columns=["question", "answer"])
    bad = df.index[~df["answer"].str.contains("####", regex=False)]
    if len(bad):
        raise DataError(f"{path}: {len(bad)} answers lack the '####' final-answer marker (first row {bad[0]})")
    df["final_answer"] = df["answer"].str.rsplit("####", n=1).str[1].str.strip().str.replace(",", "", regex=False)
    return df


@_parser
def parse_jsonl(path: Path) -> pd.DataFrame:
    """One row per JSON line, fields as columns (MATH-500: problem, solution, answer, subject, level, unique_id)."""
    return pd.DataFrame(_read_json_lines(path))


@_parser
def parse_json_records(path: Path) -> pd.DataFrame:
    """A JSON array of flat objects -> one row per object (CAA sets, refusal splits)."""
    with open(path, encoding="utf-8") as f:
        records = json.load(f)
    if not isinstance(records, list):
        raise DataError(f"{path}: expected a JSON array of records, found {type(records).__name__}")
    return pd.DataFrame(records)


@_parser
def parse_csv(path: Path) -> pd.DataFrame:
    """A plain UTF-8 csv with a header (AdvBench: goal, target; TruthfulQA). Only empty fields become NaN."""
    return pd.read_csv(path, encoding="utf-8", keep_default_na=False, na_values=[""])


@_parser
def parse_r1_traces(path: Path) -> pd.DataFrame:
    """R1-distill responses -> question_id, question, full_response, response, think_closed, category, dataset_name.

    ``full_response`` is the whole decoded sequence (``<｜User｜>question<｜Assistant｜><think>...``);
    ``response`` is the part after the assistant tag (starts with ``<think>``); ``think_closed`` says whether
    ``</think>`` was reached before the generation cap.  ``original_message`` (``{"role": "user",
    "content": question}`` in every record) is dropped as it repeats ``question``.
    """
    with open(path, encoding="utf-8") as f:
        records = json.load(f)
    df = pd.DataFrame(records)
    full = df["full_response"]
    df["response"] = full.str.split("<｜Assistant｜>", n=1).str[-1]
    df["think_closed"] = full.str.contains("</think>", regex=False)
    cols = ["question_id", "question", "full_response", "response", "think_closed", "category", "dataset_name"]
    return df[cols + [c for c in df.columns if c not in cols and c != "original_message"]]


@_parser
def parse_toxicity_jsonl(path: Path) -> pd.DataFrame:
    """RealToxicityPrompts-style jsonl: prompt text -> ``text``; nested scores -> ``prompt_*``/``continuation_*``."""
    df = pd.json_normalize(_read_json_lines(path), sep="_").rename(columns={"prompt_text": "text"})
    # Key order differs between records/files: make the column order deterministic.
    first = [c for c in ("text", "filename", "begin", "end", "challenging") if c in df.columns]
    prompt = sorted(c for c in df.columns if c.startswith("prompt_"))
    cont = sorted(c for c in df.columns if c.startswith("continuation_") and c != "continuation_text")
    cont = (["continuation_text"] if "continuation_text" in df.columns else []) + cont
    rest = [c for c in df.columns if c not in {*first, *prompt, *cont}]
    return df[first + prompt + cont + rest]


@_parser
def parse_sst2(path: Path, *, strip: bool = True) -> pd.DataFrame:
    """SST-2 tsv (no quoting) -> sentence (str; trailing space stripped unless ``strip=False``), label (int 0/1)."""
    dtypes: dict[str, Any] = {"sentence": str, "label": "int64"}
    df = pd.read_csv(path, sep="\t", quoting=csv.QUOTE_NONE, encoding="utf-8", dtype=dtypes, keep_default_na=False)
    _expect_columns(df, ["sentence", "label"], path)
    if strip:
        df["sentence"] = df["sentence"].str.strip()
    return df


def _decode(data: bytes, encoding: str | None) -> str:
    """Decode with ``encoding`` if given; else UTF-8, falling back to cp1252, then latin-1 (never fails)."""
    if encoding:
        return data.decode(encoding)
    for enc in ("utf-8", "cp1252"):
        try:
            return data.decode(enc)
        except UnicodeDecodeError:
            pass
    return data.decode("latin-1")


@_parser
def parse_nltk_corpus(path: Path, *, encoding: str | None = None) -> pd.DataFrame:
    """An NLTK corpus zip -> fileid, text[, label]; README files skipped, line ends normalised to ``\\n``.

    ``fileid`` is the path inside the corpus folder, as NLTK names it (``pos/cv000_29590.txt``).
    movie_reviews: one row per review, label ``pos``/``neg`` from the folder.  sentence_polarity: one row
    per non-empty line of ``rt-polarity.pos``/``.neg``, label ``pos``/``neg``.  Text is decoded as UTF-8,
    falling back per file to cp1252 / latin-1 (webtext, state_union, inaugural and abc each hold a few
    non-UTF-8 files); pass ``encoding=`` to force one.  sentence_polarity in this nltk_data commit is valid
    UTF-8 (``clichés``), which is also how NLTK reads it: decoding it as latin-1 would give mojibake.
    """
    rows: list[dict[str, Any]] = []
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            if info.is_dir():
                continue
            parts = PurePosixPath(info.filename).parts
            fileid = "/".join(parts[1:]) if len(parts) > 1 else parts[0]
            if PurePosixPath(fileid).name.upper().startswith("README"):
                continue
            text = _normalise_newlines(_decode(zf.read(info), encoding))
            top = fileid.split("/", 1)[0]
            if fileid.startswith("rt-polarity."):
                label = fileid.rsplit(".", 1)[1]
                lines = [line for line in text.split("\n") if line.strip()]
                rows.extend({"fileid": fileid, "text": line, "label": label} for line in lines)
            elif top in ("pos", "neg") and "/" in fileid:
                rows.append({"fileid": fileid, "text": text, "label": top})
            else:
                rows.append({"fileid": fileid, "text": text})
    df = pd.DataFrame(rows)
    return df[[c for c in ("fileid", "text", "label") if c in df.columns]]


def _check_parsers() -> None:
    bad = {k: s.parser for k, s in REGISTRY.items() if s.parser not in _PARSERS}
    if bad:
        raise DataError(f"registry entries name parsers that helpers.core.data does not define: {bad}")


_check_parsers()
