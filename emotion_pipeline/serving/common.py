"""What emotion-serve (Ray Serve) and emotion-batch (Ray Data) share: starting Ray, loading the model in a
worker with a bounded number of threads, and the command-line arguments both take.

Both engines run the project's own predict code in their workers (predict.load_exported and
predict_proba, and predict.score_fields for each text's fields), so labels, scores and the stored class
bias are exactly emotion-predict's; only the way texts reach a worker differs. Ray is imported inside the functions: the core install has no Ray.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
from pathlib import Path

from emotion_pipeline.errors import UserError

# emotion_pipeline.inference.predict (and with it torch and transformers) is imported inside the functions that load a
# model: Ray Data's read tasks unpickle emotion_pipeline.serving.batch, and so this module, in worker processes that
# only read text; importing torch there cost ~300 MiB a worker.


def command_parser(prog: str, usage: str, description: str, workers: str) -> argparse.ArgumentParser:
    """The arguments emotion-serve and emotion-batch share: the model folder, --threads per ``workers`` (replica
    or actor) and --address of a Ray cluster. Each command adds its own."""
    parser = argparse.ArgumentParser(prog=prog, usage=usage, description=description)
    parser.add_argument("model_dir", metavar="MODEL_DIR", help="folder written by the export stage (models/export) or "
                                                               "the quantize stage (models/int8)")
    parser.add_argument("--threads", type=int, help=f"compute threads per {workers} (default: the CPUs / {workers}s)")
    parser.add_argument("--address", help="a Ray cluster to run on (ray://HEAD:10001, HEAD:6379, auto; default: "
                                          "RAY_ADDRESS, else a local Ray)")
    return parser


def check_model(model_dir: str) -> list[str]:
    """The class names of an exported model, checked in the driver as emotion-predict checks it (so a bad folder is
    its one-paragraph UserError before Ray starts, not a traceback from a remote constructor), but without its fp32
    weights in memory (~2.4 GB for Qwen3-0.6B): the workers load those. The config, tokenizer and the weights'
    safetensors headers are read; an int8 graph is loaded (a quarter of the size), since a broken one would
    otherwise fail only inside a worker."""
    from transformers import AutoConfig, AutoTokenizer
    from transformers.utils import logging as transformers_logging

    from emotion_pipeline.inference.predict import ONNX_FILE, OnnxClassifier, class_names, locate_exported, not_loadable

    transformers_logging.disable_progress_bar()
    location = locate_exported(model_dir)
    try:
        if isinstance(location, Path) and (location / ONNX_FILE).is_file():
            return class_names(OnnxClassifier(location, threads=1).config)
        config = AutoConfig.from_pretrained(str(location))
        AutoTokenizer.from_pretrained(str(location))
        if isinstance(location, Path):
            from safetensors import safe_open

            weights = sorted(location.glob("*.safetensors"))
            if not weights:
                raise OSError(f"no *.safetensors weights in {location}")
            for path in weights:
                with safe_open(str(path), framework="pt") as handle:
                    handle.keys()
    except (OSError, ValueError) as exc:
        raise not_loadable(model_dir, exc) from None
    return class_names(config)


def load_in_worker(model_dir: str, threads: int, spinning: bool = True):
    """The model and tokenizer in a worker (a service, a Serve replica or a Data actor), computing on ``threads`` threads.

    Several workers share a machine's cores: each one's torch and ONNX Runtime pools are limited to its
    share, or they would all spin up one thread per core and slow each other down. ``spinning`` False: ONNX
    Runtime's threads sleep between forward passes instead of spinning (a service waits for requests between them;
    spinning would burn that time and take cores from the request handling).
    """
    import torch

    from emotion_pipeline.inference.predict import load_exported

    torch.set_num_threads(threads)
    return load_exported(model_dir, "cpu", threads, spinning)


def worker_threads(workers: int, cpus: float, threads: int | None) -> tuple[int, float]:
    """(threads per worker, CPUs to reserve per worker) for ``workers`` workers on a cluster of ``cpus`` CPUs.

    By default each worker computes on its share of the CPUs; the reservation never asks for more than
    that share, so all workers fit even when --threads oversubscribes the machine on purpose.
    """
    share = cpus / workers
    threads = threads or max(1, int(share))
    return threads, min(float(threads), share)


def require_ray(command: str, module: str = "ray") -> None:
    """Ray Serve, Ray Data and the one-process engine's uvicorn come with the serve extra, not the core install: say
    so, not an ImportError."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise UserError(f"{command} runs on {module}, which the core install leaves out: install the serve extra, "
                        f'`pip install -e ".[serve]"` (ray[serve,data], uvicorn).')


def start_ray(address: str | None):
    """Connect to the Ray cluster at ``address`` (``ray://head:10001``, ``head:6379``, ``auto``) or RAY_ADDRESS,
    else start a local one on this machine, quietly: no dashboard, and workers' logs kept in Ray's log files.

    Returns the ray module. A cluster that cannot be reached is a UserError naming the address.
    """
    import ray

    address = address or os.environ.get("RAY_ADDRESS") or None
    try:
        # Every node of a cluster runs the workers from its own install of this project (README, "Serve and score
        # at scale"), as torchrun's nodes do: nothing is shipped from the driver.
        # ERROR, not WARNING: Ray 2.60 warns on every start that its token authentication is on (as it should be).
        handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
        for signum, handler in handlers.items():  # Ray's core sets a SIGTERM handler of its own (sys.exit(15))
            signal.signal(signum, handler)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise UserError(f"--address {address}: could not connect to a Ray cluster there ({str(exc).splitlines()[0]}). "
                        f"Give the head's client address (ray://HEAD:10001), its GCS address (HEAD:6379) or 'auto' "
                        f"on a node of the cluster; without --address and RAY_ADDRESS, a local Ray is started.") from None
    quiet_ray_loggers()
    return ray


def stop_ray(ray, timeout_s: float = 15) -> None:
    """ray.shutdown(), but never waiting longer than ``timeout_s``: a Ctrl-C from a terminal reaches the local Ray's
    own processes too (they share the process group), and a shutdown that waits on a raylet already gone would
    hang the command after its one line."""
    import threading

    stopping = threading.Thread(target=ray.shutdown, daemon=True)
    stopping.start()
    stopping.join(timeout_s)


def quiet_ray_loggers() -> None:
    """Ray's own start-up chatter off the driver's stderr (Serve sets its logger up again when it starts)."""
    for name in ("ray", "ray.serve", "ray.data"):
        logging.getLogger(name).setLevel(logging.WARNING)
