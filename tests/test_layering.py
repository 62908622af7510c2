"""The package's structure: imports run one way, no import cycles, one home per class name.

Layers, ground to top: the ``tfrec`` core (config, features, layout, data, models, tasks,
training, evaluation), then ``pipelines``, then ``serving``, then the application
(``tfrec.app``: CLI, ``tfrec run``, the report), which alone may import all of them.
Imports inside functions count too.
"""

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("tfrec", "pipelines", "serving")


def layer(module: str) -> int:
    if module.startswith("tfrec.app"):
        return 3
    return {"tfrec": 0, "pipelines": 1, "serving": 2}[module.split(".")[0]]


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _runtime_nodes(tree: ast.AST):
    """Every node, except those under ``if TYPE_CHECKING:`` (type hints, never imported at run time)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            continue
        yield node
        yield from _runtime_nodes(node)


def imports(path: Path, known: set[str]) -> set[str]:
    """The project modules a file imports (anywhere in it, at run time), resolved to the longest known name."""
    names = set()
    for node in _runtime_nodes(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {f"{node.module}.{alias.name}" for alias in node.names} | {node.module}
    resolved = set()
    for name in names:
        parts = name.split(".")
        for end in range(len(parts), 0, -1):
            if ".".join(parts[:end]) in known:
                resolved.add(".".join(parts[:end]))
                break
    return resolved


def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: imports(path, known) - {name} for name, path in found.items()}


def test_imports_run_from_lower_layers_to_higher_ones_only():
    wrong = sorted(f"{name} imports {target}" for name, targets in graph().items() for target in targets
                   if layer(target) > layer(name))
    assert wrong == []


def test_no_import_cycles_between_modules():
    edges = graph()
    # A package's __init__ importing its own submodules is how packages expose their API.
    edges = {name: {t for t in targets if not t.startswith(name + ".")} for name, targets in edges.items()}
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == "open":
                cycles.append(" -> ".join(stack[stack.index(target):] + [target]))
            elif target not in state:
                visit(target, stack)
        stack.pop()
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [])
    assert cycles == []


def test_no_class_name_is_defined_twice():
    homes = defaultdict(list)
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                homes[node.name].append(name)
    assert {name: where for name, where in homes.items() if len(where) > 1} == {}


def test_run_folder_names_are_spelled_in_the_layout_module_only():
    from tfrec import layout

    # File names (a plain word such as "scann" or "catalogue" is also a module or a key elsewhere).
    names = {value for key, value in vars(layout).items() if key.isupper() and isinstance(value, str)
             and "." in value.strip(".")}
    found = []
    for module, path in modules().items():
        if module == "tfrec.layout":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and node.value in names:
                found.append(f"{module}:{node.lineno} {node.value!r}")
    assert found == []


def test_importing_the_library_leaves_the_environment_alone():
    import subprocess
    import sys

    # TensorFlow and threadpoolctl set a few variables of their own on import: take the snapshot after them.
    code = ("import os, tensorflow, apache_beam, keras, keras_hub, threadpoolctl; before = dict(os.environ); "
            "import tfrec, tfrec.models, tfrec.training.trainer, "
            "tfrec.evaluation.comparison, pipelines.preprocess, serving.export, serving.server; "
            "assert dict(os.environ) == before, set(os.environ.items()) ^ set(before.items())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_tfrs_and_tf_keras_come_with_the_dev_extra_only():
    from importlib import metadata

    requirements = metadata.requires("tfrec") or []
    for name in ("tensorflow-recommenders", "tf-keras"):
        found = [r for r in requirements if r.startswith(name)]
        assert found and all("extra == \"dev\"" in r for r in found), found


def test_the_server_front_ends_do_not_import_the_server_that_builds_them():
    # Type-checking imports count here: the front ends know the service, never the server.
    for front_end in ("rest", "grpc_service", "service"):
        path = ROOT / "serving" / "server" / f"{front_end}.py"
        imported = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
            elif isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
        assert not {name for name in imported if name.startswith("serving.server.app")}, front_end
        assert "serving.server.service" in imported or front_end == "service", front_end


MAX_FUNCTION_LINES = 80


def test_no_library_function_is_longer_than_80_lines():
    long = []
    for module, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{module}:{node.lineno} {node.name} ({lines} lines)")
    assert long == []
