"""The layout's rules, checked on the source: no import circle, no module importing another module's
private names, arrows only from the adapters (cli/, _qt/, the napari hooks) into core/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "src" / "napari_xai"


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _resolve(module: str, is_package: bool, level: int, target: str | None) -> str:
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def _imports() -> dict[str, list[tuple[str, str, int]]]:
    """module -> [(imported module, imported name or '', line)] for every import of the package, at any depth."""
    out: dict[str, list[tuple[str, str, int]]] = {}
    modules = {_module_name(p) for p in PKG.rglob("*.py")}
    for path in PKG.rglob("*.py"):
        mod = _module_name(path)
        is_pkg = path.name == "__init__.py"
        edges = out.setdefault(mod, [])
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                src = _resolve(mod, is_pkg, node.level, node.module) if node.level else (node.module or "")
                if not src.startswith("napari_xai"):
                    continue
                for alias in node.names:
                    sub = f"{src}.{alias.name}"
                    if sub in modules:  # "from . import lrp": the module itself
                        edges.append((sub, "", node.lineno))
                    else:
                        edges.append((src, alias.name, node.lineno))
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("napari_xai"):
                        edges.append((alias.name, "", node.lineno))
    return out


def _owner(module: str, modules: set[str]) -> str:
    return module if module in modules else module.rsplit(".", 1)[0]


def test_no_import_circle():
    graph = _imports()
    modules = set(graph)
    adj = {m: sorted({_owner(t, modules) for t, _, _ in edges if _owner(t, modules) != m}) for m, edges in graph.items()}
    # a package's __init__ that only re-exports its own submodules is part of them, not a separate node
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in adj.get(m, []):
            if n.startswith(m + ".") or m.startswith(n + "."):
                continue  # a package and its own submodules
            if state.get(n) == 1:
                cycles.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(adj):
        if m not in state:
            visit(m)
    assert not cycles, "import circles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_private_names_across_modules():
    graph = _imports()
    bad = [f"{m}:{line} imports {name} from {src}" for m, edges in graph.items() for src, name, line in edges
           if name.startswith("_") and not name.startswith("__") and _owner(src, set(graph)) != m]
    assert not bad, "private names imported across modules:\n" + "\n".join(bad)


@pytest.mark.parametrize("layer", ["cli", "_qt", "_reader", "_writer", "_sample_data", "_layers", "_napari", "_demo_app"])
def test_core_never_imports_an_adapter(layer):
    graph = _imports()
    bad = [f"{m}:{line} imports {src}" for m, edges in graph.items() if m.startswith("napari_xai.core")
           for src, _, line in edges if src.startswith(f"napari_xai.{layer}")]
    assert not bad, "\n".join(bad)


def test_widgets_never_import_the_command_line():
    graph = _imports()
    bad = [f"{m}:{line} imports {src}" for m, edges in graph.items() if m.startswith("napari_xai._qt")
           for src, _, line in edges if src.startswith("napari_xai.cli") or src.startswith("napari_xai._cli")]
    assert not bad, "\n".join(bad)
