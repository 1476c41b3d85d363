"""The one exception type for mistakes a user can fix, and the stage entry wrapper that reports it."""

from __future__ import annotations

import importlib
import logging
import signal
import sys


class UserError(Exception):
    """Bad params, data or model path: reported as one paragraph, never as a traceback."""


def run_stage(module: str) -> None:
    """Import a stage module and run its main(): a UserError exits 2 with its message; Ctrl-C or SIGTERM
    exits 128 + the signal number with one line.

    The module is imported only once the signals are handled: importing torch and transformers
    takes seconds, and Ctrl-C then must not print a traceback either. Outputs are only ever
    moved into place complete (emotion_pipeline.io), so an interrupted stage leaves the previous
    ones as they were; training resumes from its last checkpoint.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    stage = module.rsplit(".", 1)[-1]
    received: list[int] = []

    def interrupt(signum, frame):
        received.append(signum)
        raise KeyboardInterrupt

    # SIGTERM (kill, Slurm, a queue being stopped) ends the stage the same way as Ctrl-C.
    previous = {signum: signal.signal(signum, interrupt) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        importlib.import_module(module).main()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except BaseException:
        # Libraries sometimes turn the KeyboardInterrupt into their own exception on the way up;
        # a signal received is what decides that this was an interruption, not a crash.
        if not received:
            raise
        name = signal.Signals(received[0]).name
        print(f"interrupted ({name}): the {stage} stage stopped before finishing; earlier outputs are intact "
              f"(nothing half-written was put in place). Run it again to finish.", file=sys.stderr)
        sys.exit(128 + received[0])
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
