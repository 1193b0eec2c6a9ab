"""The package's layout holds: imports run down the layers `peftkit`'s docstring lists, with no circles, and no module
takes a private name from another.

Every import counts, also those inside functions (made lazy for start-up time): laziness changes when a module
loads, not which one depends on which.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import peftkit

ROOT = Path(peftkit.__file__).parent


def _layers() -> dict[str, int]:
    """Top-level module or package name -> layer number, read from the package docstring's layout table."""
    table = peftkit.__doc__.split("Layout", 1)[1]
    layers = {}
    for number, names in re.findall(r"^\s+(\d+)\s+([a-z_ ]+?)\s{2,}", table, flags=re.M):
        for name in names.split():
            layers[name] = int(number)
    return layers


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _imports(name: str) -> list[tuple[str, list[str], int]]:
    """(imported peftkit module, names taken from it, line) for every import in module `name`."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names if a.name.startswith("peftkit")]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + [base]
                ).strip(".")
            if not base.startswith("peftkit"):
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in MODULES:  # `from peftkit import models`: the module itself
                    found.append((sub, [], node.lineno))
                else:
                    found.append((base, [alias.name], node.lineno))
    return found


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "peftkit"


def test_the_docstring_names_every_top_level_module_and_package():
    tops = {_top(m) for m in MODULES} - {"peftkit", "__main__"}
    assert tops == set(_layers()), "peftkit/__init__.py's layout table and the package's contents differ"


def test_imports_run_down_the_layers():
    layers = _layers()
    layers["peftkit"] = (
        max(layers.values()) + 1
    )  # the package's own API (`peftkit.load`...) sits above everything

    def layer(module: str) -> int:
        return layers.get(_top(module), layers["peftkit"])

    upward = [
        f"{MODULES[name].relative_to(ROOT.parent)}:{line} imports {target} (layer {layer(target)}) from layer "
        f"{layer(name)}"
        for name in MODULES
        for target, _, line in _imports(name)
        if layer(target) > layer(name)
    ]
    assert not upward, "\n".join(upward)


def test_no_import_circles():
    graph = {name: {t for t, _, _ in _imports(name) if t in MODULES and t != name} for name in MODULES}
    circles, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                circles.append(" -> ".join(path[path.index(nxt) :] + [nxt]))
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    # A package's __init__ importing its own submodules is how a package presents its API, not a circle.
    real = [c for c in circles if not all(part.startswith(c.split(" -> ")[0]) for part in c.split(" -> "))]
    assert not real, "\n".join(real)


def test_no_module_takes_a_private_name_from_another():
    private = [
        f"{MODULES[name].relative_to(ROOT.parent)}:{line} takes {n} from {target}"
        for name in MODULES
        for target, names, line in _imports(name)
        for n in names
        if n.startswith("_") and not n.startswith("__") and target.rsplit(".", 1)[0] != name.rsplit(".", 1)[0]
    ]
    assert not private, "\n".join(private)
