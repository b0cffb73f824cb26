"""The engine's shape: importable on its own, no import cycles between its modules, no module
much over 350 lines, the public names exported once from the package."""
import ast
import subprocess
import sys
from pathlib import Path

ENGINE = Path(__file__).resolve().parents[1] / "fastif_engine"
MAX_LINES = 375  # about 350: past that a module is doing two things
# where examples may import from: the package, the model families and the bundled datasets
PUBLIC = ("fastif_engine", "fastif_engine.models", "fastif_engine.data.datasets")


def _module(path: Path) -> str:
    parts = path.relative_to(ENGINE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _module_level_imports(path: Path) -> set[str]:
    """Engine modules imported when ``path`` is imported (function-level imports excluded)."""
    here = _module(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom):
            base = (package[:len(package) - node.level + 1] if node.level else [])
            target = ".".join(base + (node.module.split(".") if node.module else []))
            for alias in node.names:
                candidate = f"{target}.{alias.name}"
                found.add(candidate if (ENGINE.parent / (candidate.replace(".", "/") + ".py")).exists()
                          or (ENGINE.parent / candidate.replace(".", "/")).is_dir() else target)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return {m for m in found if m.split(".")[0] == "fastif_engine"}


def test_the_engine_imports_on_its_own():
    out = subprocess.run([sys.executable, "-c", "import fastif_engine, sys; "
                          "print('prefect' in sys.modules, 'flows' in sys.modules)"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]  # no Prefect, no flows behind the engine


def test_no_import_cycles_between_engine_modules():
    modules = {_module(p): p for p in ENGINE.rglob("*.py")}
    graph = {m: {d for d in _module_level_imports(p) if d in modules and d != m} for m, p in modules.items()}
    state, cycles = {}, []

    def visit(m, path):
        state[m] = "open"
        for d in sorted(graph[m]):
            if state.get(d) == "open":
                cycles.append(path[path.index(d):] + [d])
            elif d not in state:
                visit(d, path + [d])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles: " + "; ".join(" → ".join(c) for c in cycles)
    assert "fastif_engine.influence.planning" in graph["fastif_engine.influence.api"]  # the graph is read


def test_no_engine_module_is_much_over_350_lines():
    sizes = {str(p.relative_to(ENGINE.parent)): len(p.read_text().splitlines()) for p in ENGINE.rglob("*.py")}
    assert not {f: n for f, n in sizes.items() if n > MAX_LINES}, sizes
    assert sizes["fastif_engine/cleaning/pipeline.py"] > 100  # real files were measured


def test_public_names_come_from_the_package():
    import fastif_engine

    for name in fastif_engine.__all__:
        assert getattr(fastif_engine, name) is not None
    examples = Path(__file__).resolve().parents[1] / "examples"
    for path in examples.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("fastif_engine"):
                assert node.module in PUBLIC, \
                    f"{path.name} imports {node.module}"
