"""The shape of the package: every import of memorylib points down its layers, and none runs in a
circle. Imports inside functions count as much as those at the top of a module.

A new module must be given its layer here; an import that points up (the library reaching for the
command line, a memory reaching for the task suite) fails with the offending arrow named.
"""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "memorylib"

LAYERS = [
    # 0. validation, files, statistics, a trained model's knobs: import no other module of memorylib
    {"checks", "files", "stats", "knobs"},
    # 1. the task suite (and the needle family, which streams it to any length)
    {"tasks", "needles"},
    # 2. the memories, one mechanism per file
    {"slot_memory", "surprise", "delta_rule", "ttt", "sidecar"},
    # 3. the models, the registry of names, the checkpoint format
    {"models", "models.transformer", "models.base", "models.slots", "models.learned", "models.full",
     "registry", "checkpoint"},
    # 4. training, evaluation and the experiments built on them
    {"training", "analysis", "streaming", "recall", "experiments", "continual", "chunk_study", "reproducible",
     "floors", "capstone"},
    # 5. what a reader sees: figures, widgets, the chapters' setup
    {"figures", "widgets", "book"},
    # 6. the command line
    {"cli", "__main__"},
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """``{module: {modules of memorylib it imports}}``, names relative to the package, from every
    import statement anywhere in the module (the package root, which holds only the version, is
    left out)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:                                  # from .x import y, from . import y
                    base = package.split(".") if package else []
                    module = ".".join(base[:len(base) - node.level + 1] + ([node.module] if node.module else []))
                elif (node.module or "").startswith("memorylib"):
                    module = node.module.removeprefix("memorylib").lstrip(".")
                else:
                    continue
                for alias in node.names:
                    target = f"{module}.{alias.name}".lstrip(".")
                    deps.add(target if target in modules else module)
            elif isinstance(node, ast.Import):
                deps |= {a.name.removeprefix("memorylib.") for a in node.names if a.name.startswith("memorylib.")}
        graph[name] = {d for d in deps if d and d != name and d in modules}
    graph.pop("", None)
    return graph


def test_every_module_has_a_layer():
    missing = sorted(set(imports()) - set(LAYER))
    assert not missing, f"give these modules a layer in tests/test_architecture.py: {missing}"


def test_every_import_points_down_the_layers():
    up = [f"{a} (layer {LAYER[a]}) imports {b} (layer {LAYER[b]})"
          for a, deps in imports().items() for b in deps if LAYER.get(b, -1) > LAYER.get(a, -1)]
    assert not up, "imports that point up:\n" + "\n".join(up)


def test_no_import_circle():
    graph = imports()
    state = {}

    def visit(node, path):
        state[node] = "open"
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == "open":
                pytest.fail("import circle: " + " -> ".join(path[path.index(dep):] + [dep]))
            if dep not in state:
                visit(dep, path + [dep])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


def test_the_graph_is_read_correctly():
    graph = imports()
    assert graph["registry"] >= {"models", "tasks", "checks"}
    assert graph["models.full"] >= {"models.learned", "sidecar", "ttt"}
    assert "training" in graph["reproducible"]            # an import inside a function counts
    assert graph["checks"] == set() and graph["cli"] >= {"checkpoint", "training"}
