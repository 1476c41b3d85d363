"""The one rule for "local folder or hub id", shared by data.source and model.name.

A value names a local folder when that folder exists, or when it can only be a path: it starts
with '.', '/' or '~', has more than one '/', a backslash, or its first part is a folder that
exists here (``models/export`` while ``models/`` exists). Anything else of the form ``name``
or ``org/name`` is a Hugging Face hub id.

Relative paths are taken from the project root. A stage runs with the project root as its
working directory, except that `dvc exp run --temp` and `--queue` run it in a copy of the
project under ``.dvc/tmp/exps/``: there, a path found in the copy (a DVC-tracked folder inside
the project, which DVC checks out into the copy) is used, and a path outside the project
(``../shared/data/emotion``) is taken from the project the copy was made from.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from emotion_pipeline.errors import UserError
from emotion_pipeline.paths import EXPORT_DIR

log = logging.getLogger(__name__)


def resolve_source(value: str, key: str, expected: str, base: str = "the project root") -> Path | str:
    """An existing local folder as an absolute Path, or a hub id as a str.

    ``key`` (e.g. 'model.name') and ``expected`` (what a valid value is) go into the error raised
    when ``value`` can only be a path and nothing is there; ``base``: where relative paths start.
    """
    tried = candidate_paths(value)
    for path in tried:
        if path.exists():
            return path.resolve()
    if _can_only_be_a_path(value):
        looked = " nor ".join(str(path) for path in tried)
        raise UserError(
            f"{key}: folder '{value}' does not exist (looked for {looked}; relative paths are taken from "
            f"{base}{', and a DVC experiment copy looks in the copy first' if len(tried) > 1 else ''}). "
            f"Give {expected}."
        )
    return value


def candidate_paths(value: str) -> list[Path]:
    """The absolute paths ``value`` may name: from the working directory, then from the original project."""
    path = Path(value).expanduser()
    if path.is_absolute():
        return [path]
    here = Path.cwd()
    origin = original_project(here)
    return [here / path] + ([origin / path] if origin else [])


def original_project(workdir: Path) -> Path | None:
    """For a DVC experiment copy (``<project>/.dvc/tmp/exps/<run>/...``), the project it was copied from."""
    parts = workdir.parts
    for i in range(len(parts) - 3):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return None


def warn_if_untracked(path: Path, tracked_dir: Path, key: str) -> None:
    """A local source outside ``tracked_dir`` works, but DVC does not see edits to it: say how to track it."""
    if not path.is_relative_to(tracked_dir.resolve()):
        log.warning("%s: %s is outside %s/, so DVC does not track it: editing its files re-runs nothing. To track it, "
                    "copy it to %s/%s and `dvc add` it there (see %s/README.md).",
                    key, path, tracked_dir, tracked_dir, path.name, tracked_dir)


def check_model_folder(name: str, folder: Path, key: str) -> None:
    """A model folder has a config.json; an adapter-only folder or any other folder is explained, not loaded."""
    if (folder / "config.json").is_file():
        return
    if (folder / "adapter_config.json").is_file():
        base = json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path") or "not recorded"
        raise UserError(
            f"{key}: '{name}' holds a LoRA adapter (adapter_config.json), not a full model. To train, give its base "
            f"model (the adapter names '{base}'); to predict, give the merged export ({EXPORT_DIR}), which holds the "
            f"full weights."
        )
    what = "a file, not a folder" if folder.is_file() else "no config.json in it"
    raise UserError(
        f"{key}: '{name}' is not a model folder ({what}). Give a folder saved with save_pretrained "
        f"(config.json, model.safetensors, tokenizer files) or a hub id such as Qwen/Qwen3-0.6B."
    )


def not_local_either(value: str) -> str:
    """For a hub load that failed: say that no local folder of that name exists either."""
    return f"there is no local folder {candidate_paths(value)[0]} either"


def _can_only_be_a_path(value: str) -> bool:
    if value.startswith((".", "/", "~")) or "\\" in value or value.count("/") > 1:
        return True
    # 'org/name' is a hub id unless 'org' is a folder here: 'models/export' is a path to a missing folder.
    return "/" in value and Path(value.split("/", 1)[0]).is_dir()
