"""How a command starts and ends: one paragraph for bad input, one line for Ctrl-C (run_command), Ctrl-C while it
still imports torch (import_for_command), and the console scripts' entry points (pyproject.toml, [project.scripts])
for commands whose module imports torch. The stages' counterpart is emotion_pipeline.errors.run_stage; no stage
imports this module, so its wording is in no stage's dependencies.

A console script imports its function's module before anything of ours runs, and emotion_pipeline.predict
imports torch and transformers at its top (seconds). Pointing the script here instead, a module that imports
nothing heavy, lets import_for_command handle Ctrl-C during those seconds too (one line, no traceback).
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
import threading
from collections.abc import Callable

from emotion_pipeline.errors import UserError, catch_interrupts, exit_interrupted


def predict() -> None:
    """emotion-predict (emotion_pipeline.predict.main)."""
    import_for_command("emotion-predict", "emotion_pipeline.predict")
    from emotion_pipeline.predict import main

    main()


def import_for_command(command: str, *modules: str) -> None:
    """Import a command's heavy modules (torch and transformers take seconds) before it starts, with Ctrl-C or
    SIGTERM meanwhile ending the process at once: one line, exit 128 + the signal number, nothing written yet.
    A KeyboardInterrupt raised there instead would be a traceback, or worse: it can land inside a C++ callback
    of torch's import, which cannot carry a Python exception and aborts the process. Afterwards the handlers
    are the earlier ones again, and the command's own handling (run_command) applies."""

    def leave(signum, frame):
        exit_interrupted(signum, f"{command} stopped while starting; nothing was written")

    previous = catch_interrupts(leave)
    try:
        for module in modules:
            importlib.import_module(module)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def run_command(body: Callable[[], object], interrupted: str = "nothing was written") -> None:
    """Run a command-line tool's body (predict, compare, aggregate, tune, batch, serve): a UserError ends it as a
    stage's does, one `error: ...` paragraph on stderr and exit 2; Ctrl-C or SIGTERM raises KeyboardInterrupt in
    the body (whose `finally` blocks clean up), then one line saying what state it left (``interrupted``) and
    exit 128 + the signal number, never a traceback. A closed output pipe (`| head`) ends it quietly."""
    received: list[int] = []

    def interrupt(signum, frame):
        received.append(signum)
        raise KeyboardInterrupt

    # Only the main thread may set handlers (a test may call a command's main() from another).
    previous = catch_interrupts(interrupt) if threading.current_thread() is threading.main_thread() else {}
    try:
        body()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        exit_interrupted(received[0] if received else signal.SIGINT, interrupted)
    except BrokenPipeError:  # the reader left (`| head`): end as a Unix tool does, without a word
        os._exit(128 + signal.SIGPIPE)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
