"""The package layering of ekiden_trace, checked from the source (run by `make lint`).

Every import counts, including those inside functions and under TYPE_CHECKING:
a lower layer never imports a higher one, and no modules import each other in
a cycle.  Prints each violation and exits 1 if there is any.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "ekiden_trace"

SHARED = {"errors", "faults"}  # leaf modules every layer may use
LAYERS = {  # package -> the packages it may import (besides itself and SHARED)
    "binary": set(),
    "native": {"binary"},
    "plan": {"binary"},
    "target": {"binary", "native"},
    "state": {"binary", "native", "plan", "target"},
    "ops": {"binary", "native", "plan", "target", "state"},
}


def module_names(package: Path) -> dict[str, Path]:
    """Dotted module name -> file, packages by their __init__."""
    modules = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(package.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The ekiden_trace modules that module `name` imports anywhere in its body."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in modules else base)
    return {m for m in found if m in modules and m != name}


def layer_of(name: str) -> str:
    """'binary', 'plan', ... for a module in a layer; 'shared' or 'top' for the rest.
    The top-level package's own name does not matter: `pkg.target.x` is in 'target'."""
    parts = name.split(".")
    if len(parts) > 1 and parts[1] in LAYERS:
        return parts[1]
    if len(parts) == 2 and parts[1] in SHARED:
        return "shared"
    return "top"


def may_import(layer: str, other: str) -> bool:
    """Whether a module of `layer` may import one of `other`."""
    if layer == "top" or other == "shared":
        return True
    if layer == "shared" or other == "top":
        return False
    return other == layer or other in LAYERS[layer]


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """An import a layer may not make, one line each."""
    return [
        f"{name} ({layer_of(name)}) imports {target} ({layer_of(target)})"
        for name, targets in sorted(graph.items())
        for target in sorted(targets)
        if not may_import(layer_of(name), layer_of(target))
    ]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    groups.append(sorted(group))
    return groups


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the package's modules it imports."""
    modules = module_names(package)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def problems(package: Path = PACKAGE) -> list[str]:
    """Every layering violation and import cycle, one line each."""
    graph = import_graph(package)
    found = layer_violations(graph)
    found += ["import cycle: " + " -> ".join(group) for group in cycles(graph)]
    return found


if __name__ == "__main__":
    found = problems()
    for line in found:
        print(line)
    print(f"layering: {len(found)} problem(s) in {len(module_names(PACKAGE))} modules")
    sys.exit(1 if found else 0)
