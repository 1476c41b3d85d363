"""Scoring large files: emotion-predict --file vs emotion-batch (Ray Data, --actors actors) on 100,000 and
1,000,000 lines, their lines/s and peak memory.

    python benchmarks/batch_scale.py                                   # the full run (an hour or more on 2 cores)
    python benchmarks/batch_scale.py --lines 5000 --model int8         # a quick check
    python benchmarks/batch_scale.py --export models/export --lines 100000

The input is generated from the --data file's texts (test.txt, `text;label` lines), repeated to the
line count, one text per line. The model is built as benchmarks/predict_throughput.py builds it (a random
LoRA on MiniLM, merged) and, for --model int8, quantised by the quantize stage's code. Each command
runs as its own process; its wall time includes start-up (Ray's included), and its peak memory is
the largest sum, sampled every 0.2 s, of the resident memory of it and all its descendants (for
emotion-batch: Ray's GCS, raylet and workers, which are all started under it). Memory that stays flat
from 100,000 to 1,000,000 lines is what streaming promises; emotion-predict reads the whole file first.
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.predict_throughput import bench_models  # noqa: E402


def write_lines(texts: list[str], count: int, path: Path) -> Path:
    with path.open("w", encoding="utf-8") as handle:
        for text in itertools.islice(itertools.cycle(texts), count):
            handle.write(text + "\n")
    return path


def tree_rss(process) -> int:
    """Resident bytes of a process and all its descendants (those that vanish mid-count are skipped)."""
    import psutil

    total = 0
    for member in [process, *process.children(recursive=True)]:
        try:
            total += member.memory_info().rss
        except psutil.Error:
            pass
    return total


def measure(command: list[str], stdout) -> tuple[float, float]:
    """(wall seconds, peak MiB of the process tree) of one command."""
    import psutil

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    # stderr to a file, not a pipe: nothing reads a pipe while the command runs, and a full one blocks it.
    with tempfile.TemporaryFile("w+") as stderr:
        began = time.perf_counter()
        process = subprocess.Popen(command, stdout=stdout, stderr=stderr, text=True, env=env)
        watched = psutil.Process(process.pid)
        peak = 0
        while process.poll() is None:
            try:
                peak = max(peak, tree_rss(watched))
            except psutil.Error:
                pass
            time.sleep(0.2)
        wall = time.perf_counter() - began
        if process.returncode != 0:
            stderr.seek(0)
            raise SystemExit(f"{' '.join(command)} exited {process.returncode}:\n{stderr.read()[-3000:]}")
    return wall, peak / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", help="a trained export folder (models/export); default: build one from --base")
    parser.add_argument("--base", help="base model folder (default: all-MiniLM-L6-v2 from PyPI)")
    parser.add_argument("--model", choices=["int8", "fp32"], default="int8", help="which model to score with (default: int8)")
    parser.add_argument("--data", default=str(REPO.parent / "shared/data/emotion/test.txt"))
    parser.add_argument("--lines", type=int, nargs="+", default=[100_000, 1_000_000], help="input sizes (default: 100000 1000000)")
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--engines", nargs="+", choices=["predict", "batch"], default=["predict", "batch"])
    args = parser.parse_args()
    texts = [line.rsplit(";", 1)[0] for line in Path(args.data).read_text(encoding="utf-8").splitlines()]

    workdir = Path(tempfile.mkdtemp(prefix="batch-bench-"))
    model = bench_models(args.export, args.base, workdir, int8=args.model == "int8")[args.model]

    bin_dir = Path(sys.executable).parent
    rows = []
    for count in args.lines:
        source = write_lines(texts, count, workdir / f"lines-{count}.txt")
        for engine in args.engines:
            if engine == "predict":
                output = workdir / f"predict-{count}.jsonl"
                with output.open("w") as handle:
                    wall, peak = measure([str(bin_dir / "emotion-predict"), str(model), "--file", str(source),
                                          "--batch-size", str(args.batch_size)], handle)
                name = "emotion-predict --file"
            else:
                output = workdir / f"batch-{count}.parquet"
                wall, peak = measure([str(bin_dir / "emotion-batch"), str(model), "--input", str(source), "--output",
                                      str(output), "--actors", str(args.actors), "--batch-size", str(args.batch_size)],
                                     subprocess.DEVNULL)
                name = f"emotion-batch ({args.actors} actors)"
            rows.append((count, name, wall, peak))
            print(f"  {count:,} lines, {name}: {count / wall:,.0f} lines/s, peak {peak:,.0f} MiB", file=sys.stderr)
            output.unlink()
        source.unlink()

    print(f"\nmodel {args.model} ({args.export or 'a random LoRA on ' + (args.base or 'all-MiniLM-L6-v2')}), batch size {args.batch_size}, "
          f"{os.cpu_count()} CPUs; wall time includes start-up; peak memory: the command and all its descendants\n")
    print("| lines | command | wall | lines/s | peak memory |\n| --- | --- | --- | --- | --- |")
    for count, name, wall, peak in rows:
        print(f"| {count:,} | {name} | {wall:,.1f} s | {count / wall:,.0f} | {peak:,.0f} MiB |")


if __name__ == "__main__":
    main()
