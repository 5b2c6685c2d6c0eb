"""The import graph of the package (experiments/tools/import_graph.py): data flows one way (DESIGN.md)."""

import importlib.util
import pathlib
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
LOWER_ROOMS = ("model", "parallel", "data")


def _tool():
    spec = importlib.util.spec_from_file_location("import_graph", REPO / "experiments" / "tools" / "import_graph.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("import_graph", module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tool():
    return _tool()


@pytest.fixture(scope="module")
def graph(tool):
    return tool.import_graph()


def test_the_tool_finds_every_kind_of_import_and_the_circles_of_a_hand_made_package(tool, tmp_path):
    pkg = tmp_path / "pkg"
    for folder in ("low", "high"):
        (pkg / folder).mkdir(parents=True)
        (pkg / folder / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "low" / "a.py").write_text("from pkg.low import b\n")                       # a -> b (a module)
    (pkg / "low" / "b.py").write_text("def f():\n    from .c import g\n    return g\n")  # relative, in a function
    (pkg / "low" / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                      "    import pkg.low.a\n")                        # c -> a: a circle a, b, c
    (pkg / "low" / "d.py").write_text("import importlib\nimportlib.import_module('pkg.high.e')\n"
                                      "from pkg.low.c import g\n")                      # d -> high.e, d -> c
    (pkg / "high" / "e.py").write_text("import os\nimport pkg.low.d as d\nfrom pkg import low\n")
    graph = tool.import_graph(pkg)
    assert graph == {"pkg": set(), "pkg.low": set(), "pkg.high": set(),
                     "pkg.low.a": {"pkg.low.b"}, "pkg.low.b": {"pkg.low.c"}, "pkg.low.c": {"pkg.low.a"},
                     "pkg.low.d": {"pkg.high.e", "pkg.low.c"}, "pkg.high.e": {"pkg.low.d", "pkg.low"}}
    assert tool.circles(graph) == [["pkg.low.a", "pkg.low.b", "pkg.low.c"], ["pkg.high.e", "pkg.low.d"]]
    # Tarjan against the definition: two modules share a circle iff each reaches the other.
    def reach(start):
        seen, todo = set(), [start]
        while todo:
            for nxt in graph[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen
    reaches = {m: reach(m) for m in graph}
    pairs = {(a, b) for a in graph for b in graph if a != b and b in reaches[a] and a in reaches[b]}
    assert pairs == {(a, b) for c in tool.circles(graph) for a in c for b in c if a != b}


def test_every_room_of_the_package_has_a_level(tool, graph):
    rooms = {tool.room(m) for m in graph}
    assert {"model", "parallel", "data", "mining", "train", "generate", "evals", "rl", "commands"} <= rooms
    for r in rooms:
        tool.level(r)  # raises for a room not placed in ROOM_LEVELS
    assert tool.level("model") == tool.level("parallel") < tool.level("data") < tool.level("train") \
        == tool.level("mining") == tool.level("generate") < tool.level("evals") < tool.level("rl") \
        < tool.level("commands")


def test_lower_rooms_import_nothing_above_them_and_sit_in_no_circle(tool, graph):
    up = [(a, b) for a, b in tool.upward_edges(graph) if tool.room(a) in LOWER_ROOMS]
    assert up == []
    lower = [c for c in tool.circles(graph) if any(tool.room(m) in LOWER_ROOMS for m in c)]
    assert lower == []
    for module, targets in graph.items():  # model/ and parallel/ import nothing of ours but each other
        if tool.room(module) in ("model", "parallel"):
            assert {tool.room(t) for t in targets} <= {"model", "parallel"}, module


def test_the_whole_package_has_no_circles_and_no_upward_edges(tool, graph):
    found, up = tool.circles(graph), tool.upward_edges(graph)
    print(f"circles: {found}\nupward edges: {up}")
    assert found == []
    assert up == []
