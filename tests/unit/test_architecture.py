"""The module boundaries STYLE.md promises, read from the source's AST."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import vramwatch

PACKAGE = Path(vramwatch.__file__).parent

# I/O, clocks and the outside world: the policy is a pure function of its arguments.
IO_MODULES = {
    "vramwatch.sources",
    "vramwatch.actuators",
    "vramwatch.daemon",
    "vramwatch.acting",
    "os",
    "subprocess",
    "socket",
    "time",
    "datetime",
    "pynvml",
    "jeepney",
    "psutil",
    "importlib",
}
# Never reachable from the policy, even through another vramwatch module.
NEVER_REACHABLE = {
    "vramwatch.sources",
    "vramwatch.actuators",
    "vramwatch.daemon",
    "vramwatch.acting",
    "subprocess",
    "socket",
    "pynvml",
    "jeepney",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    return imports_of(path.read_text(), module_name(path), path.name == "__init__.py")


def imports_of(text: str, module: str, is_package: bool = False) -> set[str]:
    """Every module a file imports, absolute, including "from pkg import submodule"."""
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call) and getattr(node.func, "id", "") == "__import__":
            found.add("__import__")
    return found


def is_under(name: str, roots: set[str]) -> set[str]:
    return {root for root in roots if name == root or name.startswith(root + ".")}


SOURCES = sorted(PACKAGE.rglob("*.py"))
MODULES = {module_name(p): p for p in SOURCES}


def test_the_package_has_the_modules_the_rules_talk_about() -> None:
    expected = {"vramwatch.policy", "vramwatch.sources.nvml", "vramwatch.actuators.systemd"}
    assert expected <= set(MODULES)


POLICY = sorted(name for name in MODULES if is_under(name, {"vramwatch.policy"}))


def test_the_policy_is_a_package_of_its_concerns() -> None:
    expected = [
        "vramwatch.policy",
        "vramwatch.policy.health",
        "vramwatch.policy.history",
        "vramwatch.policy.inflight",
        "vramwatch.policy.readings",
    ]
    assert expected == POLICY


@pytest.mark.parametrize("module", POLICY)
def test_policy_imports_no_io_module(module: str) -> None:
    found = imports(MODULES[module])

    actual = sorted(name for name in found if is_under(name, IO_MODULES) or name == "__import__")

    assert [] == actual


def test_policy_reaches_no_io_module_through_other_vramwatch_modules() -> None:
    """config.py may read files; but nothing the policy pulls in may reach NVML or D-Bus."""
    seen: set[str] = set()
    todo = ["vramwatch.policy"]
    reached: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for imported in imports(MODULES[name]):
            reached.add(imported)
            if imported in MODULES:
                todo.append(imported)

    actual = sorted(name for name in reached if is_under(name, NEVER_REACHABLE))

    assert [] == actual


@pytest.mark.parametrize("path", SOURCES, ids=[module_name(p) for p in SOURCES])
def test_pynvml_is_imported_only_by_sources_nvml(path: Path) -> None:
    found = {name for name in imports(path) if is_under(name, {"pynvml"})}

    expected = {"pynvml"} if module_name(path) == "vramwatch.sources.nvml" else set()
    assert expected == found


def test_the_checker_resolves_relative_and_dynamic_imports() -> None:
    """A rule that cannot see "from ..systemd import x" would pass for the wrong reason."""
    text = (
        "from ..systemd import Client\nfrom . import procfs\nimport os.path\n__import__('time')\n"
    )

    actual = imports_of(text, "vramwatch.sources.nvml")

    assert {
        "vramwatch.systemd",
        "vramwatch.systemd.Client",
        "vramwatch.sources",
        "vramwatch.sources.procfs",
        "os.path",
        "__import__",
    } == actual
