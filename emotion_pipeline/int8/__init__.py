"""The int8 CPU model: the exported classifier as ONNX, its transformer blocks fused for ONNX Runtime,
its weights quantised to int8 per channel.

The build, top to bottom (build_int8):

    export_onnx   torch.onnx.export (dynamo) -> fp32 graph
    fuse          onnxscript's ONNX Runtime fusions, then our rewrite rules (rules.RULES, in order)
    check_fused   the fused graph gives the export's logits on a padded batch
    quantize      int8 weights per channel
    + the ONNX Runtime session options the graph is built for, config.json and the tokenizer beside it

Why these steps, measured on the offline-profile MiniLM (benchmarks/README.md):
- ``torch.onnx.export`` with ``dynamo=True``: the TorchScript exporter traces transformers 5's
  attention-mask code wrongly (logits off by up to 2 on padded batches); the dynamo exporter
  matches torch to ~3e-6. (optimum-onnx, the usual route, requires transformers < 4.58.)
- onnxscript's ONNX Runtime fusions (``fuse``): one op per attention block, GELU, RMSNorm, so
  fewer, larger kernels run per layer; then a few corrections and rewrites of ours, one module each
  in this package (rules.py lists them in order, with what each needs from the ones before): Qwen3-type
  attention as ONNX's own Attention on the model's K/V heads with fused rotary embeddings, and the
  last layer computed only for the token the classifier reads.
- ``quantize_dynamic`` with per-channel int8 weights: activations are quantised per batch at run
  time, so no calibration data is needed; per-channel scales keep macro-F1 within the gate where
  per-tensor ones (and torch's own dynamic quantisation) lose ~0.01.

The result runs with onnxruntime alone (``emotion_pipeline.inference.predict.OnnxClassifier``, or a plain
``onnxruntime.InferenceSession`` given the session options in SESSION_OPTIONS_FILE: README, "int8 on
the CPU"); config.json and the tokenizer are copied beside it, so labels and a stored class bias travel with it.
"""

from __future__ import annotations

import json
import logging
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from emotion_pipeline.inference.predict import ONNX_FILE, SESSION_OPTIONS_FILE
from emotion_pipeline.int8 import rules

# Protobuf cannot hold a file over 2 GiB: larger models keep their weights in a side file.
PROTOBUF_LIMIT = 2**31 - 2**26

# The ONNX Runtime session options the graph is built for, written beside it (SESSION_OPTIONS_FILE) as
# session config entries: the one form every ONNX Runtime API takes (Python SessionOptions.add_session_config_entry,
# C/C++ AddSessionConfigEntry, C#, Java). ONNX Runtime's own way of carrying options inside the model
# (metadata "ort_config" with ORT_LOAD_CONFIG_FROM_MODEL=1) takes thread counts, execution mode,
# optimisation level and profiling only (onnxruntime 1.32: other keys are ignored), not disabled optimizers.
# OnnxClassifier (emotion_pipeline.inference.predict) reads this file; README ("int8 on the CPU") gives the plain recipe.
SESSION_CONFIG_ENTRIES = {
    # ONNX Runtime's SkipLayerNorm fusion would undo split_skip_layer_norm at load time (the fused op runs
    # ~3.5x slower here). Measured with onnxruntime 1.32: its fusion does not match the split graph (it
    # needs a fixed sequence length and the bias added before the residual), so today this changes nothing;
    # it keeps the split independent of that. Several optimizers: separated by ";".
    "optimization.disable_specified_optimizers": "SkipLayerNormFusion",
}


class _LogitsOnly(torch.nn.Module):
    """The classifier with the two inputs every tokenizer gives and one output, for a plain ONNX signature."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


def build_int8(export_dir: Path, out_dir: Path) -> dict[str, int]:
    """export_dir (a saved fp32 classifier) -> out_dir/model.onnx (int8) + its session options, config.json and
    tokenizer files. Returns the fusions and rewrites made (fuse)."""
    with tempfile.TemporaryDirectory(prefix="onnx-", dir=out_dir) as scratch, _library_chatter_muted():
        fp32, fused = Path(scratch) / "fp32" / ONNX_FILE, Path(scratch) / "fused" / ONNX_FILE
        fp32.parent.mkdir()
        fused.parent.mkdir()
        export_onnx(export_dir, fp32)
        fusions = fuse(fp32, fused)
        tokenizer = AutoTokenizer.from_pretrained(export_dir)
        check_fused(fp32, fused, tokenizer)
        quantize(fused, out_dir / ONNX_FILE)
    write_session_options(out_dir)
    AutoConfig.from_pretrained(export_dir).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return fusions


def export_onnx(model_dir: Path, onnx_path: Path) -> None:
    """The fp32 ONNX graph of a saved classifier, with batch and sequence length left dynamic."""
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    # Two texts of different lengths: the traced graph must handle padding.
    example = tokenizer(["an example sentence to trace the graph with", "short"], padding=True, return_tensors="pt")
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    torch.onnx.export(
        _LogitsOnly(model).eval(), (example["input_ids"], example["attention_mask"]), str(onnx_path), dynamo=True,
        input_names=["input_ids", "attention_mask"], output_names=["logits"],
        dynamic_shapes={"input_ids": {0: batch, 1: sequence}, "attention_mask": {0: batch, 1: sequence}},
        external_data=True, verbose=False,
    )


def fuse(onnx_path: Path, fused_path: Path) -> dict[str, int]:
    """Transformer fusions for ONNX Runtime, then our rewrite rules; returns how many of each were made.

    onnxscript's ORT fusions (written for dynamo-exported graphs; onnxruntime's older optimizer finds
    no attention in them) turn each attention block into one Attention / MultiHeadAttention op and
    GELU, RMSNorm and rotary embeddings into single kernels. Our rules (emotion_pipeline.int8.rules)
    then correct four of those fusions for this CPU and the int8 quantiser and add three rewrites for
    speed; each module says why, with its measurements. build_int8 checks them on a padded batch, the
    quantize stage's macro-F1 gate on the test split.
    """
    import onnx_ir as ir
    from onnxscript.optimizer import optimize
    from onnxscript.rewriter.ort_fusions import optimize_for_ort

    model = ir.load(onnx_path)
    # clear_metadata: the exporter stamps every node with its Python stack trace, i.e. paths of this
    # machine (project, virtualenv), which would make the bytes differ between checkouts.
    model, counts = optimize_for_ort(model, clear_metadata=True)
    # Fold constants of any size: the fused Attention's packed Q/K/V weight must be one initializer.
    optimize(model, input_size_limit=2**40, output_size_limit=2**40)
    counts.update(rules.run(model))
    ir.passes.common.RemoveUnusedNodesPass()(model)  # e.g. the additive padding bias no op reads now
    ir.passes.common.ClearMetadataAndDocStringPass()(model)  # the rewriter tags each new op with its rule's name
    ir.save(model, fused_path, external_data=fused_path.name + ".data")
    return {name: count for name, count in counts.items() if count}


def check_fused(fp32_path: Path, fused_path: Path, tokenizer, tolerance: float = 1e-3) -> None:
    """The fused graph must give the exported graph's logits on a padded batch (before quantisation
    adds its own noise): a rewrite that got an architecture wrong fails the build here, instead of
    slipping past the macro-F1 gate, whose length-sorted batches hold almost no padding."""
    import numpy as np
    import onnxruntime as ort

    batch = tokenizer(["a much longer text than the other one, so that the other one is padded well", "short"],
                      padding=True, return_tensors="np")
    feed = {name: batch[name].astype(np.int64) for name in ("input_ids", "attention_mask")}
    logits = [ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)[0]
              for path in (fp32_path, fused_path)]
    difference = float(np.abs(logits[0] - logits[1]).max())
    if not difference <= tolerance:
        raise RuntimeError(f"the fused ONNX graph does not reproduce the exported model on a padded batch (largest logit "
                           f"difference {difference:.3g} > {tolerance}): one of emotion_pipeline.int8.fuse's rewrites does "
                           f"not fit this architecture. Please report it with the model's config.json.")


def quantize(fused_path: Path, int8_path: Path) -> None:
    """int8 weights, one scale per output channel; activations quantised on the fly (no calibration set)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    weights = sum(path.stat().st_size for path in fused_path.parent.iterdir())
    # The quantiser matches op types without their domain: it would take ONNX's own Attention
    # (grouped_query_attention) for ONNX Runtime's, whose int8 form it cannot express. Its projections
    # are MatMuls before it and are quantised like every other.
    onnx_attention = [node.name for node in onnx.load(fused_path, load_external_data=False).graph.node
                      if node.op_type == "Attention" and node.domain in ("", "ai.onnx")]
    quantize_dynamic(str(fused_path), str(int8_path), per_channel=True, reduce_range=True, weight_type=QuantType.QInt8,
                     nodes_to_exclude=onnx_attention, use_external_data_format=weights // 4 > PROTOBUF_LIMIT)


def write_session_options(out_dir: Path) -> None:
    """SESSION_OPTIONS_FILE beside the model: {"session_config_entries": {key: value}}."""
    text = json.dumps({"session_config_entries": SESSION_CONFIG_ENTRIES}, indent=2)
    (out_dir / SESSION_OPTIONS_FILE).write_text(text + "\n", encoding="utf-8")


@contextmanager
def _library_chatter_muted() -> Iterator[None]:
    """The exporter, onnxscript's rewriter and the quantiser log hundreds of INFO/WARNING lines per model
    (every rewrite rule, every skipped tensor, missing torchvision ops). The result is checked on the
    test split afterwards, which says more than those lines."""
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(logging.NOTSET)
