"""The package's layers, checked from its own imports.

aivc is built in layers; a package may import packages of its own layer or
below, never one above, and the packages never import each other in a cycle.
Every import counts, those inside functions included, because a
function-level import is a dependency all the same.

Run ``python -m aivc._arch`` to print the import graph between packages and
any violation (exit status 1 when there is one).
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

__all__ = ["LAYERS", "Violation", "check_layers", "package_imports"]

#: Layers from the bottom up. The single modules at the package root
#: (``aivc._io``, ``aivc._settings``, ``aivc._version`` ...) form layer 0 under
#: the name ``_root``; the top-level namespace ``aivc`` itself (its
#: ``__init__``, which names every package lazily) sits above everything.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("_root",),
    ("data",),
    ("genes", "chem"),
    ("instruments", "sim"),
    ("cells", "tissues", "experiments", "imaging"),
    ("evaluate",),
    ("interfaces",),
    ("aivc",),
)

_ROOT = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Violation:
    """An import that breaks the layer order, or a cycle between packages."""

    kind: str  # "upward" or "cycle"
    message: str


def _package(module: str, root: Path) -> str:
    parts = module.split(".")
    if parts[0] != "aivc":
        return ""
    if len(parts) == 1:
        return "aivc"
    return parts[1] if (root / parts[1]).is_dir() else "_root"


def _module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path, root: Path) -> list[str]:
    """Every module ``path`` imports (absolute names; relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    name = _module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            found.append(module)
            # ``from aivc import cells`` imports the package ``aivc.cells``
            found += [f"{module}.{alias.name}" for alias in node.names]
    return found


def package_imports(root: Path | None = None) -> dict[str, dict[str, list[str]]]:
    """``{package: {imported package: [files]}}`` over every module of aivc."""
    root = root or _ROOT
    edges: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted(root.rglob("*.py")):
        source = _package(_module_name(path, root), root)
        for module in _imports(path, root):
            target = _package(module, root)
            if target and target != source:
                rel = str(path.relative_to(root.parent))
                if rel not in edges[source][target]:
                    edges[source][target].append(rel)
    return {s: dict(t) for s, t in edges.items()}


def _layer_of() -> dict[str, int]:
    return {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}


def _cycles(edges: dict[str, dict[str, list[str]]]) -> list[list[str]]:
    """Strongly connected components with more than one package (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, {}):
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

    nodes = set(edges) | {t for targets in edges.values() for t in targets}
    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return found


def check_layers(root: Path | None = None) -> list[Violation]:
    """Every upward import and every import cycle between aivc's packages."""
    edges = package_imports(root)
    layer = _layer_of()
    out: list[Violation] = []
    for source in sorted(edges):
        for target, files in sorted(edges[source].items()):
            for pkg in (source, target):
                if pkg not in layer:
                    msg = f"package {pkg!r} has no layer; add it to aivc._arch.LAYERS"
                    out.append(Violation("unplaced", msg))
            if source in layer and target in layer and layer[target] > layer[source]:
                msg = f"{source} (layer {layer[source]}) imports {target} (layer {layer[target]}) in {', '.join(files)}"
                out.append(Violation("upward", msg))
    for component in _cycles(edges):
        msg = "import cycle between packages: " + " <-> ".join(component)
        out.append(Violation("cycle", msg))
    return out


def main() -> int:
    """Print the package graph and the violations; 1 if there is any."""
    edges = package_imports()
    layer = _layer_of()
    for source in sorted(edges, key=lambda p: (layer.get(p, 99), p)):
        targets = ", ".join(sorted(edges[source], key=lambda p: (layer.get(p, 99), p)))
        sys.stdout.write(f"{source} -> {targets}\n")
    violations = check_layers()
    for v in violations:
        sys.stdout.write(f"VIOLATION ({v.kind}): {v.message}\n")
    if not violations:
        sys.stdout.write("layers respected; no import cycles between packages\n")
    return 1 if violations else 0


if __name__ == "__main__":
    raise SystemExit(main())
