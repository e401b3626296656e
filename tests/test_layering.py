"""The layout's rules, checked on the source (AST): core imports neither studies nor harness; a study imports only
core and registry (and its own package); the registry imports nothing from helpers; no private name crosses a
module boundary; helper-to-helper imports sit at module level."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from helpers import PROJECT_ROOT

HELPERS = PROJECT_ROOT / "helpers"


def _module(path: Path) -> str:
    rel = path.relative_to(PROJECT_ROOT).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path):
    """(imported module, names, line, at module level) for every helpers import in ``path`` (relative resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    mod = _module(path)
    pkg = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    top = {id(n) for n in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [a.name for a in node.names]
            if not node.module and node.level:  # from . import x -> submodules
                for n in names:
                    yield f"{target}.{n}", [], node.lineno, id(node) in top
                continue
            yield target, names, node.lineno, id(node) in top
        elif isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, [], node.lineno, id(node) in top


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "helpers" else ("helpers" if module == "helpers" else "external")


FILES = sorted(HELPERS.rglob("*.py"))


def _violations(allowed: dict[str, set[str]], files=None) -> list[str]:
    bad = []
    for f in FILES if files is None else files:
        src_layer = _layer(_module(f))
        for target, _, line, _ in _imports(f):
            if not target.startswith("helpers"):
                continue
            tgt = _layer(target)
            if src_layer in allowed and tgt not in allowed[src_layer] | {src_layer}:
                bad.append(f"{f.relative_to(PROJECT_ROOT)}:{line} ({src_layer}) imports {target} ({tgt})")
            if src_layer == "studies" and tgt == "studies":
                own = _module(f).split(".")[2]
                if target.split(".")[2:3] and target.split(".")[2] != own:
                    bad.append(f"{f.relative_to(PROJECT_ROOT)}:{line}: study {own} imports another study ({target})")
    return bad


RULES = {"core": {"helpers", "registry"}, "studies": {"helpers", "core", "registry"}, "registry": set()}


def test_layers_hold():
    assert _violations(RULES) == []


def test_the_check_catches_a_forbidden_import():
    """The rule is not vacuous: a core module importing a study, a study importing the harness or another study,
    are all reported."""
    fake_core, fake_study = HELPERS / "core" / "zz_fake.py", HELPERS / "studies" / "scoring" / "zz_fake.py"
    fake_core.write_text("from helpers.studies import scoring\n")
    fake_study.write_text("from helpers.harness import notebook\nfrom helpers.studies.reasoning import answers\n")
    try:
        bad = _violations(RULES, [fake_core, fake_study])
    finally:
        fake_core.unlink()
        fake_study.unlink()
    assert any("zz_fake.py:1 (core) imports helpers.studies" in b for b in bad)
    assert any("zz_fake.py:1 (studies) imports helpers.harness" in b for b in bad)
    assert any("imports another study" in b for b in bad)


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(HELPERS)))
def test_no_private_names_across_modules_and_no_hidden_imports(path):
    for target, names, line, top in _imports(path):
        if not target.startswith("helpers"):
            continue
        same_pkg = target.rsplit(".", 1)[0] == _module(path).rsplit(".", 1)[0]
        private = [n for n in names if n.startswith("_") and n != "__all__"]
        assert not private or same_pkg, f"{path}:{line} imports private {private} from {target}"
        assert top, f"{path}:{line}: helper-to-helper import inside a function ({target}); import at module level"
