"""The import rules of docs/ARCHITECTURE.md, read from the code (every import, also inside functions and under
TYPE_CHECKING): no circles between modules, and no arrow a layer must never have."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "skill1"


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graph() -> dict[str, set[str]]:
    modules = {_module(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for name in names:
                while name and name not in modules:
                    name = name.rpartition(".")[0]
                # a package's face (`__init__`) handing its members' names on is no arrow back into it
                inside = path.name == "__init__.py" and name.startswith(mod + ".")
                if name and name != mod and name.startswith("skill1.") and not inside:
                    graph[mod].add(name)
    return graph


GRAPH = _graph()


def _cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    return out


def test_no_import_circles():
    assert _cycles() == []


NEVER = [
    ("skill1.algo", ("skill1.library", "skill1.learner", "skill1.rollout", "skill1.loop", "skill1.runtime"),
     "the algorithm is pure"),
    ("skill1.learner", ("skill1.rollout", "skill1.loop", "skill1.runtime"), "the learner knows no sampler"),
    ("skill1.rollout", ("skill1.learner", "skill1.loop", "skill1.runtime"), "samplers know only the wire format"),
    ("skill1.agent", ("skill1.rollout", "skill1.loop", "skill1.runtime", "skill1.learner"), "an episode knows no actors"),
    ("skill1.models", ("skill1.tiny_policy", "skill1.learner", "skill1.rollout"), "models only build and load models"),
    ("skill1.weights", ("skill1.runtime", "skill1.loop", "skill1.learner", "skill1.rollout"), "the wire is shared"),
    ("skill1.library", ("skill1.rollout", "skill1.loop", "skill1.learner"), "storage knows no rollout"),
    ("skill1.types", ("skill1.",), "the floor imports nothing of ours"),
]


@pytest.mark.parametrize("layer, forbidden, why", NEVER, ids=[n[0] for n in NEVER])
def test_a_layer_never_imports_upward(layer, forbidden, why):
    bad = sorted(f"{m} -> {t}" for m, targets in GRAPH.items() if m == layer or m.startswith(layer + ".")
                 for t in targets if t.startswith(forbidden) and not (t == layer or t.startswith(layer + ".")))
    assert bad == [], why
