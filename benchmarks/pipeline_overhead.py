"""Pipeline overhead: wall time of a no-op `dvc repro` on a finished pipeline.

    python benchmarks/pipeline_overhead.py [PROJECT_DIR] [--runs 5]

PROJECT_DIR must hold a finished pipeline (every stage up to date), e.g. the copy that
benchmarks/offline_profile.py leaves behind. Prints each run and the median.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("project", nargs="?", default=".")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}

    times = []
    for _ in range(args.runs):
        start = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=args.project, env=env,
                                capture_output=True, text=True)
        times.append(time.perf_counter() - start)
        if result.returncode != 0 or "Running stage" in result.stdout:
            sys.exit(f"not a no-op: the pipeline in {args.project} is not up to date\n{result.stdout}{result.stderr}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print("| no-op `dvc repro` | median | min | max | peak memory |\n| --- | --- | --- | --- | --- |")
    print(f"| {args.runs} runs | {statistics.median(times):.2f} s | {min(times):.2f} s | {max(times):.2f} s | {peak:,.0f} MiB |")


if __name__ == "__main__":
    main()
