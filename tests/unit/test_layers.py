"""The package is layered: each part imports only the parts below it (docs/design.md, "Layout")."""

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "fedmrn_mpi"
# bottom to top; a part may import itself and anything earlier in this list, and the package root
LAYERS = ["results", "compat", "rng", "data", "models", "comm", "algorithms", "config", "training", "run",
          "report", "__main__"]
# parts that run without torch: they may not import compat (torch-version facts), although it lies below them
NO_TORCH = ("results", "report")


def _part(module: str) -> str:
    """'fedmrn_mpi.run.loop' -> 'run'; the package root -> ''."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _imports(path: Path, source: str | None = None, runtime_only: bool = False) -> list[tuple[str, int]]:
    """fedmrn_mpi modules imported by `path` (or by `source` read as that file): anywhere, also inside functions
    and under TYPE_CHECKING, since a type-only import is a dependency too; `runtime_only` leaves those out."""
    package = list(path.relative_to(PKG.parent).parts[:-1])  # e.g. ["fedmrn_mpi", "run"]
    tree = ast.parse(path.read_text() if source is None else source)
    skip = {id(n) for node in ast.walk(tree) if runtime_only and isinstance(node, ast.If)
            and getattr(node.test, "id", getattr(node.test, "attr", "")) == "TYPE_CHECKING"
            for n in ast.walk(node)}
    out = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            mod = ".".join(base + ([node.module] if node.module else []))
            if not mod.startswith("fedmrn_mpi"):
                continue
            for a in node.names:  # `from . import x`: x may be a submodule
                sub = PKG.parent.joinpath(*mod.split("."), a.name)
                out.append((f"{mod}.{a.name}" if sub.is_dir() or sub.with_suffix(".py").exists() else mod,
                            node.lineno))
        elif isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names if a.name.startswith("fedmrn_mpi")]
    return out


FILES = sorted(PKG.rglob("*.py"))


def test_every_module_belongs_to_a_layer():
    parts = {_part(".".join(f.relative_to(PKG.parent).with_suffix("").parts)) for f in FILES}
    assert parts - {""} - {"__init__"} <= set(LAYERS), parts - set(LAYERS)


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PKG)))
def test_imports_only_go_down(path):
    me = _part(".".join(path.relative_to(PKG.parent).with_suffix("").parts))
    if me in ("", "__init__"):
        assert not _imports(path), "the package root imports nothing"
        return
    for mod, line in _imports(path):
        other = _part(mod)
        if other in ("", "__init__", me):
            continue
        assert other in LAYERS, f"{path.name}:{line} imports {mod}, which is in no layer"
        assert LAYERS.index(other) < LAYERS.index(me), \
            f"{path.relative_to(PKG)}:{line}: layer '{me}' imports '{mod}' from the higher layer '{other}'"


def test_the_check_sees_relative_and_lazy_imports():
    imported = {m for m, _ in _imports(PKG / "config.py")}
    assert "fedmrn_mpi.algorithms" in imported  # a function-level relative import (the registry)
    assert not any(m.startswith("fedmrn_mpi.config") for m, _ in _imports(PKG / "algorithms" / "base.py"))
    assert "fedmrn_mpi.comm" in {m for m, _ in _imports(PKG / "run" / "loop.py")}


def test_the_check_sees_type_only_imports():
    base = PKG / "algorithms" / "base.py"
    text = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..config import Config\n"
    assert _imports(base, text) == [("fedmrn_mpi.config", 3)]
    assert _imports(base, text, runtime_only=True) == []


@pytest.mark.parametrize("path", [f for f in FILES if _part(".".join(f.relative_to(PKG.parent).parts)) in NO_TORCH],
                         ids=lambda p: str(p.relative_to(PKG)))
def test_the_torch_free_parts_do_not_import_compat(path):
    assert not [m for m, _ in _imports(path, runtime_only=True) if _part(m) == "compat"], \
        f"{path.relative_to(PKG)} imports fedmrn_mpi.compat, which imports torch"
