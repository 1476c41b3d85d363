"""The int8 build's rewrite rules, one at a time, on graphs of a few ops (emotion_pipeline.int8.rules):
each fires where its pattern is (and ONNX Runtime gives the same outputs before and after), leaves a
graph alone where it is not, and the rule list refuses a wrong order and skips a rule whose graph
condition does not hold. Plus the session options beside the model, applied by OnnxClassifier and by
the plain-onnxruntime recipe of the README. Seconds in all: the real models are tests/test_int8.py's.
"""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from emotion_pipeline.inference.predict import ONNX_FILE, OnnxClassifier
from emotion_pipeline.int8 import (
    SESSION_OPTIONS_FILE,
    drop_equal_qkv_hidden_sizes,
    grouped_query_attention,
    padding_mask_index,
    pooled_query_attention,
    pooled_token_only,
    rules,
    split_bias_gelu,
    split_skip_layer_norm,
    write_session_options,
)

RNG = np.random.default_rng(0)
FLOAT, INT64 = TensorProto.FLOAT, TensorProto.INT64
TOKENS = ["batch", "sequence"]


def weight(*shape: int) -> np.ndarray:
    return RNG.normal(0, 0.3, shape).astype(np.float32)


def tensor(name: str, elem_type: int, *dims) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, list(dims))


def graph_model(nodes, inputs, outputs, initializers: dict | None = None, value_info=(), opset: int = 20) -> onnx.ModelProto:
    """A model of these nodes, with the shapes ONNX's shape inference gives (the rules read shapes, as the
    fused graph has them from the exporter); ``value_info`` for what it cannot infer (contrib ops)."""
    graph = helper.make_graph(nodes, "g", inputs, outputs,
                              [numpy_helper.from_array(array, name) for name, array in (initializers or {}).items()],
                              value_info=list(value_info))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid("com.microsoft", 1)])
    return onnx.shape_inference.infer_shapes(model)


def rewritten(proto: onnx.ModelProto, apply) -> tuple[ir.Model, int]:
    model = ir.from_proto(proto)
    return model, apply(model)


def ops(model: ir.Model) -> Counter:
    return Counter(node.op_type for node in model.graph)


def outputs(model: ir.Model | onnx.ModelProto, feed: dict) -> list[np.ndarray]:
    """The graph as written (ONNX Runtime's own graph rewrites off)."""
    proto = ir.to_proto(model) if isinstance(model, ir.Model) else model
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, feed)


def assert_same_outputs(before: onnx.ModelProto, after: ir.Model, feed: dict, tolerance: float = 1e-5) -> None:
    for expected, got in zip(outputs(before, feed), outputs(after, feed)):
        assert expected.shape == got.shape and np.abs(expected - got).max() < tolerance


def padded_mask() -> np.ndarray:
    return np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], np.int64)


# --------------------------------------------------------------------------- split_skip_layer_norm


def skip_layer_norm_graph(mean_is_read: bool = False) -> onnx.ModelProto:
    outputs_ = ["normalized", "mean", "inverse_std", "total"]
    graph_outputs = [tensor("normalized", FLOAT, *TOKENS, 8)] + ([tensor("mean", FLOAT, *TOKENS, 1)] if mean_is_read else [])
    return graph_model(
        [helper.make_node("SkipLayerNormalization", ["x", "skip", "gamma", "beta", "bias"], outputs_, domain="com.microsoft",
                          epsilon=1e-5)],
        [tensor("x", FLOAT, *TOKENS, 8), tensor("skip", FLOAT, *TOKENS, 8)], graph_outputs,
        {"gamma": weight(8) + 1, "beta": weight(8), "bias": weight(8)})


def test_split_skip_layer_norm_gives_add_and_layer_norm():
    proto = skip_layer_norm_graph()
    model, count = rewritten(proto, split_skip_layer_norm.apply)
    assert count == 1 and ops(model) == {"Add": 2, "LayerNormalization": 1}
    assert all(node.outputs[0].shape is not None for node in model.graph)  # pooled_token_only reads these shapes
    assert_same_outputs(proto, model, {"x": weight(2, 5, 8), "skip": weight(2, 5, 8)})


def test_split_skip_layer_norm_leaves_an_op_whose_mean_is_read():
    model, count = rewritten(skip_layer_norm_graph(mean_is_read=True), split_skip_layer_norm.apply)
    assert count == 0 and ops(model) == {"SkipLayerNormalization": 1}


# --------------------------------------------------------------------------- drop_equal_qkv_hidden_sizes


def attention_graph(qkv_hidden_sizes: list[int] | None, mask_index: bool = False, **attributes) -> onnx.ModelProto:
    """Attention(x, w, b[, mask_index]) on 2 heads of size 4."""
    if qkv_hidden_sizes:
        attributes["qkv_hidden_sizes"] = qkv_hidden_sizes
    inputs = ["x", "w", "b"] + (["mask_int32"] if mask_index else [])
    nodes = [helper.make_node("Cast", ["attention_mask"], ["mask_int32"], to=TensorProto.INT32)] if mask_index else []
    nodes.append(helper.make_node("Attention", inputs, ["attention"], domain="com.microsoft", num_heads=2, **attributes))
    width = sum(qkv_hidden_sizes) if qkv_hidden_sizes else 24
    return graph_model(nodes, [tensor("x", FLOAT, *TOKENS, 8)] + ([tensor("attention_mask", INT64, *TOKENS)] if mask_index else []),
                       [tensor("attention", FLOAT, *TOKENS, 8)], {"w": weight(8, width), "b": weight(width)})


def test_equal_qkv_hidden_sizes_are_dropped():
    proto = attention_graph([8, 8, 8])
    model, count = rewritten(proto, drop_equal_qkv_hidden_sizes.apply)
    (attention,) = model.graph
    assert count == 1 and "qkv_hidden_sizes" not in attention.attributes and attention.attributes.get_int("num_heads") == 2
    assert_same_outputs(proto, model, {"x": weight(2, 5, 8)})


def test_unequal_qkv_hidden_sizes_are_kept():
    model, count = rewritten(attention_graph([8, 8, 4]), drop_equal_qkv_hidden_sizes.apply)
    (attention,) = model.graph
    assert count == 0 and list(attention.attributes.get_ints("qkv_hidden_sizes")) == [8, 8, 4]


# --------------------------------------------------------------------------- padding_mask_index


def padding_bias_graph(mask_name: str = "attention_mask", **attributes) -> onnx.ModelProto:
    """An encoder's Attention whose additive bias hides padded keys: (1 - mask) * -10000, per query row."""
    nodes = [
        helper.make_node("Cast", [mask_name], ["mask_float"], to=FLOAT),
        helper.make_node("Sub", ["one", "mask_float"], ["padding"]),
        helper.make_node("Mul", ["padding", "minus_large"], ["hidden_keys"]),
        helper.make_node("Unsqueeze", ["hidden_keys", "axes_1_2"], ["bias_b11s"]),
        helper.make_node("Shape", [mask_name], ["batch_sequence"]),
        helper.make_node("Slice", ["batch_sequence", "start_0", "end_1"], ["batch"]),
        helper.make_node("Slice", ["batch_sequence", "start_1", "end_2"], ["sequence"]),
        helper.make_node("Concat", ["batch", "one_int", "sequence", "sequence"], ["bias_shape"], axis=0),
        helper.make_node("Expand", ["bias_b11s", "bias_shape"], ["attention_bias"]),
        helper.make_node("Attention", ["x", "w", "b", "", "", "attention_bias"], ["attention"], domain="com.microsoft",
                         num_heads=2, **attributes),
    ]
    constants = {"one": np.float32(1), "minus_large": np.float32(-10000), "axes_1_2": np.array([1, 2]), "one_int": np.array([1]),
                 "start_0": np.array([0]), "end_1": np.array([1]), "start_1": np.array([1]), "end_2": np.array([2]),
                 "w": weight(8, 24), "b": weight(24)}
    return graph_model(nodes, [tensor("x", FLOAT, *TOKENS, 8), tensor(mask_name, INT64, *TOKENS)],
                       [tensor("attention", FLOAT, *TOKENS, 8)], constants)


def test_padding_bias_becomes_the_mask_index():
    proto = padding_bias_graph()
    model, count = rewritten(proto, padding_mask_index.apply)
    ir.passes.common.RemoveUnusedNodesPass()(model)  # as fuse() does: the bias no op reads now
    (cast, attention) = model.graph
    assert count == 1 and cast.op_type == "Cast" and cast.inputs[0].name == "attention_mask"
    assert attention.inputs[3] is cast.outputs[0] and len(attention.inputs) == 4  # mask_index, no bias
    assert_same_outputs(proto, model, {"x": weight(2, 5, 8), "attention_mask": padded_mask()}, tolerance=1e-4)


def test_causal_attention_keeps_its_bias():
    model, count = rewritten(padding_bias_graph(unidirectional=1), padding_mask_index.apply)
    attention = [node for node in model.graph if node.op_type == "Attention"][0]
    assert count == 0 and attention.inputs[5] is not None and ops(model)["Cast"] == 1  # no int32 mask left behind


# --------------------------------------------------------------------------- split_bias_gelu


def bias_gelu_graph(opset: int = 20) -> onnx.ModelProto:
    return graph_model([helper.make_node("BiasGelu", ["x", "bias"], ["gelu"], domain="com.microsoft")],
                       [tensor("x", FLOAT, *TOKENS, 8)], [tensor("gelu", FLOAT, *TOKENS, 8)], {"bias": weight(8)}, opset=opset)


def test_bias_gelu_becomes_add_and_onnx_gelu():
    proto = bias_gelu_graph()
    model, count = rewritten(proto, split_bias_gelu.apply)
    assert count == 1 and ops(model) == {"Add": 1, "Gelu": 1} and all(node.domain == "" for node in model.graph)
    assert_same_outputs(proto, model, {"x": weight(2, 5, 8)})


def test_bias_gelu_stays_below_opset_20():
    """ONNX's own Gelu is an opset 20 op: the rule's requirement, checked by the rule list."""
    model = ir.from_proto(bias_gelu_graph(opset=18))
    counts = rules.run(model, [rule for rule in rules.RULES if rule.name == "onnx_gelu"])
    assert counts == {"onnx_gelu": 0} and ops(model) == {"BiasGelu": 1}


# --------------------------------------------------------------------------- grouped_query_attention


def grouped_query_graph(query_first_half_end: int = 4) -> onnx.ModelProto:
    """Qwen3-type attention as the export and onnxscript leave it: 4 query heads and 2 K/V heads of size 8,
    rotary embeddings as element-wise ops, each K/V head copied for its 2 query heads, a padding bias."""
    nodes, constants = [], {
        "wq": weight(32, 32), "wk": weight(32, 16), "wv": weight(32, 16), "inv_freq": (1 / 100 ** (np.arange(4) / 4)).astype(np.float32),
        "q_heads_shape": np.array([0, 0, 4, 8]), "kv_heads_shape": np.array([0, 0, 2, 8]), "copies_shape": np.array([0, 4, -1, 8]),
        "flat_shape": np.array([0, 0, 32]), "axis_0": np.array([0]), "axis_1": np.array([1]), "axis_2": np.array([2]),
        "axes_0_2": np.array([0, 2]), "axes_1_2": np.array([1, 2]), "axis_3": np.array([3]), "step_1": np.array([1]),
        "start_0": np.array([0]), "half": np.array([4]), "q_half": np.array([query_first_half_end]), "end": np.array([2**62]),
        "two": np.array([2]), "four": np.array([4]), "eight": np.array([8]), "zero_f": np.float32(0), "one_f": np.float32(1),
        "index_1": np.array(1), "minus_large": np.float32(-10000),
    }

    def node(op_type: str, inputs: list[str], output: str, **attributes) -> str:
        nodes.append(helper.make_node(op_type, inputs, [output], **attributes))
        return output

    sequence = node("Cast", [node("Gather", [node("Shape", ["attention_mask"], "mask_shape"), "index_1"], "s")], "s_f", to=FLOAT)
    positions = node("Unsqueeze", [node("Range", ["zero_f", sequence, "one_f"], "positions"), "axes_0_2"], "positions_1s1")
    angles = node("Mul", [positions, "inv_freq"], "angles")
    table = node("Concat", [angles, angles], "table", axis=-1)
    cos = node("Unsqueeze", [node("Cos", [table], "cos_table"), "axis_1"], "cos")
    sin = node("Unsqueeze", [node("Sin", [table], "sin_table"), "axis_1"], "sin")

    def rotated(x: str, first_half_end: str) -> str:
        second = node("Slice", [x, "half", "end", "axis_3", "step_1"], f"{x}_second")
        first = node("Slice", [x, "start_0", first_half_end, "axis_3", "step_1"], f"{x}_first")
        halves = node("Concat", [node("Neg", [second], f"{x}_neg"), first], f"{x}_halves", axis=-1)
        return node("Add", [node("Mul", [x, cos], f"{x}_cos"), node("Mul", [halves, sin], f"{x}_sin")], f"{x}_rotated")

    def heads_second(flat: str, shape: str, name: str) -> str:
        return node("Transpose", [node("Reshape", [node("MatMul", ["x", flat], f"{name}_flat"), shape], f"{name}_heads")],
                    f"{name}_bhsd", perm=[0, 2, 1, 3])

    def copied(heads: str, name: str) -> str:
        mask_shape = "mask_shape"
        batch = node("Slice", [mask_shape, "start_0", "axis_1"], f"{name}_b")
        seq = node("Slice", [mask_shape, "axis_1", "axis_2"], f"{name}_s")
        shape = node("Concat", [batch, "two", "two", seq, "eight"], f"{name}_copies", axis=0)
        expanded = node("Expand", [node("Unsqueeze", [heads, "axis_2"], f"{name}_1"), shape], f"{name}_expanded")
        return node("Reshape", [expanded, "copies_shape"], f"{name}_repeated")

    def flat(heads: str, name: str) -> str:
        return node("Reshape", [node("Transpose", [heads], f"{name}_bshd", perm=[0, 2, 1, 3]), "flat_shape"], f"{name}_in")

    query = flat(rotated(heads_second("wq", "q_heads_shape", "q"), "q_half"), "q")
    key = flat(copied(rotated(heads_second("wk", "kv_heads_shape", "k"), "half"), "k"), "k")
    value = flat(copied(heads_second("wv", "kv_heads_shape", "v"), "v"), "v")
    padding = node("Mul", [node("Sub", ["one_f", node("Cast", ["attention_mask"], "mask_f", to=FLOAT)], "pad"), "minus_large"], "pad_bias")
    bias_b11s = node("Unsqueeze", [padding, "axes_1_2"], "bias_b11s")
    batch, seq = node("Slice", ["mask_shape", "start_0", "axis_1"], "b"), node("Slice", ["mask_shape", "axis_1", "axis_2"], "s1")
    bias = node("Expand", [bias_b11s, node("Concat", [batch, "axis_1", seq, seq], "bias_shape", axis=0)], "bias")  # (b, 1, s, s)
    nodes.append(helper.make_node("MultiHeadAttention", [query, key, value, "", "", bias], ["attention"], domain="com.microsoft",
                                  num_heads=4))
    return graph_model(nodes, [tensor("x", FLOAT, *TOKENS, 32), tensor("attention_mask", INT64, *TOKENS)],
                       [tensor("attention", FLOAT, *TOKENS, 32)], constants)


def test_grouped_query_attention_runs_on_the_models_own_kv_heads():
    proto = grouped_query_graph()
    model, count = rewritten(proto, grouped_query_attention.apply)
    counted = ops(model)
    assert count == 1 and counted["Attention"] == 1 and counted["RotaryEmbedding"] == 2
    assert "MultiHeadAttention" not in counted and "Neg" not in counted
    assert counted["Expand"] == 3  # the cos and sin tables to (batch, sequence, 4), the bias; no K/V copies
    (attention,) = [node for node in model.graph if node.op_type == "Attention"]
    assert attention.attributes.get_int("q_num_heads") == 4 and attention.attributes.get_int("kv_num_heads") == 2
    assert model.opset_imports[""] == 23
    assert_same_outputs(proto, model, {"x": weight(2, 5, 32), "attention_mask": padded_mask()}, tolerance=1e-4)


def test_grouped_query_attention_needs_the_rotation_on_exact_halves():
    """A rotation that slices [0, 3) of an 8-wide head is not rotate-half: the block stays as it is."""
    model, count = rewritten(grouped_query_graph(query_first_half_end=3), grouped_query_attention.apply)
    assert count == 0 and ops(model)["MultiHeadAttention"] == 1 and model.opset_imports[""] == 20


# --------------------------------------------------------------------------- pooled_token_only


def pooled_token_graph(mixes_tokens: bool = False) -> onnx.ModelProto:
    """A last layer after attention (MLP, residual, LayerNorm), then the classifier's first-token selection;
    with ``mixes_tokens``, a mean over the sequence feeds the residual (so not every op is token-wise)."""
    residual = "token_mean" if mixes_tokens else "x"
    nodes = [helper.make_node("ReduceMean", ["x", "axis_1"], ["token_mean"], keepdims=1)] if mixes_tokens else []
    nodes += [
        helper.make_node("MatMul", ["x", "w1"], ["up"]),
        helper.make_node("Add", ["up", "b1"], ["up_biased"]),
        helper.make_node("Relu", ["up_biased"], ["activated"]),
        helper.make_node("MatMul", ["activated", "w2"], ["down"]),
        helper.make_node("Add", ["down", residual], ["summed"]),
        helper.make_node("LayerNormalization", ["summed", "gamma", "beta"], ["normalized"], axis=-1),
        helper.make_node("Gather", ["normalized", "first"], ["pooled"], axis=1),
        helper.make_node("MatMul", ["pooled", "head"], ["logits"]),
    ]
    constants = {"w1": weight(8, 16), "b1": weight(16), "w2": weight(16, 8), "gamma": weight(8) + 1, "beta": weight(8),
                 "first": np.array(0), "head": weight(8, 6), "axis_1": np.array([1])}
    return graph_model(nodes, [tensor("x", FLOAT, *TOKENS, 8)], [tensor("logits", FLOAT, "batch", 6)], constants, opset=20)


def test_the_last_layer_runs_for_the_pooled_token_only():
    proto = pooled_token_graph()
    model, count = rewritten(proto, pooled_token_only.apply)
    assert count == 6  # both MatMuls, both Adds, Relu, LayerNorm
    mlp = next(node for node in model.graph if node.op_type == "MatMul")
    assert mlp.inputs[0].producer().op_type == "Gather" and mlp.outputs[0].shape[1] == 1
    assert_same_outputs(proto, model, {"x": weight(3, 7, 8)})


def test_a_layer_that_mixes_tokens_is_left_whole():
    model, count = rewritten(pooled_token_graph(mixes_tokens=True), pooled_token_only.apply)
    assert count == 0 and ops(model)["Gather"] == 1 and next(iter(model.graph)).op_type == "ReduceMean"


# --------------------------------------------------------------------------- pooled_query_attention


def pooled_query_graph(index: np.ndarray, qkv_hidden_sizes: list[int] | None = None) -> onnx.ModelProto:
    """An encoder's last attention (mask_index form) read for the first token only, as pooled_token_only leaves it."""
    proto = attention_graph(qkv_hidden_sizes, mask_index=True)
    proto.graph.node.append(helper.make_node("Gather", ["attention", "first"], ["pooled"], axis=1))
    proto.graph.initializer.append(numpy_helper.from_array(index, "first"))
    del proto.graph.output[:]
    proto.graph.output.append(tensor("pooled", FLOAT, "batch", *index.shape, 8))
    proto.graph.value_info.append(tensor("attention", FLOAT, *TOKENS, 8))
    return proto


def test_the_last_attention_computes_the_pooled_tokens_row_only():
    proto = pooled_query_graph(np.array([0]))
    model, count = rewritten(proto, pooled_query_attention.apply)
    counted = ops(model)
    assert count == 1 and counted["MultiHeadAttention"] == 1 and "Attention" not in counted
    query = next(node for node in model.graph if node.op_type == "MatMul").outputs[0]
    assert query.shape[1] == 1  # one query row per text
    assert_same_outputs(proto, model, {"x": weight(2, 5, 8), "attention_mask": padded_mask()}, tolerance=1e-4)


def test_a_selection_without_its_token_axis_is_left_alone():
    """Gather with a scalar index (the selection before pooled_token_only) drops the token axis: not this rule's."""
    model, count = rewritten(pooled_query_graph(np.array(0)), pooled_query_attention.apply)
    assert count == 0 and ops(model)["Attention"] == 1


# --------------------------------------------------------------------------- the rule list


def test_the_rule_list_refuses_a_rule_before_one_it_needs():
    reordered = [rule for rule in rules.RULES if rule.name != "pooled_token_only"] + \
        [rule for rule in rules.RULES if rule.name == "pooled_token_only"]
    model = ir.from_proto(pooled_query_graph(np.array([0])))
    with pytest.raises(ValueError, match="'pooled_query_attention' must run after pooled_token_only"):
        rules.run(model, reordered)
    assert ops(model)["Attention"] == 1  # refused before touching the graph


def test_a_rule_whose_graph_condition_fails_is_skipped_with_count_0():
    """Without a graph input named attention_mask, the padding rule has no mask to hand the attention."""
    model = ir.from_proto(padding_bias_graph(mask_name="mask"))
    counts = rules.run(model)
    assert counts["padding_mask_index"] == 0 and [node for node in model.graph if node.op_type == "Attention"][0].inputs[5]


def test_pooled_query_attention_needs_qkv_hidden_sizes_dropped_first():
    """Equal sizes: drop_equal_qkv_hidden_sizes runs first and the pooled query follows; unequal ones stay,
    and the rule is skipped (its requirement: no Attention op carries qkv_hidden_sizes)."""
    counts = rules.run(ir.from_proto(pooled_query_graph(np.array([0]), qkv_hidden_sizes=[8, 8, 8])))
    assert counts["pooled_query_attention"] == 1
    model = ir.from_proto(pooled_query_graph(np.array([0]), qkv_hidden_sizes=[8, 8, 4]))
    counts = rules.run(model)
    assert not rules.NO_QKV_HIDDEN_SIZES.holds(model) and counts["pooled_query_attention"] == 0 and ops(model)["Attention"] == 1


def test_the_counts_keep_the_names_metrics_use():
    """fuse() reports these names (metrics/int8_details.json "fusions"); the two corrections are not counted."""
    assert [rule.name for rule in rules.RULES if rule.counted] == [
        "padding_mask_index", "onnx_gelu", "grouped_query_attention", "pooled_token_only", "pooled_query_attention"]
    assert set(rules.run(ir.from_proto(bias_gelu_graph()))) == {rule.name for rule in rules.RULES if rule.counted}


# --------------------------------------------------------------------------- session options beside the model


def refusable_graph(path) -> None:
    """Add + LayerNormalization with a fixed sequence length: what ONNX Runtime's SkipLayerNorm fusion fuses."""
    proto = graph_model([helper.make_node("Add", ["x", "skip"], ["summed"]),
                         helper.make_node("LayerNormalization", ["summed", "gamma", "beta"], ["normalized"], axis=-1)],
                        [tensor("x", FLOAT, "batch", 3, 8), tensor("skip", FLOAT, "batch", 3, 8)],
                        [tensor("normalized", FLOAT, "batch", 3, 8)], {"gamma": weight(8) + 1, "beta": weight(8)})
    onnx.save(proto, path)


def plain_reader_session(folder, optimized_path=None) -> ort.InferenceSession:
    """The README's recipe for a plain onnxruntime reader ("int8 on the CPU")."""
    options = ort.SessionOptions()
    settings = json.loads((folder / "onnxruntime_session.json").read_text())
    for key, value in settings["session_config_entries"].items():
        options.add_session_config_entry(key, value)
    if optimized_path is not None:
        options.optimized_model_filepath = str(optimized_path)
    return ort.InferenceSession(str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"])


def optimized_ops(folder, tmp_path, reader) -> Counter:
    reader(folder, tmp_path / "optimized.onnx")
    return Counter(node.op_type for node in onnx.load(tmp_path / "optimized.onnx").graph.node)


def test_the_plain_reader_recipe_keeps_the_split_layer_norm(tmp_path):
    refusable_graph(tmp_path / ONNX_FILE)
    write_session_options(tmp_path)
    assert SESSION_OPTIONS_FILE == "onnxruntime_session.json"  # the name OnnxClassifier and the README use

    def plain(folder, optimized_path):
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(optimized_path)
        return ort.InferenceSession(str(folder / ONNX_FILE), options, providers=["CPUExecutionProvider"])

    assert optimized_ops(tmp_path, tmp_path, plain)["SkipLayerNormalization"] == 1  # what the options prevent
    assert optimized_ops(tmp_path, tmp_path, plain_reader_session) == {"Add": 1, "LayerNormalization": 1}


def test_onnx_classifier_applies_the_session_options_of_its_folder(tmp_path):
    from transformers import BertConfig

    refusable_graph(tmp_path / ONNX_FILE)
    BertConfig(num_labels=6).save_pretrained(tmp_path)
    with pytest.raises(RuntimeError, match="does not have configuration"):  # no file: ONNX Runtime's defaults
        OnnxClassifier(tmp_path).session.get_session_options().get_session_config_entry("optimization.disable_specified_optimizers")
    (tmp_path / SESSION_OPTIONS_FILE).write_text(json.dumps({"session_config_entries": {"session.intra_op.allow_spinning": "0"}}))
    options = OnnxClassifier(tmp_path).session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"  # read from the file, not fixed in code
    write_session_options(tmp_path)
    options = OnnxClassifier(tmp_path).session.get_session_options()
    assert options.get_session_config_entry("optimization.disable_specified_optimizers") == "SkipLayerNormFusion"
