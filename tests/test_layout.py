"""The package's shape: no import circle, and no module outside the model files reaching into
a model's attributes (they read a network through ``structure``)."""
import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).parent.parent / "src" / "twinsnn"


def imports() -> dict[str, set[str]]:
    """``{module: modules of the package it imports}``, function-level imports included."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")[:len(package.split(".")) - node.level + 1] \
                    if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                for alias in node.names:
                    full = f"{target}.{alias.name}"
                    graph[name] |= {full} if full in modules else \
                        ({target} if target in modules else set())
    return graph


def test_no_import_circle():
    graph, done, path = imports(), set(), []

    def visit(name):
        assert name not in path, f"import circle: {' -> '.join(path[path.index(name):] + [name])}"
        if name in done:
            return
        path.append(name)
        for other in graph[name]:
            if other != "twinsnn":  # the package itself is loaded before any of its modules
                visit(other)
        path.pop()
        done.add(name)

    for name in graph:
        visit(name)


def test_only_model_files_name_a_models_parts():
    # (a file path's .stem is not a model's)
    attribute = re.compile(r"(?<!path)\.(convs|fcs|stages|stem|dropouts|pools)\b|\bmodel\.out\b")
    for path in PACKAGE.rglob("*.py"):
        if path.parent.name != "models":
            assert not attribute.search(path.read_text()), path
