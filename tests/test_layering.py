"""The package layout stays layered: imports point down the ranks, never up, and never in a
circle. Every `pipeline.*` import counts, at module level or inside a function; only imports
under `if TYPE_CHECKING:` (annotations) are left out."""

import ast
import subprocess
import sys
from pathlib import Path

PIPELINE = Path(__file__).resolve().parents[1] / "pipeline"

# Low to high: a module imports only from its own rank or below.
RANKS = {
    "errors": 0,
    "repro": 0,
    "signals": 0,
    "data": 1,
    "models": 1,
    "tracking": 1,
    "training": 2,
    "evaluation": 2,
    "config": 3,
    "compose": 3,  # Hydra's side of config: schemas registered, composition, its errors
    "experiments": 4,
    "commands": 5,
    "__main__": 5,
}
# Same rank, one way: evaluation may import training; compose (Hydra) builds on config.
FORBIDDEN = {("training", "evaluation"), ("config", "compose")}


def module_name(path: Path) -> str:
    parts = path.relative_to(PIPELINE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PIPELINE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    return "TYPE_CHECKING" in ast.unparse(node.test)


def _walk_runtime(node: ast.AST):
    """ast.walk, skipping `if TYPE_CHECKING:` bodies."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child):
            yield from (n for stmt in child.orelse for n in [stmt, *_walk_runtime(stmt)])
            continue
        yield child
        yield from _walk_runtime(child)


def imports_of(source: str, modules: set[str]) -> list[tuple[int, str]]:
    """(line, imported pipeline module) for every runtime import in `source`.
    `from pipeline.x import y` counts as pipeline.x.y when y is a module, else pipeline.x."""
    found = []
    for node in _walk_runtime(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("pipeline")]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pipeline"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.append((node.lineno, sub if sub in modules else node.module))
    return found


def layer(module: str) -> str:
    """pipeline.data.splits -> data; pipeline.config -> config; pipeline -> ''."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def layering_errors(sources: dict[str, str]) -> list[str]:
    """One line per import that points up a rank or across a forbidden pair."""
    errors = []
    for module, source in sources.items():
        for line, imported in imports_of(source, set(sources)):
            mine, theirs = layer(module), layer(imported)
            if mine == theirs or not mine or not theirs:
                continue
            if RANKS[theirs] > RANKS[mine] or (mine, theirs) in FORBIDDEN:
                errors.append(f"{module}:{line} imports {imported} ({mine} may not use {theirs})")
    return errors


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle in `graph` (node -> nodes it imports), or None."""
    state: dict[str, str] = {}  # "active" while on the stack, "done" after

    def visit(node: str, stack: list[str]) -> list[str] | None:
        state[node] = "active"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "active":
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt, [*stack, nxt])):
                return cycle
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [start])):
            return cycle
    return None


def import_graphs(sources: dict[str, str]) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """Module graph and package graph (top-level names under pipeline/) of runtime imports."""
    modules, packages = {}, {}
    for module, source in sources.items():
        for _, imported in imports_of(source, set(sources)):
            if imported != module and imported in sources:
                modules.setdefault(module, set()).add(imported)
            if layer(imported) and layer(module) and layer(imported) != layer(module):
                packages.setdefault(layer(module), set()).add(layer(imported))
    return modules, packages


def _sources() -> dict[str, str]:
    return {name: path.read_text() for name, path in all_modules().items()}


def test_every_package_has_a_rank():
    assert {layer(m) for m in all_modules()} - {""} <= set(RANKS)


def test_imports_only_point_down_the_ranks():
    assert layering_errors(_sources()) == []


def test_no_import_cycles_between_modules_or_packages():
    modules, packages = import_graphs(_sources())
    assert find_cycle(modules) is None
    assert find_cycle(packages) is None


def test_an_upward_import_is_named_even_inside_a_function():
    sources = _sources()
    sources["pipeline.data.splits"] += (
        "\n\ndef late():\n    from pipeline.config import RunConfig\n"
    )
    errors = layering_errors(sources)
    assert len(errors) == 1
    assert "pipeline.data.splits:" in errors[0] and "imports pipeline.config" in errors[0]


def test_type_checking_imports_are_left_out():
    source = (
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pipeline.config import X\n"
    )
    assert imports_of(source, set()) == []


def test_a_cycle_is_found():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


# --- what modules may import from dependencies ------------------------------------------------

ROOT = PIPELINE.parent
# Private MLflow names (`mlflow.x._y`, `_f`, `Cls._attr`) live in one wrapper, which says why.
MLFLOW_WRAPPER = "pipeline.tracking.mlflow_internals"


def _private(name: str) -> bool:
    return any(part.startswith("_") and not part.startswith("__") for part in name.split("."))


def private_mlflow_uses(source: str) -> list[tuple[int, str]]:
    """(line, name) for each private MLflow name `source` imports or reaches: in an import,
    or as an attribute (or a getattr string) of a name bound by an mlflow import."""
    tree = ast.parse(source)
    bound, found = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "mlflow":
                    bound.add((alias.asname or alias.name).split(".")[0])
                    if _private(alias.name):
                        found.append((node.lineno, alias.name))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "mlflow":
            for alias in node.names:
                bound.add(alias.asname or alias.name)
                if _private(f"{node.module}.{alias.name}"):
                    found.append((node.lineno, f"{node.module}.{alias.name}"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in bound:
                found.append((node.lineno, ast.unparse(node)))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "hasattr", "setattr")
            and len(node.args) >= 2
            and isinstance(node.args[0], ast.Name)
            and node.args[0].id in bound
            and isinstance(node.args[1], ast.Constant)
            and _private(str(node.args[1].value))
        ):
            found.append((node.lineno, f"{node.args[0].id}.{node.args[1].value}"))
    return found


def _project_sources() -> dict[str, str]:
    paths = [*PIPELINE.rglob("*.py"), *(ROOT / "hydra_plugins").rglob("*.py")]
    paths += (ROOT / "benchmarks").rglob("*.py")
    return {module_name(p) if p.is_relative_to(PIPELINE) else str(p): p.read_text() for p in paths}


def test_private_mlflow_names_are_used_only_in_the_wrapper():
    uses = {
        f"{module}:{line} {name}"
        for module, source in _project_sources().items()
        if module != MLFLOW_WRAPPER
        for line, name in private_mlflow_uses(source)
    }
    assert uses == set()


def test_a_private_mlflow_name_is_found_however_it_is_reached():
    source = (
        "def f():\n"
        "    import mlflow\n"
        "    from mlflow.tracking._tracking_service.utils import _use_tracking_uri\n"
        "    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore as S\n"
        "    getattr(S, '_engine_map', {})\n"
        "    mlflow.tracking._tracking_service\n"
        "    mlflow.start_run()\n"
    )
    assert [line for line, _ in private_mlflow_uses(source)] == [3, 5, 6]


def test_only_main_reads_hydras_runtime_globals():
    """Stages take a commands.runtime.HydraRuntime that __main__ builds, not HydraConfig."""
    readers = [
        module
        for module, source in _project_sources().items()
        if module != "pipeline.__main__"
        and any(
            name == "hydra.core.hydra_config" or name.endswith("HydraConfig")
            for _, name in _hydra_imports(source)
        )
    ]
    assert readers == []


def _hydra_imports(source: str) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("hydra")]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("hydra"):
            found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return found


# --- the config-only paths stay light ---------------------------------------------------------
# `--help`, a typo'd override or a bad value print one line before any stage runs: the run
# config, its Hydra side, the stage registry and the entry point load without the heavy
# libraries (torch alone is ~4 s of imports, timm's torchvision another ~4 s).
HEAVY = ("torch", "timm", "torchvision", "albumentations", "cv2", "matplotlib", "mlflow")


def test_the_config_and_entry_point_load_without_torch_timm_or_albumentations():
    code = (
        "import sys, pipeline.config, pipeline.compose, pipeline.commands, pipeline.__main__; "
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert done.stdout.strip() == "[]", done.stderr


def test_every_stage_is_run_by_run_stage_of_its_own_module():
    """commands.stage_function imports `commands/<stage>.py: run_<stage>` by name."""
    from pipeline.config import STAGES

    for stage in STAGES:
        tree = ast.parse((PIPELINE / "commands" / f"{stage}.py").read_text())
        functions = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
        assert f"run_{stage}" in functions, stage
