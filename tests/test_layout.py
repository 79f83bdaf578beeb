"""The house: imports run only downhill, data -> models -> train -> tracking -> sweep -> report
-> cli, and the package's folders are that pipeline.

Shared small modules (config, errors, names, tokens, console, redact, locks, locations) may be
imported by every stage and import no stage, with one declared exception: config imports the model configs,
which live beside their modules (studylib/models/*.py), as nanoGPT keeps GPTConfig beside GPT.
An import inside a function must say why in a comment on its line or the line above: an
optional dependency or a measured start-up cost.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "studylib"
STAGES = ("data", "models", "train", "tracking", "sweep", "report", "cli")
SHARED = ("config", "errors", "names", "tokens", "console", "redact", "locks", "locations")
DECLARED = {("config", "models")}  # (importer, imported) allowed against the rule
ENTRY = ("studylib", "studylib.__main__")  # the package and `python -m studylib` (runs cli)
WHY = ("start-up", "optional")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts).removesuffix(".__init__")


def top(name: str) -> str:
    """studylib.sweep.claim -> "sweep"; studylib.cli -> "cli"; studylib -> ""."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else ""


def studylib_imports(tree: ast.Module) -> list[tuple[ast.stmt, str, list[str]]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("studylib"):
            found.append((node, node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("studylib"):
                    found.append((node, alias.name, []))
    return found


def modules() -> dict[str, ast.Module]:
    return {module_name(p): ast.parse(p.read_text()) for p in sorted(PACKAGE.rglob("*.py"))}


def resolve(imported: str, names: list[str], known: set[str]) -> list[str]:
    """`from studylib.sweep import loops` imports the module studylib.sweep.loops."""
    targets = [f"{imported}.{n}" for n in names if f"{imported}.{n}" in known]
    return targets or [imported]


def test_every_module_is_a_stage_or_shared():
    for name in modules():
        if name in ENTRY:
            continue
        assert top(name) in STAGES + SHARED, f"{name}: not in a stage folder nor a shared module"


def test_imports_only_run_downhill():
    known = set(modules())
    wrong = []
    for name, tree in modules().items():
        if name in ENTRY:
            continue
        mine = top(name)
        for node, imported, names in studylib_imports(tree):
            for target in resolve(imported, names, known):
                theirs = top(target)
                if theirs == mine or theirs in SHARED or theirs == "":
                    continue
                if (mine, theirs) in DECLARED:
                    continue
                if mine in SHARED:
                    wrong.append(f"{name}:{node.lineno} (shared) imports the stage {target}")
                elif theirs == "cli" or (
                    mine in STAGES and STAGES.index(theirs) > STAGES.index(mine)
                ):
                    wrong.append(f"{name}:{node.lineno} imports {target}, uphill")
    assert wrong == []


def test_no_import_cycles():
    known = set(modules())
    graph = {
        name: {
            t
            for _, imported, names in studylib_imports(tree)
            for t in resolve(imported, names, known)
            if t in known and t != name
        }
        for name, tree in modules().items()
    }
    # A package's __init__ re-exports its modules: an edge into the package means its module.
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        if node in path:
            cycles.append(" -> ".join(path[path.index(node) :] + [node]))
            return
        for nxt in sorted(graph.get(node, ())):
            if not nxt.startswith(node + "."):  # a package importing its own modules
                visit(nxt, path + [node])

    for name in sorted(graph):
        visit(name, [])
    assert cycles == []


def test_imports_inside_functions_say_why():
    unexplained = []
    for path in sorted(PACKAGE.rglob("*.py")):
        lines = path.read_text().splitlines()
        tree = ast.parse("\n".join(lines))
        for func in ast.walk(tree):
            if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(func):
                if isinstance(node, ast.Import | ast.ImportFrom):
                    here = lines[node.lineno - 1] + lines[node.lineno - 2]
                    if not any(word in here for word in WHY):
                        unexplained.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert unexplained == []


def test_no_private_name_crosses_a_module_boundary():
    crossing = []
    for name, tree in modules().items():
        for node, imported, names in studylib_imports(tree):
            crossing += [f"{name}:{node.lineno} {imported}.{n}" for n in names if n.startswith("_")]
        for node in ast.walk(tree):  # Optuna's private storage handles: public APIs exist
            if isinstance(node, ast.Attribute) and node.attr in ("_storage", "_trial_id"):
                crossing.append(f"{name}:{node.lineno} .{node.attr}")
    assert crossing == []
