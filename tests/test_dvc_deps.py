"""dvc.yaml's deps match what each stage really uses, so `dvc repro` re-runs exactly what changed.

- Code: a stage's code deps are exactly the project files its module imports, directly or through
  other project modules (package __init__ files included, imports inside functions too). A new
  import without a dep would leave stale results; a dep without an import re-runs a stage for
  nothing (an edit to the raw-data readers would re-run hours of training).
- Data: a stage's data deps are exactly the outputs of other stages whose path constant
  (emotion_pipeline.paths) its module names, plus the tracked input folders (data/raw,
  models/base) that any module it imports names.
- Outputs: every stage output is in the top-level .gitignore.
"""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import pytest
import yaml

from emotion_pipeline import paths

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("stages", "emotion_pipeline")
STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def module_file(name: str) -> Path | None:
    """The file of a project module 'pkg.mod' (a module or a package), or None if it is not one."""
    base = REPO.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_names(path: Path) -> set[str]:
    """Every module name an import statement anywhere in ``path`` may load (``from a import b``: a and a.b)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import; the deps test resolves absolute imports only"
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def project_closure(module: str) -> set[Path]:
    """Project files loaded by importing ``module``: itself, its packages' __init__ files, and what they import."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        # Importing a.b.c runs a/__init__.py and a/b/__init__.py first.
        for depth in range(1, len(parts) + 1):
            path = module_file(".".join(parts[:depth]))
            if path is not None and path not in seen:
                seen.add(path)
                todo.extend(n for n in imported_names(path) if n.split(".")[0] in PACKAGES)
    return seen


def stage_module(stage: dict) -> str:
    """`python -m stages train` runs stages/__main__.py, which imports stages.train."""
    cmd = stage["cmd"].split()
    assert cmd[:3] == ["python", "-m", "stages"] and len(cmd) == 4, f"unexpected stage command: {stage['cmd']}"
    return f"stages.{cmd[3]}"


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
    inputs = {str(folder) for folder in paths.TRACKED_INPUTS}
    users = project_closure(stage_module(stage)) - {module_file("emotion_pipeline.paths")}  # where they are defined
    read |= {path for module in users for path in named_path_constants(module) if path in inputs}
    declared = {dep for dep in stage["deps"] if not is_code(dep)}
    assert declared == read, f"dvc.yaml stage '{name}': data deps {sorted(declared)}, but it reads {sorted(read)}"


def test_imports_inside_functions_count(tmp_path):
    module = tmp_path / "stage.py"
    module.write_text("import os\n\ndef main():\n    from emotion_pipeline.metrics import report_text\n")
    assert {"emotion_pipeline.metrics", "emotion_pipeline.metrics.report_text"} <= imported_names(module)


def test_raw_data_readers_belong_to_prepare_only():
    assert REPO / "emotion_pipeline/raw_data.py" in project_closure("stages.prepare")
    for stage in ("train", "evaluate", "export", "baseline"):
        assert REPO / "emotion_pipeline/raw_data.py" not in project_closure(f"stages.{stage}")


@pytest.mark.parametrize("name", sorted(STAGES))
def test_every_output_is_ignored_by_git(name):
    """The top-level .gitignore lists every stage output: otherwise the first `dvc repro` writes a
    folder .gitignore of its own, which shows as untracked in `git status` and is left out of every
    `dvc exp run --temp / --queue` commit (DVC warns about it)."""
    for out in STAGES[name].get("outs", []):
        path = next(iter(out)) if isinstance(out, dict) else out
        ignored = subprocess.run(["git", "check-ignore", "--quiet", "--no-index", path], cwd=REPO).returncode == 0
        assert ignored, f"{path} (an output of {name}) is not in .gitignore"
