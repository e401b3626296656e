"""The scoring study's prompts and word list, kept as text files in ``prompts/`` beside this module."""
from __future__ import annotations

from functools import cache
from pathlib import Path

PROMPTS_DIR = Path(__file__).resolve().parent / "prompts"

__all__ = ["PROMPTS_DIR", "line_list", "prompt", "word_list"]


@cache
def _text(name: str) -> str:
    path = PROMPTS_DIR / f"{name}.txt"
    if not path.exists():
        known = sorted(p.stem for p in PROMPTS_DIR.glob("*.txt"))
        raise FileNotFoundError(f"no prompt {name!r} in {PROMPTS_DIR}; prompts: {known}.")
    return path.read_text(encoding="utf-8").rstrip("\n")


def prompt(name: str, **fields) -> str:
    """``prompts/<name>.txt`` with ``{field}`` placeholders filled (``str.format``)."""
    try:
        return _text(name).format(**fields)
    except KeyError as e:
        raise KeyError(f"prompt {name!r} needs the field {e.args[0]!r}.") from None


def word_list(name: str) -> frozenset[str]:
    """The whitespace-separated words of ``prompts/<name>.txt`` (``#`` starts a comment)."""
    lines = (line.split("#", 1)[0] for line in _text(name).splitlines())
    return frozenset(w for line in lines for w in line.split())


def line_list(name: str) -> tuple[str, ...]:
    """The non-empty lines of ``prompts/<name>.txt`` (a line starting with ``#`` is a comment)."""
    return tuple(line.strip() for line in _text(name).splitlines() if line.strip() and not line.lstrip().startswith("#"))
