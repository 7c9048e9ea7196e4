"""The package tree is the import tree: each layer imports only the layers below it, and no cycles."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# lowest first; a module may import its own layer and any layer listed before it
LAYERS = ["autoprune.errors", "autoprune.runs", "autoprune.registry", "autoprune.config", "autoprune.models",
          "autoprune.core", "autoprune.train", "autoprune.envs", "autoprune.agents", "autoprune.deploy",
          "autoprune.workspace", "autoprune.experiments", "autoprune.cli", "autoprune"]


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[0] in ("agents", "envs"):
        parts = ["autoprune"] + parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """Every autoprune import of every module, lazy (inside functions) ones included."""
    graph: dict[str, set[str]] = {}
    for folder in ("autoprune", "agents", "envs"):
        for path in (ROOT / folder).rglob("*.py"):
            mod, found = _module(path), set()
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("autoprune"):
                    found.add(node.module)
                elif isinstance(node, ast.Import):
                    found.update(a.name for a in node.names if a.name.startswith("autoprune"))
            graph[mod] = found
    return graph


def _layer(module: str) -> int:
    return max(i for i, name in enumerate(LAYERS) if module == name or module.startswith(name + "."))


def test_no_module_imports_a_higher_layer():
    upward = [(mod, dep) for mod, deps in _imports().items() for dep in deps
              if mod != "autoprune" and not mod.endswith("__main__") and _layer(dep) > _layer(mod)]
    assert upward == []


def test_no_import_cycles():
    graph = _imports()
    known = set(graph)

    def resolve(dep: str) -> str | None:  # "autoprune.core.io" -> the module itself, else its package
        while dep and dep not in known:
            dep = dep.rpartition(".")[0]
        return dep or None

    edges = {m: {r for d in deps if (r := resolve(d)) and r != m and r != "autoprune"} for m, deps in graph.items()}
    # packages re-exporting their own modules are not cycles of substance: ignore a package's edges to its children
    edges = {m: {d for d in deps if not d.startswith(m + ".")} for m, deps in edges.items()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert cycles == []
