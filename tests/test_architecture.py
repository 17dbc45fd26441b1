"""The package's shape: no import circles, no reaching into another package's private
modules, no module too long to read. Imports inside functions count too: a lazy import
hides a circle from Python, not from a reader."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "agent"
MAX_LINES = 500


def _name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _imports(name: str) -> Iterator[str]:
    """The agent modules `name` imports: `from pkg import sub` names the submodule."""
    tree = ast.parse(MODULES[name].read_text(), filename=str(MODULES[name]))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            targets = [
                f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module
                for a in node.names
            ]
        else:
            continue
        yield from (t for t in targets if t in MODULES and t != name)


GRAPH = {name: sorted(set(_imports(name))) for name in MODULES}


def _owner(name: str) -> str:
    """The package a module belongs to (a package belongs to itself)."""
    return name if _is_package(name) else name.rpartition(".")[0]


def _private_to(name: str) -> str | None:
    """The package whose private module `name` is, or None for a public one."""
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part.startswith("_") and part != "__main__":
            return ".".join(parts[:i])
    return None


def _cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """One import circle, as the path around it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in graph.get(node, ()):
            if state.get(dep) == 1:
                return [*path[path.index(dep) :], dep]
            if dep not in state and (found := visit(dep)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in graph:
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_walk_sees_the_package() -> None:
    assert "agent.runtime" in GRAPH
    assert "agent.config" in GRAPH["agent.runtime._agent"]


def test_no_module_imports_itself_back() -> None:
    # A package's __init__ importing its own modules is the one allowed direction.
    graph = {
        name: [d for d in deps if not (_is_package(d) and name.startswith(d + "."))]
        for name, deps in GRAPH.items()
    }
    assert _cycle(graph) is None


def test_no_package_circle() -> None:
    """Between the agent's top-level parts (agent.config, agent.modbus, agent.outbox, ...)."""

    def part(name: str) -> str:
        return ".".join(name.split(".")[:2])

    graph: dict[str, set[str]] = {}
    for name, deps in GRAPH.items():
        graph.setdefault(part(name), set()).update(
            part(d) for d in deps if part(d) != part(name) and part(d) != "agent"
        )
    assert _cycle({k: sorted(v) for k, v in graph.items()}) is None


def test_the_cycle_finder_finds_a_circle() -> None:
    assert _cycle({"a": ["b"], "b": ["c"], "c": ["a"]}) == ["a", "b", "c", "a"]
    assert _cycle({"a": ["b"], "b": ["c"], "c": []}) is None


def test_no_import_of_another_package_private_module() -> None:
    leaks = []
    for name, deps in GRAPH.items():
        for dep in deps:
            owner = _private_to(dep)
            if owner is not None and not (_owner(name) + ".").startswith(owner + "."):
                leaks.append(f"{name} imports {dep}")
    assert leaks == []


def test_every_module_is_short_enough_to_read() -> None:
    lengths = {name: len(path.read_text().splitlines()) for name, path in MODULES.items()}
    assert max(lengths.values()) > 100  # the walk read the files
    assert {name: n for name, n in lengths.items() if n > MAX_LINES} == {}


def test_the_config_loads_without_the_modbus_library() -> None:
    """Tools that only read the config (check, status, fleet) must not pay for pymodbus."""
    code = "import sys, agent.config; print(sorted(m for m in sys.modules if 'pymodbus' in m))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_node_without_opcua_or_sparkplug_loads_neither_library() -> None:
    """asyncua and protobuf cost about 20 MB of resident memory: only nodes with OPC UA
    devices or Sparkplug enabled may pay for them."""
    code = (
        "import sys, agent.cli, agent.runtime; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'asyncua', 'google'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
