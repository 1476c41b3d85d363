"""Run one pipeline stage: `python -m stages <name>`, as dvc.yaml does (e.g. `python -m stages train`).

The stage module is imported inside emotion_pipeline.errors.run_stage, so that bad input and
Ctrl-C are reported in one line even while torch is still being imported.
"""

import sys

from emotion_pipeline.environment import pin_kernel_dispatch, pin_training_gpu, portable_requested
from emotion_pipeline.errors import run_stage

STAGES = ("prepare", "train", "evaluate", "export", "quantize", "baseline")
# The stages that compute with torch: compute.portable caps their kernel dispatch, which torch reads once, when
# it loads, so it is set here, before the stage module imports torch (each of them checks it and records it).
TORCH_STAGES = ("train", "evaluate", "export", "quantize")

if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in STAGES:
        given = f"unknown stage '{sys.argv[1]}'; " if len(sys.argv) == 2 else ""
        print(f"error: {given}usage: python -m stages {{{','.join(STAGES)}}}", file=sys.stderr)
        sys.exit(2)  # a usage error, as argparse exits
    if sys.argv[1] in TORCH_STAGES:
        pin_kernel_dispatch(portable_requested())
    if sys.argv[1] == "train":  # one training process = one GPU, the one compute.device names
        pin_training_gpu()
    run_stage(f"stages.{sys.argv[1]}")
