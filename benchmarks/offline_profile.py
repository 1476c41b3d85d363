"""The offline CPU profile against the TF-IDF baseline, full data: quality, wall time, peak memory.

    python benchmarks/offline_profile.py [--data ../shared/data/emotion] [--workdir /tmp/offline-bench]

Works in a fresh clone of this repository (committed code only): applies the offline CPU profile
(profiles/offline_cpu.py) to its params.yaml, then runs every stage with `dvc repro -s <stage>`,
timing each and reading the peak resident memory of its process tree from the kernel (wait4).
Prints one table per stage and one per model, then `dvc metrics show`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "profiles"))
from offline_cpu import DATA_DIR, MODEL_DIR, minilm_path, overrides, track  # noqa: E402  (a script folder, not a package)

STAGES = ["prepare", "baseline", "train", "evaluate", "export"]


def timed(command: list[str], cwd: Path, env: dict) -> tuple[float, float]:
    """Wall seconds and peak RSS in MiB of ``command`` and every process it waited for."""
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, env=env)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{' '.join(command)} failed")
    return seconds, usage.ru_maxrss / 1024  # Linux reports KiB


def apply_overrides(params_file: Path, values: dict[str, str]) -> None:
    params = yaml.safe_load(params_file.read_text())
    for dotted, value in values.items():
        section, key = dotted.split(".")
        params[section][key] = yaml.safe_load(value) if key != "name" and key != "source" else value
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str((REPO.parent / "shared/data/emotion").resolve()))
    parser.add_argument("--workdir", help="where to clone the project (default: a temporary folder)")
    args = parser.parse_args()

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="offline-bench-")) / "project"
    shutil.rmtree(workdir, ignore_errors=True)
    subprocess.run(["git", "clone", "-q", str(REPO), str(workdir)], check=True)
    track(Path(args.data), DATA_DIR, workdir)
    track(minilm_path(), MODEL_DIR, workdir)
    apply_overrides(workdir / "params.yaml", overrides())
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}

    results = {}
    for stage in STAGES:
        results[stage] = timed([sys.executable, "-m", "dvc", "repro", "-s", stage], workdir, env)

    metrics = {name: json.loads((workdir / f"metrics/{name}.json").read_text()) for name in ("test", "baseline")}
    print("\n| stage | wall time | peak memory |\n| --- | --- | --- |")
    for stage, (seconds, mib) in results.items():
        print(f"| {stage} | {seconds / 60:.1f} min | {mib:,.0f} MiB |")
    fine_tune = ["prepare", "train", "evaluate", "export"]
    rows = [
        ("TF-IDF + logistic regression (baseline)", metrics["baseline"], ["prepare", "baseline"]),
        ("all-MiniLM-L6-v2 + LoRA (offline CPU profile)", metrics["test"], fine_tune),
    ]
    print("\n| model | test accuracy | test macro-F1 | wall time (stages) | peak memory |\n| --- | --- | --- | --- | --- |")
    for name, scores, stages in rows:
        wall = sum(results[s][0] for s in stages)
        peak = max(results[s][1] for s in stages)
        print(f"| {name} | {scores['accuracy']:.4f} | {scores['macro_f1']:.4f} | {wall / 60:.1f} min "
              f"({' + '.join(stages)}) | {peak:,.0f} MiB |")
    total = sum(seconds for seconds, _ in results.values())
    print(f"\nAll stages together: {total / 60:.1f} min wall time on {os.cpu_count()} CPU cores.\n")
    subprocess.run([sys.executable, "-m", "dvc", "metrics", "show"], cwd=workdir, env=env, check=True)
    print(f"\nThe project copy with every output is in {workdir}")


if __name__ == "__main__":
    main()
