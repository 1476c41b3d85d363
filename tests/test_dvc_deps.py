"""dvc.yaml's deps match what each stage really uses, so `dvc repro` re-runs exactly what changed.

- Code: a stage's code deps are exactly the project files its module imports, directly or through
  other project modules (package __init__ files included, imports inside functions too). A new
  import without a dep would leave stale results; a dep without an import re-runs a stage for
  nothing (an edit to the raw-data readers would re-run hours of training).
- Data: a stage's data deps are exactly the outputs of other stages whose path constant
  (emotion_pipeline.paths) its module names, plus the tracked input folders (data/raw,
  models/base) that any module it imports names.
- Params: a stage's `params:` are exactly the params.yaml sections and keys its module reads
  (``params.train.lr``, ``cfg = params.train`` then ``cfg.lr``, or a section handed whole to a
  function), less the keys marked NO_RESULT_EFFECT in emotion_pipeline.config (where processes
  meet, how long they wait). A key read but not declared gives stale results; declared but
  unread, needless re-runs. Only stage modules read params.yaml (load_params), so the stage
  module is where to look.
- Outputs: every stage output is in the top-level .gitignore.
"""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import pytest
import yaml

from emotion_pipeline import paths
from emotion_pipeline.config import Params, changes_results
from emotion_pipeline.dev.blast_radius import imported_names, module_file, project_closure, stage_module

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("stages", "emotion_pipeline")
STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def is_code(dep: str) -> bool:
    return dep.split("/")[0] in PACKAGES


def declared_outs() -> dict[str, str]:
    """Each declared output path -> the stage that writes it."""
    return {next(iter(out)) if isinstance(out, dict) else out: name
            for name, stage in STAGES.items() for out in stage.get("outs", [])}


def named_path_constants(path: Path) -> set[str]:
    """Values of the emotion_pipeline.paths constants that ``path`` mentions by name."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    names |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
              and node.module == "emotion_pipeline.paths" for alias in node.names}
    return {str(value) for name, value in vars(paths).items() if name in names and isinstance(value, Path)}


@pytest.mark.parametrize("name", STAGES)
def test_code_deps_are_exactly_the_imported_project_files(name):
    stage = STAGES[name]
    modules = project_closure("stages.__main__") | project_closure(stage_module(stage))
    imported = {str(path.relative_to(REPO)) for path in modules}
    declared = {dep for dep in stage["deps"] if is_code(dep)}
    assert declared == imported, (
        f"dvc.yaml stage '{name}': imported but not a dep (stale results): {sorted(imported - declared)}; "
        f"a dep but never imported (needless re-runs): {sorted(declared - imported)}"
    )


@pytest.mark.parametrize("name", STAGES)
def test_data_deps_are_exactly_what_the_stage_reads(name):
    stage = STAGES[name]
    outs = declared_outs()
    module_path = module_file(stage_module(stage))
    read = {path for path in named_path_constants(module_path) if path in outs and outs[path] != name}
    inputs = {str(folder) for folder in paths.TRACKED_INPUTS} | {str(paths.RUNTIME_LOCK)}
    users = project_closure(stage_module(stage)) - {module_file("emotion_pipeline.paths")}  # where they are defined
    read |= {path for module in users for path in named_path_constants(module) if path in inputs}
    declared = {dep for dep in stage["deps"] if not is_code(dep)}
    assert declared == read, f"dvc.yaml stage '{name}': data deps {sorted(declared)}, but it reads {sorted(read)}"


def test_imports_inside_functions_count(tmp_path):
    module = tmp_path / "stage.py"
    module.write_text("import os\n\ndef main():\n    from emotion_pipeline.evaluation.reports import report_text\n")
    assert {"emotion_pipeline.evaluation.reports", "emotion_pipeline.evaluation.reports.report_text"} <= imported_names(module)


def test_the_training_launcher_is_a_program_the_stage_execs_not_a_dependency():
    """Like torchrun, the launcher decides how processes start and meet, never what they compute: editing its
    messages must re-run no training. The stage hands over to it by module name (exec), so it is no import."""
    from emotion_pipeline.training.ddp import LAUNCHER

    assert module_file(LAUNCHER) == REPO / "emotion_pipeline/training/launch.py"
    closure = project_closure("stages.train")
    assert module_file(LAUNCHER) not in closure
    assert REPO / "emotion_pipeline/training/rendezvous.py" not in closure
    assert "emotion_pipeline/training/launch.py" not in STAGES["train"]["deps"]


def test_raw_data_readers_belong_to_prepare_only():
    assert REPO / "emotion_pipeline/data/raw.py" in project_closure("stages.prepare")
    for stage in ("train", "evaluate", "export", "baseline"):
        assert REPO / "emotion_pipeline/data/raw.py" not in project_closure(f"stages.{stage}")


@pytest.mark.parametrize("name", sorted(STAGES))
def test_every_output_is_ignored_by_git(name):
    """The top-level .gitignore lists every stage output: otherwise the first `dvc repro` writes a
    folder .gitignore of its own, which shows as untracked in `git status` and is left out of every
    `dvc exp run --temp / --queue` commit (DVC warns about it)."""
    for out in STAGES[name].get("outs", []):
        path = next(iter(out)) if isinstance(out, dict) else out
        ignored = subprocess.run(["git", "check-ignore", "--quiet", "--no-index", path], cwd=REPO).returncode == 0
        assert ignored, f"{path} (an output of {name}) is not in .gitignore"


# --------------------------------------------------------------------------- params


def _parents(tree: ast.AST) -> dict[ast.AST, ast.AST]:
    return {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}


def params_read(source: str, where: str = "<stage>") -> set[str]:
    """What a stage module reads of params.yaml: 'section' for a section used whole (handed to a
    function, dumped), 'section.key' for one key. Raises if it cannot tell (the Params object itself
    handed to a function of another module)."""
    tree = ast.parse(source)
    parent = _parents(tree)
    local_functions = {node.name: node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}
    reads: set[str] = set()

    def loads_params(node: ast.AST) -> bool:
        return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "load_params"

    def use_of(section: str, node: ast.AST, aliases: dict[str, str]) -> None:
        """``node`` evaluates to the section object: record how it is used."""
        above = parent[node]
        if isinstance(above, ast.Attribute) and above.value is node:
            reads.add(f"{section}.{above.attr}")
        elif isinstance(above, ast.Assign) and above.value is node and len(above.targets) == 1 \
                and isinstance(above.targets[0], ast.Name):
            aliases[above.targets[0].id] = section
        elif isinstance(above, ast.Tuple) and isinstance(parent[above], ast.Assign) and \
                isinstance(parent[above].targets[0], ast.Tuple):
            target = parent[above].targets[0].elts[above.elts.index(node)]
            aliases[target.id] = section
        else:
            reads.add(section)

    scopes = [tree, *local_functions.values()]
    for scope in scopes:
        body = scope.body if isinstance(scope, ast.Module) else scope
        roots = {arg.arg for arg in scope.args.args if arg.arg == "params"} if isinstance(scope, ast.FunctionDef) else set()
        nodes = [node for statement in (body if isinstance(body, list) else [body]) for node in ast.walk(statement)]
        roots |= {node.targets[0].id for node in nodes if isinstance(node, ast.Assign) and loads_params(node.value)
                  and isinstance(node.targets[0], ast.Name)}
        aliases: dict[str, str] = {}
        for node in nodes:
            if not isinstance(node, ast.Attribute):
                continue
            if loads_params(node.value) or (isinstance(node.value, ast.Name) and node.value.id in roots):
                if node.attr in Params.model_fields:
                    use_of(node.attr, node, aliases)
                elif node.attr == "model_dump" and isinstance(parent[node], ast.Call):
                    include = next((kw.value for kw in parent[node].keywords if kw.arg == "include"), None)
                    assert isinstance(include, ast.Set), f"{where}: params.model_dump() without a literal include set"
                    reads.update(element.value for element in include.elts)
                else:
                    raise AssertionError(f"{where}: params.{node.attr} is neither a section nor model_dump")
        for node in nodes:  # uses of the aliases (cfg = params.train; cfg.lr)
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id in aliases:
                use_of(aliases[node.id], node, {})
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id in roots:
                above = parent[node]
                if isinstance(above, ast.Attribute):
                    continue  # a section, handled above
                call = above if isinstance(above, ast.Call) else None
                callee = call.func.id if call is not None and isinstance(call.func, ast.Name) else None
                assert callee in local_functions and node in call.args and \
                    local_functions[callee].args.args[call.args.index(node)].arg == "params", (
                        f"{where}: the params object is handed to something this test cannot follow (line {node.lineno}); "
                        f"hand it sections, or to a function of the same module whose argument is named params")
    return reads


def expand(entries: set[str], result_keys_only: bool) -> set[str]:
    """'section' -> each of its keys (only those that change results, for what code reads whole)."""
    keys: set[str] = set()
    for entry in entries:
        section, _, key = entry.partition(".")
        model = Params.model_fields[section].annotation
        assert key == "" or key in model.model_fields, f"'{entry}' is not a key of params.yaml"
        names = [key] if key else [name for name in model.model_fields if not result_keys_only or changes_results(model, name)]
        keys.update(f"{section}.{name}" for name in names)
    return keys


@pytest.mark.parametrize("name", STAGES)
def test_params_deps_are_exactly_what_the_stage_reads(name):
    stage = STAGES[name]
    module_path = module_file(stage_module(stage))
    read = expand(params_read(module_path.read_text(encoding="utf-8"), str(module_path)), result_keys_only=True)
    declared = expand(set(stage.get("params", [])), result_keys_only=False)
    assert declared == read, (
        f"dvc.yaml stage '{name}': params read but not declared (stale results): {sorted(read - declared)}; "
        f"declared but never read (needless re-runs): {sorted(declared - read)}"
    )


def test_only_stage_modules_read_params_yaml():
    """Library code gets typed sections from its caller, so a stage module shows all that its stage reads."""
    readers = [path for path in (REPO / "emotion_pipeline").rglob("*.py") if path.name != "config.py"
               and "load_params(" in path.read_text(encoding="utf-8")]
    assert not readers, f"library modules that read params.yaml themselves: {readers}"


def test_params_reads_are_found_through_aliases_sections_and_local_functions():
    source = """
def main():
    params = load_params()
    cfg, compute = params.train, params.compute
    run(cfg.lr, params.model.max_length)
    choose(compute)
    card(params)

def card(params):
    return params.export.dataset_id
"""
    assert params_read(source) == {"train.lr", "model.max_length", "compute", "export.dataset_id"}
    assert params_read("cfg = load_params().data\nload(cfg)\n") == {"data"}
    with pytest.raises(AssertionError, match="cannot follow"):
        params_read("params = load_params()\nsomewhere_else(params)\n")
    # A key read but not declared is a mismatch (what the stage test above would report).
    assert expand({"compute"}, result_keys_only=True) - expand({"compute.device"}, result_keys_only=False)
