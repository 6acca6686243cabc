"""The layers point one way: no import cycle among pseudoseg's modules (module-level,
function-level and type-checking imports alike), no method module imports another, and the
engine imports nothing from the methods; functions stay short and take few arguments."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pseudoseg"


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules ``name`` imports anywhere in its file (the most specific module each import names)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        found.update(target for target in targets if target in modules and target != name)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (its modules in order, the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target not in state and (found := visit(target)):
                return found
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state and (found := visit(module)):
            return found
    return None


def _method_modules() -> set[str]:
    """Modules under methods/ that register a method (the rest is the methods' shared infrastructure)."""

    def registers(path: Path) -> bool:
        functions = [node for node in ast.parse(path.read_text(encoding="utf-8")).body if isinstance(node, ast.FunctionDef)]
        calls = [decorator.func for function in functions for decorator in function.decorator_list if isinstance(decorator, ast.Call)]
        return any(isinstance(call, ast.Name) and call.id == "register" for call in calls)

    return {name for name, path in _modules().items() if name.startswith("pseudoseg.methods.") and registers(path)}


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_cycle() -> None:
    graph = _graph()
    assert len(graph) > 40 and graph["pseudoseg.run_config"] >= {"pseudoseg.config", "pseudoseg.methods.registry"}
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_config_declares_sections_only() -> None:
    graph = _graph()
    assert not {target for target in graph["pseudoseg.config"] if target.startswith(("pseudoseg.methods", "pseudoseg.recipes", "pseudoseg.engine"))}


@pytest.mark.parametrize("module", sorted(_method_modules()))
def test_a_method_imports_no_other_method(module: str) -> None:
    others = _method_modules() - {module}
    assert not _graph()[module] & others


def test_the_engine_imports_nothing_from_the_methods() -> None:
    graph = _graph()
    assert len(_method_modules()) >= 8
    reached = {f"{source} -> {target}" for source, targets in graph.items() if source.startswith("pseudoseg.engine") for target in targets if target.startswith("pseudoseg.methods")}
    assert not reached


def _reads_of(path: Path, attribute: str) -> list[int]:
    """Lines of ``path`` that read ``<something>.<attribute>``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return sorted(node.lineno for node in ast.walk(tree) if isinstance(node, ast.Attribute) and node.attr == attribute)


@pytest.mark.parametrize("module", sorted(_method_modules() | {"pseudoseg.methods.stages", "pseudoseg.methods.label_store"}))
def test_methods_use_the_session_service_not_the_trainer(module: str) -> None:
    # fit, adopt, frozen_network, render_labels, dist, classes: pseudoseg/methods/session.py
    assert _reads_of(_modules()[module], "trainer") == []


def test_a_data_format_is_found_by_the_registry_not_by_name() -> None:
    # outside the registry and the formats themselves, code asks a format (or its geometry), never compares data.kind
    allowed = {"pseudoseg.data.registry", "pseudoseg.data.folders", "pseudoseg.data.volumes"}
    for name, path in _modules().items():
        if name in allowed:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Compare) and isinstance(node.left, ast.Attribute) and node.left.attr == "kind":
                words = [c.value for c in node.comparators if isinstance(c, ast.Constant)]
                assert not {"folders", "volumes"} & set(words), f"{name}:{node.lineno} compares .kind with a format's name"


def _functions() -> list[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    """Every function and method of the package, named ``module:line name``."""
    found = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                found.append((f"{name}:{node.lineno} {node.name}", node))
    return found


def _is_command(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """A command-line command: its parameters are the command's options, declared for typer, never
    passed by a caller (``@app.command()``, ``@data_app.command("check")``, ...)."""
    return any(isinstance(d, ast.Call) and isinstance(d.func, ast.Attribute) and d.func.attr in ("command", "callback") for d in node.decorator_list)


def _arguments(node: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    args = node.args
    names = [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)]
    return [n for n in names if n not in ("self", "cls")]


def test_the_argument_counter_counts_keyword_options() -> None:
    tree = ast.parse("def f(self, a, b, *, c=1, d=2, e=3, f=4, g=5): ...\n@app.command()\ndef cmd(a, b, c, d, e, f, g): ...")
    first, command = tree.body
    assert len(_arguments(first)) == 7 and not _is_command(first) and _is_command(command)


def test_no_function_takes_more_than_six_arguments() -> None:
    too_many = [f"{where} ({len(_arguments(node))})" for where, node in _functions() if len(_arguments(node)) > 6 and not _is_command(node)]
    assert too_many == []


def test_no_function_is_longer_than_sixty_lines() -> None:
    # generators aside: Python generators, and the synthetic data generators (pseudoseg.synth),
    # whose image recipes read as one drawing each and whose draws the data sets' bytes depend on
    def is_generator(where: str, node: ast.AST) -> bool:
        return where.startswith("pseudoseg.synth") or any(isinstance(inner, (ast.Yield, ast.YieldFrom)) for inner in ast.walk(node))

    too_long = [f"{where} ({node.end_lineno - node.lineno + 1})" for where, node in _functions() if node.end_lineno - node.lineno + 1 > 60 and not is_generator(where, node)]
    assert too_long == []
