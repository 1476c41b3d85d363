"""Outputs that a crash, Ctrl-C or power loss leaves complete, old or new: built beside their destination under a
temporary name, fsynced, moved in with os.replace (a folder's two-rename swap holds Ctrl-C and SIGTERM back). A kill
-9's leftovers (staging named with its writer's pid, an old copy swapped half out) are put right by the next write of
that path. Names start with '.' and end in '.tmp' or '.old' (.dvcignore hides them); modes are the usual ones.
"""

from __future__ import annotations

import glob
import json
import os
import secrets
import shutil
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


def _temporary_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")


def _abandoned(staging: Path) -> bool:
    """A staging name whose writer (the pid in its name) is gone: another process may be writing the same path."""
    try:
        os.kill(int(staging.name.rsplit(".", 2)[1].split("-")[0]), 0)  # PermissionError: alive, another user's
    except (ValueError, IndexError, ProcessLookupError):
        return True
    except PermissionError:
        return False
    return False


def _recover(path: Path) -> Path:
    """Put right what a kill left at ``path``; returns the name its old copy takes during a swap."""
    retired = path.with_name(f".{path.name}.old")
    if retired.exists() and not path.exists():
        os.replace(retired, path)  # killed between the swap's two renames: the last complete output
    shutil.rmtree(retired, ignore_errors=True)
    for leftover in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):  # staging of a killed write
        if _abandoned(leftover):
            shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink(missing_ok=True)
    return retired


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@contextmanager
def atomic_file(path: Path | str, binary: bool = False) -> Iterator[IO]:
    """A handle on a new file beside ``path``: when the block ends without error the file is flushed to disk and
    moved into place; on any error or interrupt it is removed and ``path`` stays as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _recover(path)
    staging = _temporary_name(path)
    try:
        with staging.open("xb") if binary else staging.open("x", encoding="utf-8") as handle:
            yield handle
            if not handle.closed:  # a writer given the handle (pyarrow's) may have closed it, flushed
                handle.flush()
        _fsync(staging)
        os.replace(staging, path)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise
    _fsync(path.parent)  # the rename itself, on disk


def write_text(path: Path | str, text: str) -> None:
    with atomic_file(path) as handle:
        handle.write(text)


def write_json(path: Path | str, data: object) -> None:
    """Deterministic JSON (sorted keys, fixed indent) so identical results give identical bytes."""
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


@contextmanager
def atomic_dir(path: Path | str) -> Iterator[Path]:
    """Yield a fresh temporary folder; on success it replaces ``path``, on any error or interrupt it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    retired = _recover(path)
    staging = _temporary_name(path)
    try:
        staging.mkdir()  # inside the try: an interrupt right after mkdir must still remove it
        yield staging
        for folder, _, files in os.walk(staging):  # every file's data on disk before the folder takes its name
            for name in files:
                _fsync(Path(folder, name))
            _fsync(Path(folder))
        # Ctrl-C and SIGTERM wait for the swap's two renames; they are delivered (and raise) right after them.
        held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            if path.exists():
                os.replace(path, retired)
            os.replace(staging, path)
            _fsync(path.parent)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        _recover(path)
        raise
    shutil.rmtree(retired, ignore_errors=True)
