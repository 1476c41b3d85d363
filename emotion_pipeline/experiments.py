"""Experiments as DVC sees them, for every command that lists them (tune, aggregate): the `dvc` commands run through
this interpreter's DVC, the experiments `dvc exp show` lists (asked again while it races with a finishing
experiment), and a failed experiment's one-paragraph error."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from emotion_pipeline.errors import UserError


def dvc(*args: str, check: bool = True, timeout_s: float | None = None) -> subprocess.CompletedProcess:
    """A dvc command in this project, through this interpreter's DVC. Its bin folder goes first on PATH: DVC
    starts queue workers as `dvc` from PATH, which must be this DVC even when the venv is not activated.
    With timeout_s, a command still running then is killed and subprocess.TimeoutExpired raised."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = subprocess.run([sys.executable, "-m", "dvc", *args], capture_output=True, text=True, env=env,
                            timeout=timeout_s)
    if check and result.returncode != 0:
        raise UserError(f"dvc {' '.join(args[:3])} failed: {last_error(result.stderr + result.stdout)}")
    return result


def check_dvc_version() -> None:
    """tune reads DVC's executor files (.dvc/tmp/exps/run/*/*.run), which are not a public API: say so once when the
    DVC installed is not the one the lock pins, with which that was written."""
    import dvc

    lock = Path(__file__).resolve().parents[1] / "requirements" / "runtime.txt"
    pinned = re.search(r"^dvc==(\S+)", lock.read_text(encoding="utf-8"), re.M) if lock.is_file() else None
    if pinned and pinned.group(1) != dvc.__version__:
        print(f"warning: DVC {dvc.__version__} is installed, the lock pins {pinned.group(1)}: tune relies on DVC's "
              f"experiment files, written against the pinned one. Install from the lock if trials are not noticed "
              f"when they finish.", file=sys.stderr)


# `dvc exp show` lists the running experiments, then opens each one's copy under .dvc/tmp/exps/. An experiment
# that finishes in between has removed its copy, and the command fails in one of several ways, each seen in CI:
# "directory '.../.dvc/tmp/exps/tmpXXXX/.dvc' does not exist", "_pygit2.NotFoundError: object not found", or no
# answer at all (its git library, pygit2's BlobIO, waits forever on a read of the vanished copy; pygit2 issue
# #1488 is a deadlock of the same reader). A moment later the experiment is listed as finished. So a failure or
# a command that outlives EXP_SHOW_TIMEOUT_S (alone it answers in seconds, under load in well under a minute) is
# asked again; only the last of EXP_SHOW_ATTEMPTS tries is reported.
EXP_SHOW_ATTEMPTS = 5


EXP_SHOW_TIMEOUT_S = 120.0


def show_experiments(attempts: int = EXP_SHOW_ATTEMPTS, pause_s: float = 2.0,
                     timeout_s: float = EXP_SHOW_TIMEOUT_S) -> list:
    """`dvc exp show --json`, asked up to `attempts` times while it fails or does not answer within timeout_s."""
    for attempt in range(1, attempts + 1):
        try:
            result = dvc("exp", "show", "--json", check=False, timeout_s=timeout_s)
        except subprocess.TimeoutExpired:
            problem = f"it did not answer within {timeout_s:g} s"
        else:
            if result.returncode == 0:
                return json.loads(result.stdout or "[]")
            problem = last_error(result.stderr + result.stdout)
        if attempt < attempts:
            time.sleep(pause_s)
    raise UserError(f"dvc exp show --json failed {attempts} times in a row; the last time: {problem}")


def experiment_rows() -> dict[str, dict]:
    """Every experiment of the project by name, from `dvc exp show --json`: executor state, log, params, metrics."""
    shown = show_experiments()
    rows = {}
    for baseline in shown:
        for experiment in baseline.get("experiments") or []:
            revision = (experiment.get("revs") or [{}])[0]
            executor = experiment.get("executor") or {}
            rows[experiment["name"]] = {"state": executor.get("state") or ("success" if revision.get("data") else None),
                                        "log": (executor.get("local") or {}).get("log"),
                                        "rev": revision.get("rev"), "data": revision.get("data") or {}}
    return rows


def flat_values(data: dict) -> dict:
    """An experiment's params and metrics as `dvc exp show` names its columns: ``train.seed`` for params.yaml's keys,
    ``FILE:key.sub`` for every other params file's and for metrics (e.g. ``metrics/test.json:macro_f1``)."""
    flat = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix and not prefix.endswith(":") else f"{prefix}{key}", inner)
        else:
            flat[prefix] = value

    for kind in ("params", "metrics"):
        for file, content in (data.get(kind) or {}).items():
            walk("" if (kind, file) == ("params", "params.yaml") else f"{file}:", (content or {}).get("data") or {})
    return flat


def last_error(text: str) -> str:
    """The one-paragraph error a failed experiment printed: our stages' `error: ...` line, else DVC's last ERROR."""
    ours = re.search(r"(?<![A-Za-z_])error: (.+)", text)  # not always at a line start: a progress bar may precede it
    if ours:
        return ours.group(1).strip()
    lines = [line.strip() for line in re.split(r"[\r\n]+", text) if line.strip()]
    theirs = [line.removeprefix("ERROR: ") for line in lines if line.startswith("ERROR: ")]
    return theirs[-1] if theirs else lines[-1] if lines else "no output"


def failure_message(row: dict) -> str:
    log = Path(row["log"]) if row.get("log") else None
    if log is None or not log.is_file():
        return "the experiment failed (no log kept; see `dvc queue logs`)"
    return last_error(log.read_text(encoding="utf-8", errors="replace"))
