"""Writing outputs so that a crash or Ctrl-C leaves either the previous complete output or none.

Files are written beside their destination and moved into place with os.replace (atomic on
POSIX); folders are built under a temporary name and swapped in only once complete. The
temporary names start with '.' and end in '.tmp', which .dvcignore hides from DVC. Files and
folders are created with the ordinary modes (0666 / 0777 less the umask), so a model written
here can be read by another user on a shared server, as any other file would.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


def _temporary_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")


@contextmanager
def atomic_file(path: Path | str, binary: bool = False) -> Iterator[IO]:
    """A handle on a new file beside ``path``: when the block ends without error the file is flushed to disk and
    moved into place; on any error or interrupt it is removed and ``path`` stays as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = _temporary_name(path)
    try:
        with staging.open("xb") if binary else staging.open("x", encoding="utf-8") as handle:
            yield handle
            if not handle.closed:  # a writer given the handle (pyarrow's) may have closed it, flushed
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(staging, path)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise


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
    staging = _temporary_name(path)
    try:
        # Created inside the try: an interrupt right after mkdir must still remove it.
        staging.mkdir()
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    retired = path.with_name(f".{path.name}.old")
    shutil.rmtree(retired, ignore_errors=True)
    if path.exists():
        os.replace(path, retired)
    os.replace(staging, path)
    shutil.rmtree(retired, ignore_errors=True)
