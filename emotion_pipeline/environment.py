"""What computed a result, and the process settings that must be fixed before torch loads.

Same params, code, data and locked environment give the same bytes on the same kind of CPU; when two runs differ,
their environment blocks (environment_record, in every stage's outputs) say why: the lock, the versions that decide
results, the torch build, the CPU instruction set its kernels dispatch to, the CPU model, threads, device and dtype.

Read once, when torch and its libraries load, so `python -m stages` sets them before it imports a stage (torchrun's
workers inherit them): compute.portable's caps of the kernel dispatch at AVX2 (ATen, MKL, oneDNN: the same kernels
on every x86-64 host; checked by the stage, so a run never records a mode it did not have), and for a training run
of one process, CUDA_VISIBLE_DEVICES narrowed to the one GPU compute.device names.
"""

from __future__ import annotations

import hashlib
import os
import platform
import sys
from importlib import metadata
from pathlib import Path

import yaml

from emotion_pipeline.errors import UserError
from emotion_pipeline.paths import PARAMS_FILE, RUNTIME_LOCK

# The packages whose versions decide what a stage computes (and how it reads and writes).
RESULT_PACKAGES = ("torch", "transformers", "peft", "accelerate", "datasets", "tokenizers", "safetensors", "numpy",
                   "scikit-learn", "scipy", "pandas", "pyarrow", "onnx", "onnxscript", "onnxruntime", "dvc", "dvclive")

# compute.portable: the kernel dispatch capped at AVX2, which every x86-64 CPU of the last decade has.
PORTABLE_DISPATCH = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
# Set by pin_training_gpu to the compute.device it narrowed CUDA_VISIBLE_DEVICES to.
PINNED_GPU = "EMOTION_PIPELINE_PINNED_GPU"


def pin_kernel_dispatch(portable: bool) -> None:
    """Set (portable) the dispatch caps for this process and its children; call before torch is imported."""
    if portable:
        os.environ.update(PORTABLE_DISPATCH)


def portable_requested(params_file: Path = PARAMS_FILE) -> bool:
    """compute.portable as params.yaml says it, read before torch loads; anything unreadable counts as false here
    and is reported by the stage's own load_params, in one paragraph naming the key."""
    try:
        compute = (yaml.safe_load(params_file.read_text()) or {}).get("compute") or {}
    except (OSError, yaml.YAMLError, AttributeError):
        return False
    return compute.get("portable") is True


def visible_gpu_for(device: str, processes: int, visible: str | None) -> str | None:
    """CUDA_VISIBLE_DEVICES for a one-process training run: only the GPU compute.device names (None: leave it).

    The HF Trainer in one process uses every GPU it sees (nn.DataParallel: the global batch becomes batch_size x
    GPUs while the run says batch_size) and always starts at cuda:0. Narrowing what the process sees, before torch
    initialises CUDA, makes it train on exactly the GPU asked for; more GPUs are more processes (torchrun), each on
    the GPU of its LOCAL_RANK. ``visible``: CUDA_VISIBLE_DEVICES as it is, indexes count within it.
    """
    if processes != 1 or not (device == "auto" or device.startswith("cuda")):
        return None
    gpus = [gpu.strip() for gpu in visible.split(",") if gpu.strip()] if visible is not None else None
    index = int(device.split(":")[1]) if ":" in device else 0
    if gpus is None:
        return str(index)
    return gpus[index] if index < len(gpus) else None  # none visible, or no such GPU: choose_device reports it


def pin_training_gpu(params_file: Path = PARAMS_FILE) -> None:
    """Narrow CUDA_VISIBLE_DEVICES for the train stage (visible_gpu_for); call before torch is imported."""
    try:
        compute = (yaml.safe_load(params_file.read_text()) or {}).get("compute") or {}
        device = str(compute.get("device", "auto"))
        processes = int(compute.get("nproc_per_node", 1)) * int(compute.get("nnodes", 1))
    except (OSError, yaml.YAMLError, AttributeError, TypeError, ValueError):
        return  # the stage's load_params reports what is wrong, in one paragraph naming the key
    gpu = visible_gpu_for(device, processes, os.environ.get("CUDA_VISIBLE_DEVICES"))
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
        os.environ[PINNED_GPU] = device  # choose_device: that GPU is now the process's cuda:0


def check_kernel_dispatch(portable: bool, stage: str) -> None:
    """The stage computes in the mode its params ask for, or stops here (before any work) saying why."""
    pinned = all(os.environ.get(name) == value for name, value in PORTABLE_DISPATCH.items())
    if portable and not pinned:
        raise UserError(f"compute.portable is true, but the {stage} stage was started without the kernel dispatch "
                        f"pinned ({', '.join(f'{k}={v}' for k, v in PORTABLE_DISPATCH.items())}), which must be set "
                        f"before torch is imported: run it as `python -m stages {stage}` (as dvc.yaml does), or set "
                        f"those variables yourself.")


def runtime_lock_sha256(lock: Path = RUNTIME_LOCK) -> str | None:
    """sha256 of the runtime lock the project holds (None when there is none, e.g. the package used as a library)."""
    return hashlib.sha256(lock.read_bytes()).hexdigest() if lock.is_file() else None


def cpu_model() -> str:
    """The CPU's marketing name, as Linux reports it ('AMD EPYC 9B14'), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def environment_record(device=None, dtype=None) -> dict:
    """The environment block of a stage's outputs. Deterministic on one host: no time, host name or path in it.

    The torch lines (build, CPU capability, threads) are there when the stage computed with torch; a stage
    that never imports torch (prepare, baseline) is not made to import it to be described.
    """
    record: dict = {
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.machine()}",
        "cpu": cpu_model(),
        "runtime_lock_sha256": runtime_lock_sha256(),
        "kernel_dispatch": ", ".join(f"{name}={os.environ[name]}" for name in PORTABLE_DISPATCH if name in os.environ)
        or "default",
    }
    torch = sys.modules.get("torch")
    if torch is not None:
        record["torch_build"] = f"cuda {torch.version.cuda}" if torch.version.cuda else "cpu"
        record["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        record["threads"] = torch.get_num_threads()
    if device is not None:
        record["device"] = str(device)
        if getattr(device, "type", None) == "cuda":
            record["gpu"] = torch.cuda.get_device_name(device)
            record["cuda_visible_devices"] = os.environ.get("CUDA_VISIBLE_DEVICES", "all")
            record["cudnn"] = torch.backends.cudnn.version()
    if dtype is not None:
        record["dtype"] = str(dtype).removeprefix("torch.")
    record["versions"] = {name: package_version(name) for name in RESULT_PACKAGES}
    return record
