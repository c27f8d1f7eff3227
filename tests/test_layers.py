"""The package's import picture stays one-way (../shared/STYLE.md "Layers and seams"): read from the source's
own import statements, no module imports one of a higher layer, there is no import circle, and a
function-local ``ltcls`` import carries a comment saying why it must be lazy."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "ltcls"

#: Layer of each module (the longest matching prefix wins); an import must not point to a higher layer.
LAYERS: dict[str, int] = {
    "ltcls": 0,
    "ltcls.registry": 0,
    "ltcls.io": 0,
    "ltcls.registries": 1,
    "ltcls.config": 2,
    "ltcls.recipes": 2,
    "ltcls.compare": 2,
    "ltcls.metrics": 2,
    "ltcls.results": 2,
    "ltcls.errors": 2,
    "ltcls.rundir": 2,
    "ltcls.launch": 6,
    "ltcls.data": 3,
    "ltcls.models": 3,
    "ltcls.losses": 3,
    "ltcls.reporting": 4,
    "ltcls.export": 4,
    "ltcls.predict": 4,
    "ltcls.engine": 5,
    "ltcls.stage2": 6,
    "ltcls.detection": 7,
    "ltcls.plugins": 8,
    "ltcls.cli": 9,
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> int:
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS[best]


def _imports(path: Path) -> list[tuple[str, int, bool]]:
    """``(imported ltcls module, line, at module level)`` of every ``ltcls`` import in a file."""
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    out = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            if name == "ltcls" or name.startswith("ltcls."):
                out.append((name, node.lineno, id(node) in top))
    return out


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        for name, _, _ in _imports(path):
            if name in modules:  # "from pkg import submodule" names the submodule; "from pkg import func" does not
                graph[module].add(name)
    return graph


def test_no_import_points_to_a_higher_layer():
    bad = [f"{m} ({_layer(m)}) -> {d} ({_layer(d)})" for m, deps in _graph().items() for d in deps
           if _layer(d) > _layer(m)]
    assert not bad, "imports pointing up the layers:\n" + "\n".join(sorted(bad))


def test_lower_layers_never_import_detection_or_the_command_line():
    lower = ("ltcls.engine", "ltcls.data", "ltcls.models", "ltcls.losses", "ltcls.stage2", "ltcls.config",
             "ltcls.registries")
    bad = [f"{m} -> {d}" for m, deps in _graph().items() for d in deps
           if m.startswith(lower) and d.startswith(("ltcls.detection", "ltcls.cli", "ltcls.plugins"))]
    assert not bad, bad


def test_no_import_cycles():
    graph = _graph()
    # A package's __init__ importing its own submodules is no cycle (the submodule does not import the package).
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_function_local_ltcls_imports_say_why():
    bad = []
    for path in PACKAGE.rglob("*.py"):
        lines = path.read_text().splitlines()
        for name, line, at_top in _imports(path):
            if not at_top and "lazy" not in lines[line - 1]:
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {name} inside a function")
    assert not bad, "\n".join(sorted(set(bad)))


@pytest.mark.parametrize("argv", [["--help"], ["--stage2", "bogus"]])
def test_help_and_argument_errors_do_not_import_torch(argv):
    code = ("import sys\nfrom ltcls.cli.train import train_main\ntry:\n    train_main(sys.argv[1:])\n"
            "except SystemExit:\n    pass\nassert 'torch' not in sys.modules, 'torch was imported'\n")
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("argv", [["--help"], ["--methods", "bogus"]])
def test_compare_help_and_argument_errors_do_not_import_torch(argv):
    code = ("import sys\nfrom ltcls.cli.compare import main\ntry:\n    main(sys.argv[1:])\n"
            "except SystemExit:\n    pass\nassert 'torch' not in sys.modules, 'torch was imported'\n"
            "assert 'matplotlib' not in sys.modules, 'matplotlib was imported'\n")
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "ltcls-compare" in proc.stdout + proc.stderr


def test_a_fixed_section_config_error_does_not_import_torch(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("train:\n  epochs: ten\n")
    code = ("import sys\nfrom ltcls.cli.train import train_main\ntry:\n    train_main(sys.argv[1:])\n"
            "except SystemExit as e:\n    assert e.code == 2\nassert 'torch' not in sys.modules\n")
    proc = subprocess.run([sys.executable, "-c", code, "--config", str(cfg)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "train.epochs" in proc.stderr
