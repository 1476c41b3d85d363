"""The one exception type for mistakes a user can fix, and the stage entry wrapper that reports it."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable


class UserError(Exception):
    """Bad params, data or model path: reported as one paragraph, never as a traceback."""


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's main(); turn a UserError into a clear message and exit status 2."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        main()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
