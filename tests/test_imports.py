"""The import graph of ``mixbench/``: no cycle, and the layers import only downwards.

Every module is parsed with ``ast`` (nothing is imported), and every import of a ``mixbench`` module counts,
at module level or inside a function: a lazy import hides a cycle from the interpreter, not from the design.
Imports made by name at run time count too: a package that imports all its modules
(``pkgutil.iter_modules(__path__)``) depends on each of them, and a module calling
``importlib.import_module`` depends on the modules its strings name (``f"mixbench.data.{name}"``: every module
of ``mixbench.data``).

Layers: :mod:`mixbench.config` imports no registry (methods, models, data) and no engine; the methods never
import the engine nor read a config file; :mod:`mixbench.report` never imports the engine; and a fresh
interpreter running ``import mixbench.config`` loads none of the methods, models, data or engine.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "mixbench"
REGISTRIES = ("mixbench.methods", "mixbench.models", "mixbench.data")
ENGINE = "mixbench.engine"
CONFIG_READING = ("yaml", "OmegaConf.load", "CONFIG_DIR")  # what a method file may not mention

Graph = dict[str, set[str]]


def module_files(root: Path) -> dict[str, Path]:
    """Every module of the package under ``root`` (the folder holding ``mixbench/``), by dotted name."""
    modules = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def in_package(name: str) -> bool:
    return name == PACKAGE or name.startswith(f"{PACKAGE}.")


def under(name: str, prefix: str) -> bool:
    """Whether module ``name`` is ``prefix`` or inside it."""
    return name == prefix or name.startswith(f"{prefix}.")


def _calls(tree: ast.AST, function: str) -> list[ast.Call]:
    """The calls of ``function`` (``importlib.import_module``, ``pkgutil.iter_modules``) in ``tree``."""
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and ast.unparse(node.func) in (function, function.split(".")[-1])
    ]


def _f_string_prefix(argument: ast.JoinedStr, name: str) -> str:
    """The constant start of an f-string, ``{__name__}`` read as ``name`` (the module it is in)."""
    prefix = ""
    for part in argument.values:
        if isinstance(part, ast.Constant):
            prefix += str(part.value)
        elif isinstance(part.value, ast.Name) and part.value.id == "__name__":
            prefix += name
        else:
            break
    return prefix


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The ``mixbench`` modules that module ``name`` imports, anywhere in its file (see the module doc)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            for alias in node.names:  # a submodule where one is named, else the module it comes from
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    if _calls(tree, "pkgutil.iter_modules"):  # a package importing every module it holds
        found.update(m for m in modules if m.rpartition(".")[0] == package)
    for call in _calls(tree, "importlib.import_module"):
        if call.args and isinstance(call.args[0], ast.JoinedStr):  # f"mixbench.data.{name}": all of them
            prefix = _f_string_prefix(call.args[0], name)
            if in_package(prefix.rstrip(".")):
                found.update(m for m in modules if m.startswith(prefix))
    if _calls(tree, "importlib.import_module"):  # modules named by strings, e.g. a table of plugins
        found.update(
            node.value
            for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in modules
        )
    return {module for module in found if in_package(module) and module in modules and module != name}


def import_graph(root: Path = REPO) -> Graph:
    modules = module_files(root)
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: Graph) -> list[str] | None:
    """One import cycle of ``graph`` as ``[a, b, ..., a]``, or ``None`` when there is none."""
    done: set[str] = set()
    for start in sorted(graph):
        if start in done:
            continue
        path, on_path = [start], {start}
        stack = [iter(sorted(graph[start]))]
        while stack:
            successor = next(stack[-1], None)
            if successor is None:
                stack.pop()
                done.add(path[-1])
                on_path.discard(path.pop())
            elif successor in on_path:
                return [*path[path.index(successor) :], successor]
            elif successor not in done:
                path.append(successor)
                on_path.add(successor)
                stack.append(iter(sorted(graph.get(successor, ()))))
    return None


def reachable(graph: Graph, start: str) -> set[str]:
    """The modules that importing ``start`` may import, directly or through others."""
    seen, todo = set(), [start]
    while todo:
        for module in graph.get(todo.pop(), ()):
            if module not in seen:
                seen.add(module)
                todo.append(module)
    return seen


@pytest.fixture(scope="module")
def graph() -> Graph:
    return import_graph()


def test_the_import_graph_of_mixbench_has_no_cycle(graph: Graph) -> None:
    assert len(graph) > 50 and "mixbench.methods.switch" in graph["mixbench.methods"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_search_sees_function_level_imports_and_packages_importing_all_their_modules(
    tmp_path: Path,
) -> None:
    """The shape of the cycle this test was written against: ``config.validate`` imported the method
    registry inside the function, and a method imported ``mixbench.config`` (the package imports every
    method module by name)."""
    files = {
        "__init__.py": "",
        "config.py": "CONFIG_DIR = 1\n\ndef validate():\n    from mixbench.methods import METHODS\n",
        "methods/__init__.py": (
            "import importlib, pkgutil\nfrom mixbench.methods.registry import METHODS\n"
            "for m in pkgutil.iter_modules(__path__):\n    importlib.import_module(f'{__name__}.{m.name}')\n"
        ),
        "methods/registry.py": "METHODS = {}\n",
        "methods/switch.py": "from mixbench.config import CONFIG_DIR\n",
    }
    for relative, text in files.items():
        (tmp_path / PACKAGE / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / PACKAGE / relative).write_text(text)
    fixture = import_graph(tmp_path)
    cycle = find_cycle(fixture)
    assert cycle is not None and {"mixbench.config", "mixbench.methods.switch"} <= set(cycle), cycle
    assert cycle[0] == cycle[-1]
    del fixture["mixbench.methods.switch"]
    fixture["mixbench.methods"].discard("mixbench.methods.switch")
    assert find_cycle(fixture) is None


def test_config_imports_no_registry_and_no_engine(graph: Graph) -> None:
    loaded = reachable(graph, "mixbench.config")
    forbidden = sorted(m for m in loaded if any(under(m, layer) for layer in (*REGISTRIES, ENGINE)))
    assert not forbidden, f"mixbench.config imports {forbidden}"


def test_methods_never_import_the_engine_nor_read_config_files(graph: Graph) -> None:
    modules = module_files(REPO)
    methods = [name for name in modules if under(name, "mixbench.methods")]
    assert len(methods) > 20
    for name in methods:
        engine = sorted(m for m in reachable(graph, name) if under(m, ENGINE))
        assert not engine, f"{name} imports {engine}"
        text = modules[name].read_text()
        mentioned = [word for word in CONFIG_READING if word in text]
        assert not mentioned, (
            f"{modules[name].relative_to(REPO)} mentions {mentioned}: methods never read configs"
        )


def test_report_never_imports_the_engine(graph: Graph) -> None:
    report = [name for name in graph if under(name, "mixbench.report")]
    if not report:
        pytest.skip("mixbench/report/ does not exist (yet)")
    for name in report:
        engine = sorted(m for m in reachable(graph, name) if under(m, ENGINE))
        assert not engine, f"{name} imports {engine}"


def test_a_fresh_import_of_config_loads_no_registry_nor_engine() -> None:
    code = (
        "import sys, mixbench.config\n"
        f"layers = {(*REGISTRIES, ENGINE)!r}\n"
        "print(sorted(m for m in sys.modules if m.startswith(layers)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", f"import mixbench.config loaded {result.stdout.strip()}"
