"""The training log: Trainer callbacks that feed dvclive, so `dvc plots` shows loss and validation scores per step.

Both callbacks exist so that a run resumed from a checkpoint logs exactly what an uninterrupted
run logs, byte for byte: the same loss windows and the same curves.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from dvclive import Live
from transformers import TrainerCallback


def open_live(log_dir: Path) -> Live:
    """A dvclive logger that writes plots and a summary only: no dvc.yaml edits, no experiment of its own, no report."""
    return Live(log_dir, dvcyaml=False, save_dvc_exp=False, report=None)


class LogAtEpochEnd(TrainerCallback):
    """Close the training-loss window at each epoch end, where checkpoints are saved.

    A run resumed from a checkpoint then logs exactly the windows an uninterrupted run logs,
    so its loss curve and mean loss are identical too.
    """

    def on_epoch_end(self, args, state, control, **kwargs):
        if state.global_step % args.logging_steps != 0:  # otherwise this step was just logged
            control.should_log = True


class LiveLogger(TrainerCallback):
    """Sends Trainer logs to dvclive at the optimiser step they belong to, from global rank 0 only
    (in a run of several processes the others log nothing: one log, written once).

    On resume, Trainer restores the log history from the checkpoint; replaying it into a fresh
    Live makes the plots of a resumed run identical to those of an uninterrupted one.
    """

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.live: Live | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        self.live = open_live(self.log_dir)
        for entry in state.log_history:
            self._log(entry)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.live is not None:
            self._log({**(logs or {}), "step": state.global_step})

    def on_train_end(self, args, state, control, **kwargs):
        if self.live is not None:
            self.live.end()

    def _log(self, entry: dict) -> None:
        if "train_runtime" in entry:  # the end-of-training summary: single values, not curves
            return
        self.live.step = entry["step"]
        # Sorted: the summary file keeps keys in first-logged order, and a resumed run replays
        # its history from entries whose keys come in another order than live logs.
        for key, value in sorted(entry.items()):
            if key not in ("step", "epoch") and isinstance(value, (int, float)) and not key.endswith(("runtime", "_per_second")):
                section = "eval" if key.startswith("eval_") else "train"
                self.live.log_metric(f"{section}/{key.removeprefix('eval_')}", value)
        self.live.make_summary()


class StepTimer(TrainerCallback):
    """Wall time of each optimiser step (forward, backward, optimiser; not evaluation or saving), for train_run.json:
    the median is the figure to project a run's time from, and to compare machines or settings with."""

    def __init__(self) -> None:
        self.durations: list[float] = []
        self._started = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.durations.append(time.perf_counter() - self._started)

    def median(self) -> float | None:
        return round(statistics.median(self.durations), 6) if self.durations else None


def mean_train_loss(log_history: list[dict]) -> float:
    """Mean training loss over all steps, from the logged window means.

    Trainer's own train_loss only covers the steps since the last resume; the log history,
    restored from the checkpoint, covers the whole run.
    """
    total, previous_step = 0.0, 0
    for entry in log_history:
        if "loss" in entry:
            total += entry["loss"] * (entry["step"] - previous_step)
            previous_step = entry["step"]
    return total / max(previous_step, 1)
