"""The one rule for "local folder or hub id", shared by data.source and model.name.

A value names a local folder when that folder exists, or when it can only be a path: it starts
with '.', '/' or '~', has more than one '/', a backslash, or its first part is a folder that
exists here (``models/export`` while ``models/`` exists). Anything else of the form ``name``
or ``org/name`` is a Hugging Face hub id. Relative paths are taken from the working directory,
which for a stage is the project root.
"""

from __future__ import annotations

from pathlib import Path

from emotion_pipeline.errors import UserError


def resolve_source(value: str, key: str, expected: str) -> Path | str:
    """An existing local folder as an absolute Path, or a hub id as a str.

    ``key`` (e.g. 'model.name') and ``expected`` (what a valid value is) go into the error raised
    when ``value`` can only be a path and nothing is there.
    """
    path = Path(value).expanduser()
    if path.exists():
        return path.resolve()
    if _can_only_be_a_path(value):
        raise UserError(
            f"{key}: folder '{value}' does not exist (looked for {path.absolute()}; relative paths are taken from "
            f"the project root, {Path.cwd()}). Give {expected}."
        )
    return value


def not_local_either(value: str) -> str:
    """For a hub load that failed: say that no local folder of that name exists either."""
    return f"there is no local folder {Path(value).expanduser().absolute()} either"


def _can_only_be_a_path(value: str) -> bool:
    if value.startswith((".", "/", "~")) or "\\" in value or value.count("/") > 1:
        return True
    # 'org/name' is a hub id unless 'org' is a folder here: 'models/export' is a path to a missing folder.
    return "/" in value and Path(value.split("/", 1)[0]).is_dir()
