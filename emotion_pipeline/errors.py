"""The one exception type for mistakes a user can fix, the one way a run ends on Ctrl-C or SIGTERM, and the stages'
entry wrapper that reports both (commands have theirs in emotion_pipeline.commands)."""

from __future__ import annotations

import importlib
import logging
import os
import signal
import sys


class UserError(Exception):
    """Bad params, data or model path: reported as one paragraph, never as a traceback."""


def first_line(exc: BaseException, default: str | None = None) -> str:
    """The first line of an exception's message, for a one-paragraph error; ``default`` (else the
    exception's type name) when it has none. Library messages often run to many lines."""
    return str(exc).splitlines()[0] if str(exc).strip() else (default or type(exc).__name__)


def under_torchrun() -> bool:
    """True in a process that torchrun started (it sets TORCHELASTIC_RUN_ID for its workers)."""
    return "TORCHELASTIC_RUN_ID" in os.environ


def catch_interrupts(handler) -> dict:
    """Send Ctrl-C and SIGTERM (kill, Slurm, a queue being stopped) alike to ``handler``; returns the handlers it
    replaced. Set for SIGINT even where it was ignored: a shell script's `cmd &` starts a job with SIGINT ignored."""
    return {signum: signal.signal(signum, handler) for signum in (signal.SIGINT, signal.SIGTERM)}


def exit_interrupted(signum: int, left: str | None) -> None:
    """One line on stderr saying what the interruption ``left`` (none if None), then exit 128 + signum at once (no
    exit handler of a half-imported or half-run library prints after it)."""
    if left:
        print(f"interrupted ({signal.Signals(signum).name}): {left}.", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(128 + signum)


def run_stage(module: str, stage: str | None = None) -> None:
    """Import a stage module and run its main(): a UserError exits 2 with its message; Ctrl-C or SIGTERM
    exits 128 + the signal number with one line.

    Signals are handled before the module is imported: importing torch and transformers takes
    seconds, and Ctrl-C then must not print a traceback either. Outputs are only ever moved into
    place complete (emotion_pipeline.io), so an interrupted stage leaves the previous ones as they
    were; training resumes from its last checkpoint.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    stage = stage or module.rsplit(".", 1)[-1]  # the launcher of a training run speaks for the train stage
    importing = True
    received: list[int] = []

    def interrupt(signum, frame):
        received.append(signum)
        if importing:
            # Nothing is written yet. Raising here could land inside a C++ callback of torch's import,
            # which cannot carry a Python exception and aborts the process: leave at once instead.
            stage_interrupted(stage, signum)
        raise KeyboardInterrupt

    previous = catch_interrupts(interrupt)
    try:
        main = importlib.import_module(module).main
        importing = False
        main()
    except UserError as exc:
        # Under `dvc repro` / `dvc exp run`, DVC removed the stage's cached outputs before starting it.
        restore = " (DVC removed this stage's outputs before running it: `dvc checkout` restores the last complete " \
                  "ones.)" if "DVC_STAGE" in os.environ else ""
        print(f"error: {exc}{restore}", file=sys.stderr)
        sys.exit(2)
    except BaseException:
        # Libraries sometimes turn the KeyboardInterrupt into their own exception on the way up;
        # a signal received is what decides that this was an interruption, not a crash.
        if not received:
            raise
        stage_interrupted(stage, received[0])
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def stage_interrupted(stage: str, signum: int) -> None:
    # Under `dvc repro`, DVC itself removed the stage's cached outputs before starting it.
    kept = ("nothing half-written was put in place; the outputs of the last complete run are in the DVC cache "
            "(`dvc checkout` restores them)" if "DVC_STAGE" in os.environ else "earlier outputs are intact "
            "(nothing half-written was put in place)")
    # A process that torchrun started leaves the one line to the stage process that launched it.
    exit_interrupted(signum, None if under_torchrun() else f"the {stage} stage stopped before finishing; {kept}. "
                                                           f"Run it again to finish")
