"""The shape of the house (docs/architecture.md): no import circle, backend code in one package.

These read the source with `ast`; nothing is imported.
"""

import ast
import pathlib

import pytest

pytestmark = pytest.mark.backend_neutral

ROOT = pathlib.Path(__file__).resolve().parents[1]
LIBRARY = ROOT / "keras_lct"
BACKEND_PACKAGE = LIBRARY / "backend"
FRAMEWORKS = ("torch", "tensorflow", "jax", "jaxlib")

# Framework imports outside keras_lct/backend/ that read a framework's *files or data*, on any
# backend, rather than run the step on one: each with the reason.
FRAMEWORK_IMPORTS_ALLOWED = {
    "keras_lct/vae/weights.py": "reads diffusers' PyTorch checkpoint files (.bin / .pt) with torch.load",
    "keras_lct/metrics/feature_networks.py": "FID's Inception network is torch-fidelity's, on every backend",
    "keras_lct/data/checks.py": "checks the batches of a tf.data.Dataset a user passes, inside its own pipeline",
}


def module_name(path):
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(LIBRARY.rglob("*.py"))}


def top_level_imports(path):
    """The keras_lct modules `path` imports at import time (module level, incl. `if` blocks)."""
    tree = ast.parse(path.read_text())
    imported = set()
    for node in tree.body:
        for inner in ast.walk(node) if not isinstance(node, (ast.FunctionDef, ast.ClassDef)) else ():
            if isinstance(inner, ast.Import):
                imported.update(alias.name for alias in inner.names)
            elif isinstance(inner, ast.ImportFrom) and inner.module and inner.level == 0:
                for alias in inner.names:
                    submodule = f"{inner.module}.{alias.name}"
                    imported.add(submodule if submodule in MODULES else inner.module)
    return {name for name in imported if name in MODULES}


def function_level_imports(path):
    """(line, module) of every import inside a function or class body of `path`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            for inner in ast.walk(node):
                if isinstance(inner, ast.Import):
                    found += [(inner.lineno, alias.name) for alias in inner.names]
                elif isinstance(inner, ast.ImportFrom) and inner.module:
                    found.append((inner.lineno, inner.module))
    return found


def find_cycle(graph):
    """One import cycle of `graph` as a list of modules, or None."""
    state = {}

    def visit(module, stack):
        state[module] = "open"
        stack.append(module)
        for imported in sorted(graph[module]):
            if state.get(imported) == "open":
                return stack[stack.index(imported):] + [imported]
            if imported not in state:
                cycle = visit(imported, stack)
                if cycle:
                    return cycle
        stack.pop()
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state:
            cycle = visit(module, [])
            if cycle:
                return cycle
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_circle_in_the_library():
    graph = {name: top_level_imports(path) - {name} for name, path in MODULES.items()}
    assert find_cycle(graph) is None, f"import circle: {' -> '.join(find_cycle(graph))}"


def test_library_modules_import_each_other_at_the_top():
    inline = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in MODULES.values()
        for line, module in function_level_imports(path)
        if module.split(".")[0] == "keras_lct"
    ]
    assert not inline, "imports inside functions (move them to the top):\n" + "\n".join(inline)


def backend_decisions(path):
    """Lines of `path` that compare `keras.backend.backend()` with something: a backend branch."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Compare):
            for operand in [node.left, *node.comparators]:
                if (
                    isinstance(operand, ast.Call)
                    and isinstance(operand.func, ast.Attribute)
                    and operand.func.attr == "backend"
                    and isinstance(operand.func.value, ast.Attribute)
                    and operand.func.value.attr == "backend"
                ):
                    lines.append(node.lineno)
    return lines


def test_the_backend_decision_finder_sees_a_branch(tmp_path):
    source = tmp_path / "example.py"
    source.write_text('import keras\nif keras.backend.backend() == "torch":\n    pass\nprint(keras.backend.backend())\n')
    assert backend_decisions(source) == [2]


def test_no_backend_branch_outside_the_backend_package():
    paths = [p for p in LIBRARY.rglob("*.py") if BACKEND_PACKAGE not in p.parents] + sorted((ROOT / "recipes").glob("*.py"))
    branches = [f"{path.relative_to(ROOT)}:{line}" for path in paths for line in backend_decisions(path)]
    assert not branches, "backend branches outside keras_lct/backend/:\n" + "\n".join(branches)


def test_frameworks_are_imported_only_by_the_backend_package_or_for_their_files():
    found = {}
    for path in LIBRARY.rglob("*.py"):
        if BACKEND_PACKAGE in path.parents:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            if any(name.split(".")[0] in FRAMEWORKS for name in names):
                found.setdefault(str(path.relative_to(ROOT)), []).append(node.lineno)
    unexpected = {path: lines for path, lines in found.items() if path not in FRAMEWORK_IMPORTS_ALLOWED}
    assert not unexpected, f"framework imports outside keras_lct/backend/: {unexpected}"
    stale = set(FRAMEWORK_IMPORTS_ALLOWED) - set(found)
    assert not stale, f"allowed but no longer importing a framework (drop them from the list): {stale}"
