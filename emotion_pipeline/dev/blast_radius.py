"""What an edit re-runs: for each project file, the stages that depend on it, and the lines in each stage's closure.

    python -m emotion_pipeline.dev.blast_radius              # a plain table
    python -m emotion_pipeline.dev.blast_radius --markdown   # the same, for docs/architecture.md

A stage's code dependencies are the project files its module imports, directly or through other project modules
(package __init__ files and imports inside functions included): dvc.yaml declares exactly those, and
tests/test_dvc_deps.py derives them with project_closure below and fails on any difference. So the size of a
stage's closure is the size of what can re-run it: an edit to any of those lines re-runs the stage, and the stages
after it whenever its outputs change (a new adapter changes everything downstream).

A dev tool: no stage imports it, so editing it re-runs nothing.
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

import yaml

from emotion_pipeline.evaluation.reports import text_table

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("stages", "emotion_pipeline")


def module_file(name: str, root: Path = REPO) -> Path | None:
    """The file of a project module 'pkg.mod' (a module or a package), or None if it is not one."""
    base = root.joinpath(*name.split("."))
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
            assert node.level == 0, f"{path}: relative import; the closure resolves absolute imports only"
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def project_closure(module: str, root: Path = REPO) -> set[Path]:
    """Project files loaded by importing ``module``: itself, its packages' __init__ files, and what they import."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        # Importing a.b.c runs a/__init__.py and a/b/__init__.py first.
        for depth in range(1, len(parts) + 1):
            path = module_file(".".join(parts[:depth]), root)
            if path is not None and path not in seen:
                seen.add(path)
                todo.extend(n for n in imported_names(path) if n.split(".")[0] in PACKAGES)
    return seen


def stage_module(stage: dict) -> str:
    """`python -m stages train` runs stages/__main__.py, which imports stages.train."""
    cmd = stage["cmd"].split()
    assert cmd[:3] == ["python", "-m", "stages"] and len(cmd) == 4, f"unexpected stage command: {stage['cmd']}"
    return f"stages.{cmd[3]}"


def stage_closures(root: Path = REPO) -> dict[str, set[Path]]:
    """Each dvc.yaml stage -> the project files its command imports."""
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    return {name: project_closure("stages.__main__", root) | project_closure(stage_module(stage), root)
            for name, stage in stages.items()}


def downstream(root: Path = REPO) -> dict[str, list[str]]:
    """Each stage -> the stages that read its outputs, directly or not, in dvc.yaml order."""
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    outs = {name: {next(iter(out)) if isinstance(out, dict) else out for out in stage.get("outs", [])}
            for name, stage in stages.items()}
    readers = {name: [other for other, stage in stages.items() if outs[name] & set(stage.get("deps", []))]
               for name in stages}
    result = {}
    for name in stages:
        found, todo = [], list(readers[name])
        while todo:
            other = todo.pop(0)
            if other not in found:
                found.append(other)
                todo.extend(readers[other])
        result[name] = [other for other in stages if other in found]
    return result


def lines(path: Path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines())


def table(root: Path = REPO) -> tuple[list[tuple[str, str, str, str]], list[tuple[str, str, str]]]:
    """(file, lines, stages that re-run, stages after them) per project file; (stage, files, lines) per stage."""
    closures = stage_closures(root)
    after = downstream(root)
    files = sorted({path for closure in closures.values() for path in closure} |
                   {path for package in PACKAGES for path in (root / package).rglob("*.py")})
    rows = []
    for path in files:
        direct = [name for name, closure in closures.items() if path in closure]
        later = [name for name in dict.fromkeys(s for name in direct for s in after[name]) if name not in direct]
        rows.append((str(path.relative_to(root)), str(lines(path)), ", ".join(direct) or "none",
                     ", ".join(later) or "-"))
    sizes = [(name, str(len(closure)), f"{sum(map(lines, closure)):,}") for name, closure in closures.items()]
    return rows, sizes


def render(rows: list[tuple[str, ...]], header: tuple[str, ...], markdown: bool) -> str:
    if markdown:
        return "\n".join(["| " + " | ".join(header) + " |", "|" + " --- |" * len(header),
                          *("| " + " | ".join(f"`{row[0]}`" if i == 0 and row[0].endswith(".py") else cell
                                                for i, cell in enumerate(row)) + " |" for row in rows)])
    return "\n".join(text_table([header, *rows]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", action="store_true", help="Markdown tables (for docs/architecture.md)")
    parser.add_argument("--root", type=Path, default=REPO, help="the project to read (default: this one), e.g. a "
                        "`git worktree` of an older commit, to compare")
    parser.add_argument("--stages-only", action="store_true", help="only the closure size of each stage")
    args = parser.parse_args(argv)
    rows, sizes = table(args.root.resolve())
    print(render(sizes, ("stage", "files in its closure", "lines"), args.markdown))
    if args.stages_only:
        return
    print()
    print(render(rows, ("file", "lines", "re-runs", "then, if its outputs change"), args.markdown))


if __name__ == "__main__":
    main()
