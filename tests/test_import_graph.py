"""The package's layering, read from its imports with `ast` (module-level and function-level imports alike,
relative imports resolved): no import circle between its modules, and Ray imported only in
`promptkd_ray/orchestration/`."""

import ast
import subprocess
import sys
from pathlib import Path

import promptkd_ray

PACKAGE = Path(promptkd_ray.__file__).parent
ROOT = PACKAGE.name
REPO = PACKAGE.parent
# modules outside orchestration/ allowed to import Ray: none (the CLI entry point does not need to)
RAY_ALLOWED_OUTSIDE_ORCHESTRATION: set[str] = set()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_names(path: Path, module: str) -> set[str]:
    """Every dotted name `module` imports anywhere in its source, relative imports made absolute; for
    `from a import b` both `a` and `a.b` (the latter counts only where `a.b` is a module)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module
            names.add(source)
            names.update(f"{source}.{alias.name}" for alias in node.names)
    return names


def package_graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(module → the package's modules it imports, module → every name it imports)."""
    paths = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
    imports = {name: _imported_names(path, name) for name, path in paths.items()}
    edges = {name: {n for n in names if n in paths and n != name} for name, names in imports.items()}
    return edges, imports


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module, as `[a, b, …, a]`."""
    return [_cycle_in(component, edges) for component in circles(edges)]


def describe(edges: dict[str, set[str]]) -> list[str]:
    """Each circle as one line: a shortest cycle, and every module caught in the same circle."""
    return [
        " → ".join(_cycle_in(component, edges)) + f" (the circle holds {', '.join(sorted(component))})"
        for component in circles(edges)
    ]


def circles(edges: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one node (Tarjan)."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return components


def _cycle_in(component: set[str], edges: dict[str, set[str]]) -> list[str]:
    """A shortest path from the component's first module back to itself, inside the component."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(edges[v] & component):
                if w == start:
                    return paths[v] + [start]
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"{component} is not a cycle")


def ray_outside_orchestration(imports: dict[str, set[str]]) -> list[str]:
    orchestration = f"{ROOT}.orchestration"
    return sorted(
        module
        for module, names in imports.items()
        if any(n == "ray" or n.startswith("ray.") for n in names)
        and not (module == orchestration or module.startswith(orchestration + "."))
        and module not in RAY_ALLOWED_OUTSIDE_ORCHESTRATION
    )


def test_no_import_circle_between_the_packages_modules():
    edges, _ = package_graph()
    assert describe(edges) == []


def layer_graph(edges: dict[str, set[str]]) -> dict[str, set[str]]:
    """The same imports between the package's layers: each sub-package and each top-level module is one
    layer (`promptkd_ray.data.sources` → `promptkd_ray.data`); the package's own `__init__` is none."""

    def layer(module: str) -> str:
        return ".".join(module.split(".")[:2])

    layers: dict[str, set[str]] = {}
    for module, imported in edges.items():
        if module != ROOT:
            layers.setdefault(layer(module), set()).update(
                layer(m) for m in imported if m != ROOT and layer(m) != layer(module)
            )
    return layers


def test_no_import_circle_between_the_packages_layers():
    edges, _ = package_graph()
    assert describe(layer_graph(edges)) == []


def test_ray_is_imported_only_in_orchestration():
    _, imports = package_graph()
    assert ray_outside_orchestration(imports) == []


def test_the_checks_can_fail():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"f"}, "f": {"e"}, "g": set()}
    assert find_cycles(edges) == [["a", "b", "c", "a"], ["e", "f", "e"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []
    layers = layer_graph({f"{ROOT}.data.x": {f"{ROOT}.toy.y"}, f"{ROOT}.toy.y": {f"{ROOT}.data.z"}})
    assert find_cycles(layers) == [[f"{ROOT}.data", f"{ROOT}.toy", f"{ROOT}.data"]]
    imports = {
        f"{ROOT}.core.x": {"ray.data"},
        f"{ROOT}.orchestration.y": {"ray"},
        f"{ROOT}.orchestration": {"ray"},
        f"{ROOT}.cli.z": {"rayleigh", "ray"},
        f"{ROOT}.data.w": {"torch"},
    }
    assert ray_outside_orchestration(imports) == [f"{ROOT}.cli.z", f"{ROOT}.core.x"]


def test_the_graph_sees_the_whole_package_and_resolves_relative_imports():
    edges, imports = package_graph()
    assert len(edges) > 60 and f"{ROOT}.distill" in edges
    # a function-level import and a relative one are both seen
    assert f"{ROOT}.errors" in edges[f"{ROOT}.cli"]
    assert any(edges[m] for m in edges if m.startswith(f"{ROOT}.orchestration."))


def test_reading_and_checking_a_job_file_does_not_import_torch():
    code = (
        "import sys\n"
        "from promptkd_ray.config import load_job\n"
        "load_job('jobs/toy_b2n.yaml')\n"
        "print(sorted(m for m in ('torch', 'ray') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
