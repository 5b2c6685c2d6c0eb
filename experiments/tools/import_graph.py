"""The import graph of `dsmath_jax`: circles and upward edges between its rooms (DESIGN.md, "The house").

    python experiments/tools/import_graph.py            # report; exit status 1 when anything is found
    python experiments/tools/import_graph.py --edges    # also list every edge

Nodes are the modules of the package (one per ``.py`` file; a package is its ``__init__``). An edge
``a -> b`` is any ``import`` / ``from ... import`` statement in ``a`` that names ``b``, at any level: module
top, inside a function, under ``if TYPE_CHECKING:``, and ``importlib.import_module("dsmath_jax....")`` with a
literal name. ``from pkg import name`` is an edge to ``pkg.name`` when that is a module, else to ``pkg``.
Importing ``pkg.sub`` also runs ``pkg/__init__.py``; that implicit edge is not counted (it would put every
package whose ``__init__`` re-exports its modules in a circle with them).

A circle is a strongly connected component of more than one module. An upward edge goes from a room to a
room of a higher level in :data:`ROOM_LEVELS` (rooms of one level may import each other; the circles
check catches loops between them). The source is only parsed (``ast``), never imported.
"""

from __future__ import annotations

import argparse
import ast
import pathlib
import sys
from collections.abc import Iterable, Mapping

PACKAGE = "dsmath_jax"
PACKAGE_DIR = pathlib.Path(__file__).resolve().parents[2] / PACKAGE

# The rooms from the bottom up (DESIGN.md, "The house" and "Data flows one way"): a room may import rooms of
# its own level or lower ones. `""` is the package's own `__init__`; `config` holds every command's config schema
# and the loader (it reads model/, parallel/ and data/ only; rl/, evals/ and train/ read the choices it names);
# `plan` builds every command's executables for a TPU topology (it reads rl/, train/, generate/), so it sits with
# the entry points.
ROOM_LEVELS: tuple[tuple[str, ...], ...] = (
    ("", "model", "parallel"),
    ("data",),
    ("mining", "train", "generate", "config"),
    ("evals",),
    ("rl",),
    ("commands", "cli", "quickstart", "analysis", "plan"),
)


def module_files(package_dir: pathlib.Path = PACKAGE_DIR) -> dict[str, pathlib.Path]:
    """``{dotted module name: file}`` of every module under ``package_dir``."""
    out = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _resolve_from(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module named by a (maybe relative) ``from X import ...``."""
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _target(name: str, modules: Mapping[str, pathlib.Path]) -> str | None:
    """The longest prefix of ``name`` that is one of our modules (``a.b.func`` -> ``a.b``)."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def imports_of(module: str, path: pathlib.Path, modules: Mapping[str, pathlib.Path]) -> set[str]:
    """The modules of ours that ``module`` (at ``path``) imports, at any level."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    found: set[str | None] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(_target(alias.name, modules) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve_from(module, is_package, node)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in modules else _target(base, modules))
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module"
                   or isinstance(node.func, ast.Name) and node.func.id == "import_module")):
            found.add(_target(node.args[0].value, modules))
    found.discard(None)
    found.discard(module)
    return {m for m in found if m is not None}


def import_graph(package_dir: pathlib.Path = PACKAGE_DIR) -> dict[str, set[str]]:
    """``{module: modules it imports}`` over the whole package."""
    modules = module_files(package_dir)
    return {m: imports_of(m, p, modules) for m, p in modules.items()}


def room(module: str) -> str:
    """The room of a module: its first component below the package (``dsmath_jax.rl.loop`` -> ``rl``)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def level(room_name: str) -> int:
    for i, rooms in enumerate(ROOM_LEVELS):
        if room_name in rooms:
            return i
    raise KeyError(f"room {room_name!r} is not placed in ROOM_LEVELS; add it to {__file__}")


def circles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative), each
    sorted, largest first."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in graph:
                    continue
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return sorted(out, key=lambda c: (-len(c), c))


def upward_edges(graph: Mapping[str, Iterable[str]]) -> list[tuple[str, str]]:
    """Edges ``(a, b)`` whose target room is of a higher level than the source's, sorted."""
    return sorted((a, b) for a, targets in graph.items() for b in targets if level(room(b)) > level(room(a)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--edges", action="store_true", help="also print every edge")
    args = parser.parse_args(argv)
    graph = import_graph()
    if args.edges:
        for a in sorted(graph):
            for b in sorted(graph[a]):
                print(f"edge {a} -> {b}")
    found = circles(graph)
    up = upward_edges(graph)
    print(f"{len(graph)} modules, {sum(len(t) for t in graph.values())} edges")
    print(f"{len(found)} circle(s)")
    for component in found:
        print(f"  circle ({len(component)}): {' '.join(component)}")
    print(f"{len(up)} upward edge(s)")
    for a, b in up:
        print(f"  up {room(a) or PACKAGE} -> {room(b)}: {a} -> {b}")
    return 1 if found or up else 0


if __name__ == "__main__":
    sys.exit(main())
