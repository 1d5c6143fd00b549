"""The package's shape: layers, no import loops, a CLI on public modules, small modules.

Every ``import`` and ``from ... import`` of the library and the CLI is read with
``ast``: at module level, inside functions and under ``if TYPE_CHECKING:`` alike (a
type-only import is still a dependency of the design). ``from pkg import name``
counts as an import of ``pkg.name`` when that is a module, else of ``pkg``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LIBRARY = ROOT / "georaster_cnn"
CLI = ROOT / "cli" / "georaster_cnn_cli"

#: The layers, lowest first. A module may import from its own layer and from any
#: layer of a lower rank; layers of one rank (prediction, training) do not import
#: each other. ``georaster_cnn`` itself (``__init__``: the lazy public API) is the top.
LAYERS: dict[str, int] = {
    "core": 0,
    "cluster": 1,
    "io": 2,
    "model": 3,
    "prediction": 4,
    "training": 4,
    "evaluation": 5,
    "products": 6,
    "api": 7,
}
#: The modules of the core, directly in ``georaster_cnn/``.
CORE = {"errors", "options", "geometry", "stats", "chips", "quiet", "_lazy"}
#: Modules beside the core that sit above the whole library (nothing of it imports them).
TOP = {"testing"}
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 100


def _module_name(path: Path, root: Path, package: str) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join((package, *parts))


def _modules(root: Path, package: str) -> dict[str, Path]:
    return {_module_name(p, root, package): p for p in sorted(root.rglob("*.py"))}


ALL = {**_modules(LIBRARY, "georaster_cnn"), **_modules(CLI, "georaster_cnn_cli")}


def _imports(name: str, path: Path) -> Iterator[tuple[str, int]]:
    """``(imported module, line)`` for every import statement of one module."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                if not is_package:
                    base = base[:-1]
                base = base[: len(base) - node.level + 1]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                yield (sub if sub in ALL else source), node.lineno


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in ALL}
    for name, path in ALL.items():
        for target, _ in _imports(name, path):
            if target in ALL and target != name:
                graph[name].add(target)
    return graph


def _layer(module: str) -> str:
    parts = module.split(".")
    if module == "georaster_cnn" or (len(parts) == 2 and parts[1] in TOP):
        return "api"
    if len(parts) == 2 and parts[1] in CORE:
        return "core"
    if parts[1] in LAYERS:
        return parts[1]
    raise AssertionError(f"{module} belongs to no layer; add it to LAYERS or CORE")


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle() -> None:
    assert _cycles(_graph()) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_every_import_goes_down_the_layers() -> None:
    wrong = []
    for name, path in ALL.items():
        if not name.startswith("georaster_cnn."):
            continue
        src = _layer(name)
        for target, line in _imports(name, path):
            if not target.startswith("georaster_cnn.") or target not in ALL:
                continue
            dst = _layer(target)
            if dst != src and LAYERS[dst] >= LAYERS[src]:
                wrong.append(f"{path.relative_to(ROOT)}:{line}: {src} imports {dst} ({target})")
    assert wrong == []


def test_the_package_itself_is_imported_by_no_library_module() -> None:
    # georaster_cnn/__init__ is the public face over every layer: a module that imports
    # it would import everything above itself.
    users = [m for m, deps in _graph().items() if "georaster_cnn" in deps and m != "georaster_cnn"]
    assert [m for m in users if m.startswith("georaster_cnn.")] == []


def test_the_cli_imports_public_library_modules_only() -> None:
    private = []
    for name, path in ALL.items():
        if not name.startswith("georaster_cnn_cli"):
            continue
        for target, line in _imports(name, path):
            parts = target.split(".")
            if parts[0] == "georaster_cnn" and any(p.startswith("_") for p in parts[1:]):
                private.append(f"{path.relative_to(ROOT)}:{line}: {target}")
    assert private == []


def test_subpackages_by_role_over_a_small_core() -> None:
    packages = [p for p in LIBRARY.iterdir() if (p / "__init__.py").is_file()]
    assert len(packages) >= 4
    top = [p.stem for p in LIBRARY.glob("*.py") if p.stem != "__init__"]
    assert len(top) <= 12, top
    assert set(top) <= CORE | TOP, set(top) - CORE - TOP
    for package in packages:  # each says what it owns
        doc = ast.get_docstring(ast.parse((package / "__init__.py").read_text()))
        assert doc and len(doc) > 200, package


def test_no_module_is_named_like_a_public_function() -> None:
    import georaster_cnn as gc

    functions = {n for n in gc.__all__ if callable(getattr(gc, n)) and n[0].islower()}
    stems = {p.stem for p in LIBRARY.rglob("*.py")} | {p.name for p in LIBRARY.iterdir()}
    assert functions & stems == set()


@pytest.mark.parametrize("name", sorted(ALL))
def test_modules_and_functions_stay_small(name: str) -> None:
    path = ALL[name]
    text = path.read_text(encoding="utf-8")
    assert text.count("\n") <= MAX_MODULE_LINES, f"{path}: {text.count(chr(10))} lines"
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(ast.parse(text))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert long == [], f"{path}: {long}"
