"""The package's layering: every import inside labelrefinery points down, and no imports form a cycle.

Layers go from the bottom (imports nothing of the package) to the top (the
command line). A module may import only modules of lower layers; modules of
one layer do not import each other. Imports inside functions count too.
"""

import ast
from pathlib import Path

import labelrefinery

PACKAGE = Path(labelrefinery.__file__).parent

# Bottom to top. A new module must be placed here.
LAYERS = [
    ["errors", "version", "report"],
    ["config.values"],
    ["config.sections"],
    ["config.run"],
    ["config.presets"],
    ["config", "seeding", "dist", "fileio", "tblog"],
    ["console", "device", "runflags", "losses", "augment", "data.core", "data.files", "noise.inject", "noise.correct",
     "noise.calibrate", "report.html"],
    ["models", "batch", "data.cache", "data.idx", "noise.estimate", "noise.quality"],
    ["data.small", "data.rows", "data.torchvision_sets", "data.folder", "noise", "report.labelstats"],
    ["data.csvfile", "report.noisewords"],
    ["data.verified"],
    ["data"],
    ["checkpoint", "protocol", "targets", "deployed", "inference", "schedule"],
    ["rundir.layout", "rundir.integrity", "rundir.lock", "rundir.labels"],
    ["rundir.writer"],
    ["rundir.trainstate", "rundir.metrics", "rundir.configfile", "rundir.split", "rundir.results"],
    ["rundir", "engine"],
    ["report.tables", "experiment"],
    ["noisemodel"],
    ["generation"],
    ["evaluate", "report.labelissues", "classifier"],
    ["chain", "report.inspection"],
    ["cli"],
    ["__main__", "__init__"],
]
LEVEL = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _modules(root: Path = PACKAGE) -> dict[str, Path]:
    out = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _package_imports(name: str, path: Path, modules: dict[str, Path] | None = None) -> set[str]:
    """Modules of the package that ``name`` imports (absolute names relative to the package)."""
    is_pkg = path.name == "__init__.py"
    here = name.split(".") if is_pkg and name != "__init__" else name.split(".")[:-1]
    if name == "__init__":
        here = []
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            base = here[: len(here) - (node.level - 1)] if node.level > 1 else here
            target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            if not target:  # "from . import x": x is a module of the package
                found.update(alias.name for alias in node.names)
            else:
                found.add(target)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for n in names:
                if n == "labelrefinery" or n.startswith("labelrefinery."):
                    found.add(n[len("labelrefinery."):] or "__init__")
    modules = modules or _modules()
    resolved = set()
    for target in found:
        while target and target not in modules:  # "from .data.core import X" names the module data.core
            target = target.rpartition(".")[0]
        if target and target != name:
            resolved.add(target)
    return resolved


def test_every_module_has_a_layer():
    missing = sorted(set(_modules()) - set(LEVEL))
    assert not missing, f"place these modules in LAYERS: {missing}"


def test_imports_point_down():
    upward = []
    for name, path in _modules().items():
        for target in _package_imports(name, path):
            if LEVEL[target] >= LEVEL[name]:
                upward.append(f"{name} (layer {LEVEL[name]}) imports {target} (layer {LEVEL[target]})")
    assert not upward, "\n".join(upward)


def _find_cycle(modules: dict[str, Path]) -> None:
    graph = {name: _package_imports(name, path, modules) for name, path in modules.items()}
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done

    def visit(node, stack):
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*stack, node, nxt]))
            if nxt not in state:
                visit(nxt, [*stack, node])
        state[node] = 2

    for name in graph:
        if name not in state:
            visit(name, [])


def test_no_import_cycles():
    _find_cycle(_modules())


def test_the_checker_sees_upward_and_cyclic_imports(tmp_path):
    """The checker itself: imports inside functions, package-relative imports and a cycle are all seen."""
    fake = tmp_path / "labelrefinery"
    (fake / "data").mkdir(parents=True)
    (fake / "errors.py").write_text("def f():\n    from .chain import run\n")
    (fake / "chain.py").write_text("from .errors import UserError\n")
    (fake / "data" / "__init__.py").write_text("from ..errors import X\nfrom .core import Y\n")
    (fake / "data" / "core.py").write_text("import labelrefinery.data\n")
    mods = _modules(fake)
    assert _package_imports("errors", mods["errors"], mods) == {"chain"}
    assert _package_imports("data", mods["data"], mods) == {"errors", "data.core"}
    assert _package_imports("data.core", mods["data.core"], mods) == {"data"}
    try:
        _find_cycle(mods)
    except AssertionError as e:
        assert "import cycle" in str(e)
    else:
        raise AssertionError("the cycle errors <-> chain was not found")


def test_the_package_keeps_its_yardstick():
    """No module over 450 lines, no class over 250, no function body over 60 lines (docstring excluded) or with
    more than 8 parameters (``self``/``cls`` not counted), anywhere in the package."""
    over = []
    for name, path in sorted(_modules().items()):
        text = path.read_text()
        if text.count("\n") > 450:
            over.append(f"module {name}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > 250:
                over.append(f"class {name}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
                body = body[1:]
            if body and body[-1].end_lineno - body[0].lineno + 1 > 60:
                over.append(f"function {name}.{node.name}: {body[-1].end_lineno - body[0].lineno + 1} lines")
            a = node.args
            params = [*a.posonlyargs, *a.args, *a.kwonlyargs, *filter(None, (a.vararg, a.kwarg))]
            count = len([p for p in params if p.arg not in ("self", "cls")])
            if count > 8:
                over.append(f"function {name}.{node.name}: {count} parameters")
    assert not over, over
