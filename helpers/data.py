"""Registry of the real datasets the notebooks use: pinned, verified, fetched on demand.

Design
------
* **The registry is code, not data.**  Each dataset is a :class:`DatasetSpec` holding the raw GitHub URL
  *at a pinned commit*, the file's sha256 and size, a short licence note, a description and the name of a
  parser in this module.  No data is committed to the project; files are fetched into :func:`data_dir`
  (``$XAI_DATA_DIR`` or ``<checkout>/data``, which git ignores) and verified against the pinned sha256
  before they are used.  The entries were generated once from ``shared/data/MANIFEST.tsv`` and pasted
  below as literals: importing this module never reads ``shared/``.
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

Command line::

    python -m helpers.data list [PREFIX]
    python -m helpers.data fetch NAME [NAME ...] | --all   [--mirror DIR_OR_URL] [--force]
"""

from __future__ import annotations

import argparse
import csv
import difflib
import hashlib
import json
import os
import sys
import tempfile
import urllib.parse
import warnings
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd

from helpers import PROJECT_ROOT

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

RAW_GITHUB = "https://raw.githubusercontent.com/"
HTTP_TIMEOUT_S = 30
_CHUNK = 1 << 20
_SHARED_MIRROR = PROJECT_ROOT.parent / "shared" / "data" / "github"


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------
class DataError(RuntimeError):
    """Base class of every error raised by :mod:`helpers.data`."""


class UnknownDatasetError(DataError, KeyError):
    """The name is not in :data:`REGISTRY`; the message lists close matches."""

    def __str__(self) -> str:  # KeyError would repr() the message; print it as written
        return str(self.args[0]) if self.args else ""


class ChecksumError(DataError):
    """A file's bytes do not hash to the pinned sha256 (or have the wrong size)."""


class DataNotFoundError(DataError):
    """The file could not be obtained: missing in the mirror, HTTP error (e.g. 404), or no network."""


# --------------------------------------------------------------------------------------------------
# Spec
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DatasetSpec:
    """One pinned file: where it lives, what it must hash to, and how to parse it."""

    name: str  # e.g. "gsm8k-test"
    url: str  # raw GitHub URL at a pinned commit, percent-encoded
    sha256: str
    size: int  # bytes
    license: str  # short licence note
    description: str
    parser: str  # name of a parser function in this module

    @property
    def relpath(self) -> str:
        """Literal ``<owner>/<repo>/<commit>/<path>`` (no percent-encoding): the mirror / data-dir layout."""
        if not self.url.startswith(RAW_GITHUB):
            raise DataError(f"{self.name}: url {self.url!r} does not start with {RAW_GITHUB!r}")
        return urllib.parse.unquote(self.url[len(RAW_GITHUB) :])

    @property
    def owner(self) -> str:
        return self.relpath.split("/", 3)[0]

    @property
    def repo(self) -> str:
        return self.relpath.split("/", 3)[1]

    @property
    def commit(self) -> str:
        return self.relpath.split("/", 3)[2]

    @property
    def repo_path(self) -> str:
        """Path of the file inside its repository (literal)."""
        return self.relpath.split("/", 3)[3]


# Licence notes (from the source repositories / the upstream datasets they redistribute).
_LIC_ASAP = "research use (Kaggle ASAP-SAS competition data, Hewlett Foundation)"
_LIC_GSM8K = "MIT"
_LIC_MATH = "MIT (MATH dataset, Hendrycks et al.); see source repository"
_LIC_UNKNOWN = "see source repository"
_LIC_CAA = "see source repository (CAA data; partly Anthropic model-written evals, CC-BY-4.0)"
_LIC_ADVBENCH = "MIT (AdvBench, llm-attacks); see source repository"
_LIC_REFUSAL = "see source repository (mixed upstream sources)"
_LIC_TRUTHFULQA = "Apache-2.0 (TruthfulQA, Lin et al.)"
_LIC_TOXICITY = "see source repository (DecodingTrust; prompts from RealToxicityPrompts, Apache-2.0)"
_LIC_SST2 = "see source repository (Stanford Sentiment Treebank)"
_LIC_NLTK = "see the README inside the zip (per-corpus terms, NLTK data)"

# Generated once from shared/data/MANIFEST.tsv (65 files); edit by hand only together with the hash.
_SPECS: tuple[DatasetSpec, ...] = (
    DatasetSpec(
        name="asap-sas-1-train",
        url="https://raw.githubusercontent.com/lijiazheng99/aera/76ca952555aaf33edc40c49725909d3c6af7f8b2/dataset/asap-sas-splitted/asap-1/train.csv",
        sha256="aba38c47f02053c6d78b92ef9cd4b46f320555fdcf1c89d1682be304ed1e3deb",
        size=361829,
        license=_LIC_ASAP,
        description="ASAP-SAS item 1, train part of the AERA 80/20 split of the public rel_2 training data",
        parser="parse_asap_csv",
    ),
    DatasetSpec(
        name="asap-sas-1-val",
        url="https://raw.githubusercontent.com/lijiazheng99/aera/76ca952555aaf33edc40c49725909d3c6af7f8b2/dataset/asap-sas-splitted/asap-1/val.csv",
        sha256="486c70b1eb2f76a7f9117f52d385965691818097a805b67e6a24b05b83407a8c",
        size=91487,
        license=_LIC_ASAP,
        description="ASAP-SAS item 1, val part of the AERA 80/20 split of the public rel_2 training data",
        parser="parse_asap_csv",
    ),
    DatasetSpec(
        name="asap-sas-1-readme",
        url="https://raw.githubusercontent.com/jesensky/jjj-asap-sas/c82e07f14412b94b86d7044247f861db1a3b2bbd/jjj-asap-sas-release/data/Data%20Set%20%231--ReadMeFirst.txt",
        sha256="7994db822653d0bc8f7dfb7a1d42503bdf87a234f52c3701fbfd15ff2754b181",
        size=5130,
        license=_LIC_ASAP,
        description="ASAP-SAS item 1 ReadMeFirst: metadata, stem/passage, scoring rubric (cp1252, CR ends)",
        parser="parse_cp1252_text",
    ),
    DatasetSpec(
        name="asap-sas-2-train",
        url="https://raw.githubusercontent.com/lijiazheng99/aera/76ca952555aaf33edc40c49725909d3c6af7f8b2/dataset/asap-sas-splitted/asap-2/train.csv",
        sha256="6761c7c3c928207dc1f1c4ed9d3543a9359a3c1c9c213c9a15dcf73e500e0bd0",
        size=343751,
        license=_LIC_ASAP,
        description="ASAP-SAS item 2, train part of the AERA 80/20 split of the public rel_2 training data",
        parser="parse_asap_csv",
    ),
    DatasetSpec(
        name="asap-sas-2-val",
        url="https://raw.githubusercontent.com/lijiazheng99/aera/76ca952555aaf33edc40c49725909d3c6af7f8b2/dataset/asap-sas-splitted/asap-2/val.csv",
        sha256="ed1f24f68595a2a54ee82e7bc657f5a5e426fcef88f6bf2ac55d28bd80737f67",
        size=86656,
        license=_LIC_ASAP,
        description="ASAP-SAS item 2, val part of the AERA 80/20 split of the public rel_2 training data",
        parser="parse_asap_csv",
    ),
    DatasetSpec(
        name="asap-sas-2-readme",
        url="https://raw.githubusercontent.com/jesensky/jjj-asap-sas/c82e07f14412b94b86d7044247f861db1a3b2bbd/jjj-asap-sas-release/data/Data%20Set%20%232--ReadMeFirst.txt",
        sha256="e293bf3ba93b75140c9d4f9903a4695c4bc665d314da72ac965a1db80574ae87",
        size=5814,
        license=_LIC_ASAP,
        description="ASAP-SAS item 2 ReadMeFirst: metadata, stem/passage, scoring rubric (cp1252, CR ends)",
        parser="parse_cp1252_text",
    ),
    DatasetSpec(
        name="asap-sas-3-train",
        url="https://raw.githubusercontent.com/lijiazheng99/aera/76ca952555aaf33edc40c49725909d3c6af7f8b2/dataset/asap-sas-splitted/asap-3/train.csv",
        sha256="6f867b0c904be1f1d47eb9eeff19dafb872d85285a65cd00c7e72dec73362380",
        size=427545,
        license=_LIC_ASAP,
        description="ASAP-SAS item 3, train part of the AERA 80/20 split of the public rel_2 training data",
        parser="parse_asap_csv",
    ),
    DatasetSpec(
        name="asap-sas-3-val",
        url="https://raw.githubusercontent.com/lijiazheng99/aera/76ca952555aaf33edc40c49725909d3c6af7f8b2/dataset/asap-sas-splitted/asap-3/val.csv",
        sha256="8e858cdc66230f26d5552de40b1cb5cf9ebdfcd7ca1693d83e747d4c91d7fb74",
        size=108989,
        license=_LIC_ASAP,
        description="ASAP-SAS item 3, val part of the AERA 80/20 split of the public rel_2 training data",
        parser="parse_asap_csv",
    ),
    DatasetSpec(
        name="asap-sas-3-readme",
        url="https://raw.githubusercontent.com/jesensky/jjj-asap-sas/c82e07f14412b94b86d7044247f861db1a3b2bbd/jjj-asap-sas-release/data/Data%20Set%20%233--ReadMeFirst.txt",
        sha256="168f52d2f19fc70041ff081e30ca0a097850d2e0b2ae7a2a1c779b8006a615ea",
        size=8873,
        license=_LIC_ASAP,
        description="ASAP-SAS item 3 ReadMeFirst: metadata, stem/passage, scoring rubric (cp1252, CR ends)",
        parser="parse_cp1252_text",
    ),
    DatasetSpec(
        name="asap-sas-4-train",
        url="https://raw.githubusercontent.com/lijiazheng99/aera/76ca952555aaf33edc40c49725909d3c6af7f8b2/dataset/asap-sas-splitted/asap-4/train.csv",
        sha256="07b74e9a56ecebac00c83b1f0a8517a7de960bdb08d037fcbbf0b9c9d69d907b",
        size=334841,
        license=_LIC_ASAP,
        description="ASAP-SAS item 4, train part of the AERA 80/20 split of the public rel_2 training data",
        parser="parse_asap_csv",
    ),
    DatasetSpec(
        name="asap-sas-4-val",
        url="https://raw.githubusercontent.com/lijiazheng99/aera/76ca952555aaf33edc40c49725909d3c6af7f8b2/dataset/asap-sas-splitted/asap-4/val.csv",
        sha256="67047c4ada5cf1284b4ebb7fa0b51cc0e0adf2d99274339e75c815b3f730628f",
        size=84488,
        license=_LIC_ASAP,
        description="ASAP-SAS item 4, val part of the AERA 80/20 split of the public rel_2 training data",
        parser="parse_asap_csv",
    ),
    DatasetSpec(
        name="asap-sas-4-readme",
        url="https://raw.githubusercontent.com/jesensky/jjj-asap-sas/c82e07f14412b94b86d7044247f861db1a3b2bbd/jjj-asap-sas-release/data/Data%20Set%20%234--ReadMeFirst.txt",
        sha256="d41a79dfc6c7765d1b0834e435f8416b9ee12a2658eb6ec9377412f1705dcf21",
        size=9192,
        license=_LIC_ASAP,
        description="ASAP-SAS item 4 ReadMeFirst: metadata, stem/passage, scoring rubric (cp1252, CR ends)",
        parser="parse_cp1252_text",
    ),
    DatasetSpec(
        name="asap-sas-5-train",
        url="https://raw.githubusercontent.com/lijiazheng99/aera/76ca952555aaf33edc40c49725909d3c6af7f8b2/dataset/asap-sas-splitted/asap-5/train.csv",
        sha256="740d8e6012a19a09fe44420f93edd198c4913f495b2c15d9b3ba12334df398bf",
        size=225024,
        license=_LIC_ASAP,
        description="ASAP-SAS item 5, train part of the AERA 80/20 split of the public rel_2 training data",
        parser="parse_asap_csv",
    ),
    DatasetSpec(
        name="asap-sas-5-val",
        url="https://raw.githubusercontent.com/lijiazheng99/aera/76ca952555aaf33edc40c49725909d3c6af7f8b2/dataset/asap-sas-splitted/asap-5/val.csv",
        sha256="b06de1b6c4122388a25060637f68874b8241634aa32d3c384be1d3773e9cdbd0",
        size=58456,
        license=_LIC_ASAP,
        description="ASAP-SAS item 5, val part of the AERA 80/20 split of the public rel_2 training data",
        parser="parse_asap_csv",
    ),
    DatasetSpec(
        name="asap-sas-5-readme",
        url="https://raw.githubusercontent.com/jesensky/jjj-asap-sas/c82e07f14412b94b86d7044247f861db1a3b2bbd/jjj-asap-sas-release/data/Data%20Set%20%235--ReadMeFirst.txt",
        sha256="10fcaf23500d3b4b93381277c5369de765aaf18bef9b13db6c0dadb99793573d",
        size=1318,
        license=_LIC_ASAP,
        description="ASAP-SAS item 5 ReadMeFirst: metadata, stem/passage, scoring rubric (cp1252, CR ends)",
        parser="parse_cp1252_text",
    ),
    DatasetSpec(
        name="asap-sas-6-train",
        url="https://raw.githubusercontent.com/lijiazheng99/aera/76ca952555aaf33edc40c49725909d3c6af7f8b2/dataset/asap-sas-splitted/asap-6/train.csv",
        sha256="c6365cd899b2582d7081396bb39abea082ea4286df3c9df58cb3024ce6c111ff",
        size=223072,
        license=_LIC_ASAP,
        description="ASAP-SAS item 6, train part of the AERA 80/20 split of the public rel_2 training data",
        parser="parse_asap_csv",
    ),
    DatasetSpec(
        name="asap-sas-6-val",
        url="https://raw.githubusercontent.com/lijiazheng99/aera/76ca952555aaf33edc40c49725909d3c6af7f8b2/dataset/asap-sas-splitted/asap-6/val.csv",
        sha256="4243f158fe7c8ede846030a7693275ca9d15c60da8f28080f530fc961922fb2e",
        size=56407,
        license=_LIC_ASAP,
        description="ASAP-SAS item 6, val part of the AERA 80/20 split of the public rel_2 training data",
        parser="parse_asap_csv",
    ),
    DatasetSpec(
        name="asap-sas-6-readme",
        url="https://raw.githubusercontent.com/jesensky/jjj-asap-sas/c82e07f14412b94b86d7044247f861db1a3b2bbd/jjj-asap-sas-release/data/Data%20Set%20%236--ReadMeFirst.txt",
        sha256="4e1e8aef7259510f53c069093541d49a470a4e37103f08031116446aced817d5",
        size=1941,
        license=_LIC_ASAP,
        description="ASAP-SAS item 6 ReadMeFirst: metadata, stem/passage, scoring rubric (cp1252, CR ends)",
        parser="parse_cp1252_text",
    ),
    DatasetSpec(
        name="asap-sas-7-train",
        url="https://raw.githubusercontent.com/lijiazheng99/aera/76ca952555aaf33edc40c49725909d3c6af7f8b2/dataset/asap-sas-splitted/asap-7/train.csv",
        sha256="a001badc5426bfb5f2218be051b8107d5797dab69058dccb8d39c2a405490d6e",
        size=332239,
        license=_LIC_ASAP,
        description="ASAP-SAS item 7, train part of the AERA 80/20 split of the public rel_2 training data",
        parser="parse_asap_csv",
    ),
    DatasetSpec(
        name="asap-sas-7-val",
        url="https://raw.githubusercontent.com/lijiazheng99/aera/76ca952555aaf33edc40c49725909d3c6af7f8b2/dataset/asap-sas-splitted/asap-7/val.csv",
        sha256="56a335d07ba1e5a7e91a84e3d43f3d05e182d6bd00da815990a3794ca61b7e52",
        size=82399,
        license=_LIC_ASAP,
        description="ASAP-SAS item 7, val part of the AERA 80/20 split of the public rel_2 training data",
        parser="parse_asap_csv",
    ),
    DatasetSpec(
        name="asap-sas-7-readme",
        url="https://raw.githubusercontent.com/jesensky/jjj-asap-sas/c82e07f14412b94b86d7044247f861db1a3b2bbd/jjj-asap-sas-release/data/Data%20Set%20%237--ReadMeFirst.txt",
        sha256="87644cd2159d8b5f5d18f311adc4b4ff95c6f1748ad36f08cbd20fd13a3b95e3",
        size=6230,
        license=_LIC_ASAP,
        description="ASAP-SAS item 7 ReadMeFirst: metadata, stem/passage, scoring rubric (cp1252, CR ends)",
        parser="parse_cp1252_text",
    ),
    DatasetSpec(
        name="asap-sas-8-train",
        url="https://raw.githubusercontent.com/lijiazheng99/aera/76ca952555aaf33edc40c49725909d3c6af7f8b2/dataset/asap-sas-splitted/asap-8/train.csv",
        sha256="cf8fe1dee0a7032e811426b7393ef9b9f9fada9d66d3b06fc04a12270ee5abcc",
        size=432626,
        license=_LIC_ASAP,
        description="ASAP-SAS item 8, train part of the AERA 80/20 split of the public rel_2 training data",
        parser="parse_asap_csv",
    ),
    DatasetSpec(
        name="asap-sas-8-val",
        url="https://raw.githubusercontent.com/lijiazheng99/aera/76ca952555aaf33edc40c49725909d3c6af7f8b2/dataset/asap-sas-splitted/asap-8/val.csv",
        sha256="a7f1b70345ff6627756e06d5bed58846c480ed0d8ecfb0c4b85ec7a575856e92",
        size=105413,
        license=_LIC_ASAP,
        description="ASAP-SAS item 8, val part of the AERA 80/20 split of the public rel_2 training data",
        parser="parse_asap_csv",
    ),
    DatasetSpec(
        name="asap-sas-8-readme",
        url="https://raw.githubusercontent.com/jesensky/jjj-asap-sas/c82e07f14412b94b86d7044247f861db1a3b2bbd/jjj-asap-sas-release/data/Data%20Set%20%238--ReadMeFirst.txt",
        sha256="ea293a7b42dba591c21352a33b2da51e24b19c52d1fe46b1e55b3002cba4eee3",
        size=6316,
        license=_LIC_ASAP,
        description="ASAP-SAS item 8 ReadMeFirst: metadata, stem/passage, scoring rubric (cp1252, CR ends)",
        parser="parse_cp1252_text",
    ),
    DatasetSpec(
        name="asap-sas-9-train",
        url="https://raw.githubusercontent.com/lijiazheng99/aera/76ca952555aaf33edc40c49725909d3c6af7f8b2/dataset/asap-sas-splitted/asap-9/train.csv",
        sha256="03ff9ca202354b1dac224e6bcff4d0a4c7fb44aa1184f502953f3ef05c1b9a92",
        size=431916,
        license=_LIC_ASAP,
        description="ASAP-SAS item 9, train part of the AERA 80/20 split of the public rel_2 training data",
        parser="parse_asap_csv",
    ),
    DatasetSpec(
        name="asap-sas-9-val",
        url="https://raw.githubusercontent.com/lijiazheng99/aera/76ca952555aaf33edc40c49725909d3c6af7f8b2/dataset/asap-sas-splitted/asap-9/val.csv",
        sha256="47c67a21c06d027fcb23a615d01e5eb07e746d6aae3e4bf0240ea7b5fc73fda2",
        size=102701,
        license=_LIC_ASAP,
        description="ASAP-SAS item 9, val part of the AERA 80/20 split of the public rel_2 training data",
        parser="parse_asap_csv",
    ),
    DatasetSpec(
        name="asap-sas-9-readme",
        url="https://raw.githubusercontent.com/jesensky/jjj-asap-sas/c82e07f14412b94b86d7044247f861db1a3b2bbd/jjj-asap-sas-release/data/Data%20Set%20%239--ReadMeFirst.txt",
        sha256="30a37e44922581c8b6557e0efb66b051ac3e40c88bac7f2f1558f04ebe00ea8c",
        size=5086,
        license=_LIC_ASAP,
        description="ASAP-SAS item 9 ReadMeFirst: metadata, stem/passage, scoring rubric (cp1252, CR ends)",
        parser="parse_cp1252_text",
    ),
    DatasetSpec(
        name="asap-sas-10-train",
        url="https://raw.githubusercontent.com/lijiazheng99/aera/76ca952555aaf33edc40c49725909d3c6af7f8b2/dataset/asap-sas-splitted/asap-10/train.csv",
        sha256="55da7585b4bbba25bd58acbfe04cd7bde2972915a42c7006f2110b2fbb0314c5",
        size=294242,
        license=_LIC_ASAP,
        description="ASAP-SAS item 10, train part of the AERA 80/20 split of the public rel_2 training data",
        parser="parse_asap_csv",
    ),
    DatasetSpec(
        name="asap-sas-10-val",
        url="https://raw.githubusercontent.com/lijiazheng99/aera/76ca952555aaf33edc40c49725909d3c6af7f8b2/dataset/asap-sas-splitted/asap-10/val.csv",
        sha256="2b221a1d262dd5aa873dbc83c9d7313bd07a9259a5a1c2b01be3beb27d3ca7a2",
        size=75192,
        license=_LIC_ASAP,
        description="ASAP-SAS item 10, val part of the AERA 80/20 split of the public rel_2 training data",
        parser="parse_asap_csv",
    ),
    DatasetSpec(
        name="asap-sas-10-readme",
        url="https://raw.githubusercontent.com/jesensky/jjj-asap-sas/c82e07f14412b94b86d7044247f861db1a3b2bbd/jjj-asap-sas-release/data/Data%20Set%20%2310--ReadMeFirst.txt",
        sha256="c62073d7618f13dfd1bfb4c41e2211fc8484a68beb96a37d230aa83abb5ca837",
        size=3592,
        license=_LIC_ASAP,
        description="ASAP-SAS item 10 ReadMeFirst: metadata, stem/passage, scoring rubric (cp1252, CR ends)",
        parser="parse_cp1252_text",
    ),
    DatasetSpec(
        name="gsm8k-train",
        url="https://raw.githubusercontent.com/openai/grade-school-math/3101c7d5072418e28b9008a6636bde82a006892c/grade_school_math/data/train.jsonl",
        sha256="17f347dc51477c50d4efb83959dbb7c56297aba886e5544ee2aaed3024813465",
        size=4166206,
        license=_LIC_GSM8K,
        description="GSM8K grade-school maths word problems, train split (answer ends with '#### final')",
        parser="parse_gsm8k",
    ),
    DatasetSpec(
        name="gsm8k-test",
        url="https://raw.githubusercontent.com/openai/grade-school-math/3101c7d5072418e28b9008a6636bde82a006892c/grade_school_math/data/test.jsonl",
        sha256="3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14",
        size=749738,
        license=_LIC_GSM8K,
        description="GSM8K grade-school maths word problems, test split (answer ends with '#### final')",
        parser="parse_gsm8k",
    ),
    DatasetSpec(
        name="math500",
        url="https://raw.githubusercontent.com/hkust-nlp/simpleRL-reason/cf1c7858bfc145a27aa733e75d930d34f0d318a6/examples/simplelr_math_eval/data/math500/test.jsonl",
        sha256="35dc41080a3680858b27fa7e0533d2d547825316fc5dafe5d316f4ccc5a06132",
        size=446564,
        license=_LIC_MATH,
        description="MATH-500: the Lightman et al. 500-problem subset of the MATH test set",
        parser="parse_jsonl",
    ),
    DatasetSpec(
        name="r1-traces",
        url="https://raw.githubusercontent.com/thaotnguyen/thinking-llms-interp/501921e28720cd12361fe6f4a0eeec5fe4214f03/generate-responses/results/vars/responses_deepseek-r1-distill-llama-8b-legacy-messages.json",
        sha256="dfa7a49a719d453c22c03cbaf82d9c824f3312cf11f311cd0119408cee8fcb6b",
        size=2121231,
        license=_LIC_UNKNOWN,
        description="500 DeepSeek-R1-Distill-Llama-8B responses with <think> (capped; 226 end inside <think>)",
        parser="parse_r1_traces",
    ),
    DatasetSpec(
        name="caa-sycophancy-generate",
        url="https://raw.githubusercontent.com/EleutherAI/rnngineering/a0860df89c7975ec7934c4873a757201f8050e12/datasets/generate/sycophancy/generate_dataset.json",
        sha256="b05f9811714384b0ac099ab0d9fa93aeb88f93cb92cdbaca3727c132c2fec00b",
        size=871128,
        license=_LIC_CAA,
        description="CAA 'sycophancy': A/B questions to build the steering vector",
        parser="parse_json_records",
    ),
    DatasetSpec(
        name="caa-sycophancy-test-ab",
        url="https://raw.githubusercontent.com/EleutherAI/rnngineering/a0860df89c7975ec7934c4873a757201f8050e12/datasets/test/sycophancy/test_dataset_ab.json",
        sha256="9c996dda4e4b8ccacf9ead4c8f7b9dfdfe224bd6c7e927fd7a9e91eb6b1c3c5f",
        size=43427,
        license=_LIC_CAA,
        description="CAA 'sycophancy': held-out A/B test questions",
        parser="parse_json_records",
    ),
    DatasetSpec(
        name="caa-sycophancy-test-open-ended",
        url="https://raw.githubusercontent.com/EleutherAI/rnngineering/a0860df89c7975ec7934c4873a757201f8050e12/datasets/test/sycophancy/test_dataset_open_ended.json",
        sha256="6d537f3ceea4dcf8b9eea843914d267cb8a425b2580e3e009cd20fb50d11d714",
        size=6663,
        license=_LIC_CAA,
        description="CAA 'sycophancy': held-out open-ended questions",
        parser="parse_json_records",
    ),
    DatasetSpec(
        name="caa-refusal-generate",
        url="https://raw.githubusercontent.com/EleutherAI/rnngineering/a0860df89c7975ec7934c4873a757201f8050e12/datasets/generate/refusal/generate_dataset.json",
        sha256="48f3ce5c017609b9d733f82f92fd63d074aa7d29bf7c4cc1d18155d87da244d1",
        size=159566,
        license=_LIC_CAA,
        description="CAA 'refusal': A/B questions to build the steering vector",
        parser="parse_json_records",
    ),
    DatasetSpec(
        name="caa-refusal-test-ab",
        url="https://raw.githubusercontent.com/EleutherAI/rnngineering/a0860df89c7975ec7934c4873a757201f8050e12/datasets/test/refusal/test_dataset_ab.json",
        sha256="bee717b4e90afcceb226601843ddc3a34fd7c0b7348c0183cc018642b205d016",
        size=19830,
        license=_LIC_CAA,
        description="CAA 'refusal': held-out A/B test questions",
        parser="parse_json_records",
    ),
    DatasetSpec(
        name="caa-refusal-test-open-ended",
        url="https://raw.githubusercontent.com/EleutherAI/rnngineering/a0860df89c7975ec7934c4873a757201f8050e12/datasets/test/refusal/test_dataset_open_ended.json",
        sha256="f29156da69e0daaced06c67ec4d82e9caf15a2aaa3aedc264b2adb67b8c5dfe5",
        size=3824,
        license=_LIC_CAA,
        description="CAA 'refusal': held-out open-ended questions",
        parser="parse_json_records",
    ),
    DatasetSpec(
        name="caa-hallucination-generate",
        url="https://raw.githubusercontent.com/EleutherAI/rnngineering/a0860df89c7975ec7934c4873a757201f8050e12/datasets/generate/hallucination/generate_dataset.json",
        sha256="8b0eb0fd7c235c2d35fde4d54b108c01ae552c5dbb369fad03c1ddfb1d2c549f",
        size=783594,
        license=_LIC_CAA,
        description="CAA 'hallucination': A/B questions to build the steering vector",
        parser="parse_json_records",
    ),
    DatasetSpec(
        name="caa-hallucination-test-ab",
        url="https://raw.githubusercontent.com/EleutherAI/rnngineering/a0860df89c7975ec7934c4873a757201f8050e12/datasets/test/hallucination/test_dataset_ab.json",
        sha256="558b1cc55a5a48303a524a581d5fcd2a1747c682eefeaa100719ab9b238fb5b9",
        size=39852,
        license=_LIC_CAA,
        description="CAA 'hallucination': held-out A/B test questions",
        parser="parse_json_records",
    ),
    DatasetSpec(
        name="caa-hallucination-test-open-ended",
        url="https://raw.githubusercontent.com/EleutherAI/rnngineering/a0860df89c7975ec7934c4873a757201f8050e12/datasets/test/hallucination/test_dataset_open_ended.json",
        sha256="d2ba42c5d5d08c3f12743b3891993cc900d629a0c4fe6cd2d73dd07df3507507",
        size=11213,
        license=_LIC_CAA,
        description="CAA 'hallucination': held-out open-ended questions",
        parser="parse_json_records",
    ),
    DatasetSpec(
        name="caa-survival-instinct-generate",
        url="https://raw.githubusercontent.com/EleutherAI/rnngineering/a0860df89c7975ec7934c4873a757201f8050e12/datasets/generate/survival-instinct/generate_dataset.json",
        sha256="1dda5220455899f029d18731af2dd6515464c238d6c1ae43f1f87fcae06a637f",
        size=325061,
        license=_LIC_CAA,
        description="CAA 'survival-instinct': A/B questions to build the steering vector",
        parser="parse_json_records",
    ),
    DatasetSpec(
        name="caa-survival-instinct-test-ab",
        url="https://raw.githubusercontent.com/EleutherAI/rnngineering/a0860df89c7975ec7934c4873a757201f8050e12/datasets/test/survival-instinct/test_dataset_ab.json",
        sha256="059930dedb0974c41a8d237837f36ce77e07f86de90dfc85d1599657ff63d231",
        size=18684,
        license=_LIC_CAA,
        description="CAA 'survival-instinct': held-out A/B test questions",
        parser="parse_json_records",
    ),
    DatasetSpec(
        name="caa-survival-instinct-test-open-ended",
        url="https://raw.githubusercontent.com/EleutherAI/rnngineering/a0860df89c7975ec7934c4873a757201f8050e12/datasets/test/survival-instinct/test_dataset_open_ended.json",
        sha256="699320c2ade03ebcfbd10919aa1d69bbe8512fea2731bbb3b47262b3aa63db62",
        size=10589,
        license=_LIC_CAA,
        description="CAA 'survival-instinct': held-out open-ended questions",
        parser="parse_json_records",
    ),
    DatasetSpec(
        name="caa-corrigible-neutral-HHH-generate",
        url="https://raw.githubusercontent.com/EleutherAI/rnngineering/a0860df89c7975ec7934c4873a757201f8050e12/datasets/generate/corrigible-neutral-HHH/generate_dataset.json",
        sha256="e7a789f1f4b1243ea3559f7d4f3b511d435d57cd655d9bfc96d850785f58b7d5",
        size=96229,
        license=_LIC_CAA,
        description="CAA 'corrigible-neutral-HHH': A/B questions to build the steering vector",
        parser="parse_json_records",
    ),
    DatasetSpec(
        name="caa-corrigible-neutral-HHH-test-ab",
        url="https://raw.githubusercontent.com/EleutherAI/rnngineering/a0860df89c7975ec7934c4873a757201f8050e12/datasets/test/corrigible-neutral-HHH/test_dataset_ab.json",
        sha256="9d66cd416a742f3db1dd463be4466d32b02fe25cc84da1af35b485dec6a9d3d7",
        size=16542,
        license=_LIC_CAA,
        description="CAA 'corrigible-neutral-HHH': held-out A/B test questions",
        parser="parse_json_records",
    ),
    DatasetSpec(
        name="caa-corrigible-neutral-HHH-test-open-ended",
        url="https://raw.githubusercontent.com/EleutherAI/rnngineering/a0860df89c7975ec7934c4873a757201f8050e12/datasets/test/corrigible-neutral-HHH/test_dataset_open_ended.json",
        sha256="23efa5ccdf693323c8f1407d4ac3ebffc0d48ca987937e5b4f145b5fdabcee70",
        size=9392,
        license=_LIC_CAA,
        description="CAA 'corrigible-neutral-HHH': held-out open-ended questions",
        parser="parse_json_records",
    ),
    DatasetSpec(
        name="advbench",
        url="https://raw.githubusercontent.com/andyrdt/refusal_direction/9d852fae1a9121c78b29142de733cb1340770cc3/dataset/raw/advbench.csv",
        sha256="6cd1a5c63c07610d7eb67307772ee5606017ee950b5770ab288a2c487489d3e1",
        size=82125,
        license=_LIC_ADVBENCH,
        description="AdvBench harmful behaviours (goal, target)",
        parser="parse_csv",
    ),
    DatasetSpec(
        name="refusal-harmful-train",
        url="https://raw.githubusercontent.com/andyrdt/refusal_direction/9d852fae1a9121c78b29142de733cb1340770cc3/dataset/splits/harmful_train.json",
        sha256="8f5c0eac0efd2a7f99084bbe8d0de2c465e31b1997184783c917969d9de9ece1",
        size=34613,
        license=_LIC_REFUSAL,
        description="Harmful instructions, train split of the refusal-direction paper",
        parser="parse_json_records",
    ),
    DatasetSpec(
        name="refusal-harmful-val",
        url="https://raw.githubusercontent.com/andyrdt/refusal_direction/9d852fae1a9121c78b29142de733cb1340770cc3/dataset/splits/harmful_val.json",
        sha256="305f1d1e6dfa6c50a32d24a18ef815f42b5441eb83e6d7767d242107162fd9f4",
        size=6763,
        license=_LIC_REFUSAL,
        description="Harmful instructions, val split of the refusal-direction paper",
        parser="parse_json_records",
    ),
    DatasetSpec(
        name="refusal-harmless-train",
        url="https://raw.githubusercontent.com/andyrdt/refusal_direction/9d852fae1a9121c78b29142de733cb1340770cc3/dataset/splits/harmless_train.json",
        sha256="86623b1f8a25aa35df153fc97a556dbcebb6a7c881538ae43ee479ca17f2e002",
        size=2344466,
        license=_LIC_REFUSAL,
        description="Harmless instructions, train split of the refusal-direction paper",
        parser="parse_json_records",
    ),
    DatasetSpec(
        name="refusal-harmless-val",
        url="https://raw.githubusercontent.com/andyrdt/refusal_direction/9d852fae1a9121c78b29142de733cb1340770cc3/dataset/splits/harmless_val.json",
        sha256="772010758e7d771ef4c7e5e4acdfd7598dcece1a6f383f20d382f640913a2a4d",
        size=780532,
        license=_LIC_REFUSAL,
        description="Harmless instructions, val split of the refusal-direction paper",
        parser="parse_json_records",
    ),
    DatasetSpec(
        name="truthfulqa",
        url="https://raw.githubusercontent.com/benedictflorance/truthfulqa_experiments/6fdfd38288e86296582a584694df5cf43d1f634a/datasets/TruthfulQA.csv",
        sha256="99d6ae7755e3b435eade956068c9de7c0c474770344237aeb66b56519ba4b697",
        size=443719,
        license=_LIC_TRUTHFULQA,
        description="TruthfulQA, 817 questions with best/correct/incorrect answers (';'-separated) and sources",
        parser="parse_csv",
    ),
    DatasetSpec(
        name="toxicity-toxic",
        url="https://raw.githubusercontent.com/AI-secure/DecodingTrust/161ae8321ced62f45fcd9ceb412e05b47c603cd4/data/toxicity/user_prompts/toxic.jsonl",
        sha256="a51d4650b14af9c0e795a9cfca2949916855662cee7c8db3dd551d38735d80cb",
        size=860726,
        license=_LIC_TOXICITY,
        description="DecodingTrust toxic user prompts from RealToxicityPrompts, with Perspective scores",
        parser="parse_toxicity_jsonl",
    ),
    DatasetSpec(
        name="toxicity-nontoxic",
        url="https://raw.githubusercontent.com/AI-secure/DecodingTrust/161ae8321ced62f45fcd9ceb412e05b47c603cd4/data/toxicity/user_prompts/nontoxic.jsonl",
        sha256="feb50408f49585752bb8cbbb10d1a340ec45783358251299ea9a82ab19606823",
        size=872208,
        license=_LIC_TOXICITY,
        description="DecodingTrust nontoxic user prompts from RealToxicityPrompts, with Perspective scores",
        parser="parse_toxicity_jsonl",
    ),
    DatasetSpec(
        name="sst2-train",
        url="https://raw.githubusercontent.com/forest-snow/alps/3c7ef2c98249fc975a897b27f275695f97d5b7a9/data/SST-2/train.tsv",
        sha256="920e317b2c52e12cd22db1da2c6708312bd7dc4f3712b9bbf1b50ee6c2c792ba",
        size=3422882,
        license=_LIC_SST2,
        description="SST-2 phrases and sentences, train split as re-split in the ALPS repository",
        parser="parse_sst2",
    ),
    DatasetSpec(
        name="sst2-dev",
        url="https://raw.githubusercontent.com/forest-snow/alps/3c7ef2c98249fc975a897b27f275695f97d5b7a9/data/SST-2/dev.tsv",
        sha256="92353770071a2a889f75d000a38a9e541ea8f0a5499e50f040b17917a5cbf66f",
        size=383214,
        license=_LIC_SST2,
        description="SST-2 phrases and sentences, dev split as re-split in the ALPS repository",
        parser="parse_sst2",
    ),
    DatasetSpec(
        name="nltk-webtext",
        url="https://raw.githubusercontent.com/nltk/nltk_data/5db857e6f7df11eabb5e5665836db9ec8df07e28/packages/corpora/webtext.zip",
        sha256="9e32dbae4879464b8f420a0dc721855bb26167b720d7695588d2ca2aeadf501a",
        size=646297,
        license=_LIC_NLTK,
        description="NLTK webtext: 6 informal web texts (forum, film script, overheard, reviews, ads)",
        parser="parse_nltk_corpus",
    ),
    DatasetSpec(
        name="nltk-state_union",
        url="https://raw.githubusercontent.com/nltk/nltk_data/5db857e6f7df11eabb5e5665836db9ec8df07e28/packages/corpora/state_union.zip",
        sha256="366c1dc82b2abf896f42b2ec50ba802a0141a29f75d29ca48a7a243ce5bfbe8d",
        size=808757,
        license=_LIC_NLTK,
        description="NLTK state_union: US State of the Union addresses 1945-2006",
        parser="parse_nltk_corpus",
    ),
    DatasetSpec(
        name="nltk-inaugural",
        url="https://raw.githubusercontent.com/nltk/nltk_data/5db857e6f7df11eabb5e5665836db9ec8df07e28/packages/corpora/inaugural.zip",
        sha256="7c5fb5793e31fbeae12bf1aa0ffda5336468f07cedb50654c6d31ca384e2046b",
        size=346476,
        license=_LIC_NLTK,
        description="NLTK inaugural: US presidential inaugural addresses 1789-2021",
        parser="parse_nltk_corpus",
    ),
    DatasetSpec(
        name="nltk-abc",
        url="https://raw.githubusercontent.com/nltk/nltk_data/5db857e6f7df11eabb5e5665836db9ec8df07e28/packages/corpora/abc.zip",
        sha256="129bb6001beb828049a90a59b7dd3c2f0594a47012e48fc5177dfae38e658565",
        size=1487851,
        license=_LIC_NLTK,
        description="NLTK abc: Australian Broadcasting Commission rural and science news transcripts",
        parser="parse_nltk_corpus",
    ),
    DatasetSpec(
        name="nltk-movie_reviews",
        url="https://raw.githubusercontent.com/nltk/nltk_data/5db857e6f7df11eabb5e5665836db9ec8df07e28/packages/corpora/movie_reviews.zip",
        sha256="a41211ae685019137410268134db6a1a14428c89b671eb83056151a878539008",
        size=4004848,
        license=_LIC_NLTK,
        description="NLTK movie_reviews: Pang & Lee polarity v2.0, 1000 positive + 1000 negative reviews",
        parser="parse_nltk_corpus",
    ),
    DatasetSpec(
        name="nltk-sentence_polarity",
        url="https://raw.githubusercontent.com/nltk/nltk_data/5db857e6f7df11eabb5e5665836db9ec8df07e28/packages/corpora/sentence_polarity.zip",
        sha256="6e1ed4405b65c7eabf1d199a7f7c437091ac21da0ea7467b410a74062574566b",
        size=490256,
        license=_LIC_NLTK,
        description="NLTK sentence_polarity: Pang & Lee sentence polarity v1.0, rt-polarity.pos / .neg snippets",
        parser="parse_nltk_corpus",
    ),
)

#: name -> spec, in a stable, grouped order.
REGISTRY: dict[str, DatasetSpec] = {s.name: s for s in _SPECS}


# --------------------------------------------------------------------------------------------------
# Lookup
# --------------------------------------------------------------------------------------------------
def names(prefix: str = "") -> list[str]:
    """Registered dataset names starting with ``prefix``, in registry order."""
    return [n for n in REGISTRY if n.startswith(prefix)]


def _suggestions(name: str, limit: int = 5) -> list[str]:
    starts = [n for n in REGISTRY if n.startswith(name)] if name else []
    close = difflib.get_close_matches(name, list(REGISTRY), n=limit, cutoff=0.5)
    return list(dict.fromkeys(starts + close))[:limit]


def spec(name: str) -> DatasetSpec:
    """The :class:`DatasetSpec` of ``name``; :class:`UnknownDatasetError` with suggestions if unknown."""
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        pass
    hint = _suggestions(str(name))
    did_you_mean = f" Did you mean {', '.join(repr(h) for h in hint)}?" if hint else ""
    raise UnknownDatasetError(
        f"unknown dataset {name!r}.{did_you_mean} "
        f"Run `python -m helpers.data list` to see all {len(REGISTRY)} registered names."
    )


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


def _check_registry() -> None:
    for key, s in REGISTRY.items():
        problems = []
        if not s.url.startswith(RAW_GITHUB) or s.url.count("/") < 7:
            problems.append(f"url {s.url!r} is not a raw GitHub URL <owner>/<repo>/<commit>/<path>")
        if len(s.sha256) != 64 or any(c not in "0123456789abcdef" for c in s.sha256):
            problems.append(f"sha256 {s.sha256!r} is not 64 lowercase hex digits")
        if s.parser not in _PARSERS:
            problems.append(f"parser {s.parser!r} is not defined in helpers.data")
        if problems:
            raise DataError(f"bad registry entry {key!r}: " + "; ".join(problems))
    if len(REGISTRY) != len(_SPECS):
        raise DataError("duplicate names in the dataset registry")


_check_registry()


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------
def _human(n: int) -> str:
    if n < 1000:
        return f"{n} B"
    return f"{n / 1e3:.1f} KB" if n < 1_000_000 else f"{n / 1e6:.1f} MB"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m helpers.data", description="Pinned, verified datasets.")
    sub = p.add_subparsers(dest="cmd", required=True)
    pl = sub.add_parser("list", help="list registered datasets (name, size, licence)")
    pl.add_argument("prefix", nargs="?", default="", help="only names starting with this")
    pf = sub.add_parser("fetch", help="fetch and verify datasets into the data dir")
    pf.add_argument("names", nargs="*", metavar="NAME")
    pf.add_argument("--all", action="store_true", help="fetch every registered dataset")
    pf.add_argument(
        "--mirror",
        default="default",
        help="folder or http(s) base URL laid out as <owner>/<repo>/<commit>/<path>; '' = real URL",
    )
    pf.add_argument("--force", action="store_true", help="re-fetch even if a verified copy exists")
    args = p.parse_args(argv)

    try:
        if args.cmd == "list":
            shown = names(args.prefix)
            if not shown:
                spec(args.prefix)  # raises with suggestions
            width = max(len(n) for n in shown)
            try:
                for n in shown:
                    s = REGISTRY[n]
                    print(f"{n:<{width}}  {_human(s.size):>9}  {s.license}")
            except BrokenPipeError:  # e.g. `... list | head`: stop quietly, as the Python docs advise
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        if args.all == bool(args.names):
            p.error("fetch: give dataset names or --all (not both)")
        todo = list(REGISTRY) if args.all else args.names
        for n in todo:
            spec(n)
        paths = fetch_all(todo, mirror=args.mirror or None, force=args.force, progress=len(todo) > 1)
        for n, path in paths.items():
            print(f"{n}\t{path}")
        return 0
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
