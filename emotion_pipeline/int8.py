"""The int8 CPU model: the exported classifier as ONNX, its transformer blocks fused for ONNX Runtime,
its weights quantised to int8 per channel.

Why these three steps, measured on the offline-profile MiniLM (benchmarks/README.md):
- ``torch.onnx.export`` with ``dynamo=True``: the TorchScript exporter traces transformers 5's
  attention-mask code wrongly (logits off by up to 2 on padded batches); the dynamo exporter
  matches torch to ~3e-6. (optimum-onnx, the usual route, requires transformers < 4.58.)
- onnxscript's ONNX Runtime fusions (``fuse``): one op per attention block, GELU, RMSNorm, so
  fewer, larger kernels run per layer; then a few corrections and rewrites of ours: Qwen3-type
  attention as ONNX's own Attention on the model's K/V heads with fused rotary embeddings, and the
  last layer computed only for the token the classifier reads.
- ``quantize_dynamic`` with per-channel int8 weights: activations are quantised per batch at run
  time, so no calibration data is needed; per-channel scales keep macro-F1 within the gate where
  per-tensor ones (and torch's own dynamic quantisation) lose ~0.01.

The result runs with onnxruntime alone (``emotion_pipeline.predict.OnnxClassifier``); config.json and
the tokenizer are copied beside it, so labels and a stored class bias travel with it.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from emotion_pipeline.predict import ONNX_FILE

# Protobuf cannot hold a file over 2 GiB: larger models keep their weights in a side file.
PROTOBUF_LIMIT = 2**31 - 2**26


class _LogitsOnly(torch.nn.Module):
    """The classifier with the two inputs every tokenizer gives and one output, for a plain ONNX signature."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


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
    """Transformer fusions for ONNX Runtime; returns how many of each were made.

    onnxscript's ORT fusions (written for dynamo-exported graphs; onnxruntime's older optimizer finds
    no attention in them) turn each attention block into one Attention / MultiHeadAttention op and
    GELU, RMSNorm and rotary embeddings into single kernels. Two corrections, both measured here:
    - SkipLayerNormalization (residual add + LayerNorm in one op) runs ~3.5x slower on this CPU
      than a plain Add + LayerNormalization, so it is split back (and OnnxClassifier keeps ONNX
      Runtime from fusing it again at load time);
    - an Attention op with equal q/k/v sizes carries them in an attribute that makes the int8
      quantiser skip it; without the attribute its Q/K/V projection is quantised too (QAttention);
    - the padding mask reaches a fused encoder Attention op as an additive bias, an input QAttention
      does not have (the quantiser drops it, and padded positions would be attended to): it is given
      as the op's mask_index instead, the attention mask itself (``_padding_bias_to_mask_index``);
    - BiasGelu (bias add + exact GELU, onnxruntime's erf kernel) is split into Add + the standard
      ONNX Gelu (opset 20): the same function, ~20 % faster kernel, and the Add folds into the int8
      MatMul before it. (The tanh form, FastGelu, was slower than this and only approximate.)
    Three rewrites for speed: Qwen3-type attention (rotary embeddings, K/V heads shared by several
    query heads) as ONNX RotaryEmbedding + Attention ops (``_grouped_query_attention``); the last layer
    after attention computed for the pooled token only (``_pooled_token_only``); and, for a fused
    Attention op, the last attention asked for that token's output only (``_pooled_query_attention``).
    build_int8 checks them on a padded batch, the quantize stage's macro-F1 gate on the test split.
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
    for node in list(model.graph):
        if node.domain == "com.microsoft" and node.op_type == "SkipLayerNormalization":
            _split_skip_layer_norm(model.graph, node)
        elif node.domain == "com.microsoft" and node.op_type == "Attention":
            if len(set(node.attributes.get_ints("qkv_hidden_sizes", [0]))) == 1:
                node.attributes.pop("qkv_hidden_sizes", None)
            if _padding_bias_to_mask_index(model.graph, node):
                counts["padding_mask_index"] = counts.get("padding_mask_index", 0) + 1
        elif node.domain == "com.microsoft" and node.op_type == "BiasGelu" and model.opset_imports.get("", 0) >= 20:
            _split_bias_gelu(model.graph, node)
            counts["onnx_gelu"] = counts.get("onnx_gelu", 0) + 1
    counts["grouped_query_attention"] = _grouped_query_attention(model)
    counts["pooled_token_only"] = _pooled_token_only(model.graph)
    counts["pooled_query_attention"] = _pooled_query_attention(model.graph)
    ir.passes.common.RemoveUnusedNodesPass()(model)  # e.g. the additive padding bias no op reads now
    ir.save(model, fused_path, external_data=fused_path.name + ".data")
    return {name: count for name, count in counts.items() if count}


def _split_bias_gelu(graph, node) -> None:
    """BiasGelu(x, bias) -> Add(x, bias) + Gelu (ONNX opset 20, exact erf form)."""
    import onnx_ir as ir

    output = node.outputs[0]
    biased = ir.node("Add", list(node.inputs))
    gelu = ir.node("Gelu", [biased.outputs[0]])
    for new_node in (biased, gelu):  # same shape as x: _pooled_token_only checks shapes
        new_node.outputs[0].shape, new_node.outputs[0].type = output.shape, output.type
    graph.insert_before(node, [biased, gelu])
    ir.convenience.replace_all_uses_with(output, gelu.outputs[0])
    graph.remove(node, safe=True)


def _padding_bias_to_mask_index(graph, node) -> bool:
    """Attention(x, w, b, attention_bias=f(mask)) -> Attention(x, w, b, mask_index=int32(mask)).

    An encoder's bias only hides padded keys, which is what a 2-D mask_index does. Applied to
    bidirectional attention only; build_int8 then checks on a padded batch that the fused graph still
    gives the export's logits, so a bias that did more than hide padding would fail the build.
    """
    import onnx_ir as ir

    inputs = list(node.inputs) + [None] * (6 - len(node.inputs))
    mask = next((value for value in graph.inputs if value.name == "attention_mask"), None)
    if inputs[5] is None or inputs[3] is not None or mask is None or node.attributes.get_int("unidirectional", 0):
        return False
    cast = next((user for user, _ in mask.uses() if user.op_type == "Cast" and user.name == "attention_mask_int32"), None)
    if cast is None:
        cast = ir.node("Cast", [mask], {"to": ir.DataType.INT32}, name="attention_mask_int32")
        cast.outputs[0].shape, cast.outputs[0].type = mask.shape, ir.TensorType(ir.DataType.INT32)
        graph.insert_before(next(iter(graph)), cast)
    node.replace_input_with(3, cast.outputs[0])
    node.replace_input_with(5, None)
    return True


def _grouped_query_attention(model) -> int:
    """MultiHeadAttention fed by rotary embeddings as element-wise ops and K/V heads repeated for each
    query head (Qwen3, Llama-type models) -> ONNX RotaryEmbedding + Attention (opset 23), which takes
    the model's K/V heads as they are. Returns how many attention blocks were rewritten.

    onnxscript fuses such a block into MultiHeadAttention, which needs as many K/V heads as query heads,
    and leaves the rotation as ~12 small ops per layer plus Expand/Transpose copies around it: on the
    full-size Qwen3-0.6B architecture (int8) the attention with that glue took ~37 % of the time, and
    ~17 % after this rewrite (1.4x sentences/s, benchmarks/README.md). The model's own attention bias
    (causal and padding, as the export computes it) and its own cos/sin tables are kept, so nothing is
    assumed about positions or the padding side; build_int8's check on a padded batch verifies the result.
    """
    import numpy as np
    import onnx_ir as ir
    from onnxscript.version_converter import convert_version

    mask = next((value for value in model.graph.inputs if value.name == "attention_mask"), None)
    if mask is None or not any(_rotary_attention_inputs(node) for node in model.graph):
        return 0
    if model.opset_imports.get("", 0) < 23:  # RotaryEmbedding and Attention are opset 23 ops
        convert_version(model, 23)
    graph = model.graph
    flat = _initializer(graph, "attention_heads_flat", np.asarray([0, 0, -1], np.int64))  # (b, s, h, d) -> (b, s, h * d)
    tables: dict = {}  # (cos, sin) per rotary table, expanded to (batch, sequence, head_size / 2)
    new_nodes: list = []  # the current block's

    def add(op_type: str, inputs: list, attributes: dict | None = None, **kwargs) -> ir.Value:
        new_nodes.append(ir.node(op_type, inputs, attributes or {}, **kwargs))
        return new_nodes[-1].outputs[0]

    count = 0
    for node in list(graph):
        matched = _rotary_attention_inputs(node)
        if matched is None:
            continue
        query_heads, key_heads, value, angles, bias = matched
        new_nodes.clear()
        if angles not in tables:
            half = angles.shape[-1]
            batch_sequence = add("Shape", [mask])
            shape = add("Concat", [batch_sequence, _initializer(graph, f"rotary_half_{count}", np.asarray([half], np.int64))],
                        {"axis": 0})
            tables[angles] = tuple(add("Expand", [add(op_type, [angles]), shape]) for op_type in ("Cos", "Sin"))
        cos, sin = tables[angles]
        heads, kv_heads = query_heads.shape[2], key_heads.shape[2]
        query = add("RotaryEmbedding", [add("Reshape", [query_heads, flat]), cos, sin], {"num_heads": heads})
        key = add("RotaryEmbedding", [add("Reshape", [key_heads, flat]), cos, sin], {"num_heads": kv_heads})
        attributes = {"q_num_heads": heads, "kv_num_heads": kv_heads}
        if "scale" in node.attributes:
            attributes["scale"] = node.attributes.get_float("scale")
        output = add("Attention", [query, key, value, bias], attributes, name=f"grouped_query_attention_{count}")
        output.shape, output.type = node.outputs[0].shape, node.outputs[0].type
        graph.insert_before(node, list(new_nodes))
        ir.convenience.replace_all_uses_with(node.outputs[0], output)
        graph.remove(node, safe=True)
        count += 1
    graph.sort()
    return count


def _rotary_attention_inputs(node):
    """For MultiHeadAttention(rotary(q), repeat(rotary(k)), repeat(v), attention_bias): (q heads (batch,
    sequence, heads, head_size), k heads likewise, v (batch, sequence, kv_heads * head_size), the rotary
    angles f of cos = Cos(Concat(f, f)), the bias before its expansion per head), else None."""
    if node.domain != "com.microsoft" or node.op_type != "MultiHeadAttention":
        return None
    inputs = list(node.inputs) + [None] * (6 - len(node.inputs))
    if any(value is not None for value in inputs[3:5] + inputs[6:]) or inputs[5] is None or \
            any(output.uses() for output in node.outputs[1:]):
        return None
    repeats = {"Reshape", "Transpose", "Expand", "Unsqueeze"}
    query, key = _rotate_half_input(_back_through(inputs[0], {"Reshape", "Transpose"})), \
        _rotate_half_input(_back_through(inputs[1], repeats))
    value = _back_through(inputs[2], repeats)
    if query is None or key is None or query[1:] != key[1:] or value.shape is None or len(value.shape) != 3:
        return None
    query_heads, key_heads = (_heads_last(rotated[0]) for rotated in (query, key))
    angles = _rotary_angles(query[1], "Cos"), _rotary_angles(query[2], "Sin")
    if query_heads is None or key_heads is None or angles[0] is None or angles[0] is not angles[1]:
        return None
    heads, kv_heads, head_size = query_heads.shape[2], key_heads.shape[2], query_heads.shape[3]
    if heads != node.attributes.get_int("num_heads") or heads % kv_heads or key_heads.shape[3] != head_size or \
            value.shape[2] != kv_heads * head_size or angles[0].shape is None or angles[0].shape[-1] * 2 != head_size or \
            not list(query_heads.shape[:2]) == list(key_heads.shape[:2]) == list(value.shape[:2]):
        return None
    bias = inputs[5]
    if _producer(bias, "Expand") is not None:  # copies per head: Attention broadcasts the heads axis itself
        unexpanded = bias.producer().inputs[0]
        if unexpanded.shape is not None and bias.shape is not None and len(unexpanded.shape) == len(bias.shape) == 4 and \
                list(unexpanded.shape[2:]) == list(bias.shape[2:]):  # (it needs the full query x key axes)
            bias = unexpanded
    return query_heads, key_heads, value, angles[0], bias


def _back_through(value, op_types: set):
    """The value before a chain of the given (shape-only) ops."""
    while (producer := value.producer()) is not None and producer.domain == "" and producer.op_type in op_types:
        value = producer.inputs[0]
    return value


def _rotate_half_input(value):
    """x * cos + Concat(-x[..., half:], x[..., :half]) * sin -> (x, cos, sin), else None."""
    add = _producer(value, "Add")
    if add is None:
        return None
    for plain, rotated in (add.inputs, list(reversed(add.inputs))):
        plain, rotated = _producer(plain, "Mul"), _producer(rotated, "Mul")
        if plain is None or rotated is None:
            continue
        for halves, sin in (rotated.inputs, list(reversed(rotated.inputs))):
            concat = _producer(halves, "Concat")
            negated = _producer(concat.inputs[0], "Neg") if concat is not None and len(concat.inputs) == 2 else None
            if negated is None:
                continue
            second, first = _producer(negated.inputs[0], "Slice"), _producer(concat.inputs[1], "Slice")
            if second is None or first is None or second.inputs[0] is not first.inputs[0]:
                continue
            x = first.inputs[0]
            if x not in plain.inputs or x.shape is None or len(x.shape) != 4 or not isinstance(x.shape[3], int):
                continue
            half = x.shape[3] // 2
            # Slice(x, starts, ends, axes[, steps]): [0, half) and [half, end) of the last axis, step 1.
            first_args, second_args = ([_constant(arg) if arg is not None else None for arg in slice_node.inputs[1:]]
                                       for slice_node in (first, second))
            if len(first_args) < 3 or len(second_args) < 3 or any(arg is None or arg.size != 1 for arg in first_args + second_args):
                continue
            (start1, end1, axis1, *step1), (start2, end2, axis2, *step2) = ([int(arg.item()) for arg in args]
                                                                          for args in (first_args, second_args))
            if (start1, end1, start2) != (0, half, half) or end2 < 2 * half or {axis1, axis2} - {3, -1} or \
                    set(step1 + step2) - {1}:
                continue
            cos = next(input_value for input_value in plain.inputs if input_value is not x)
            return x, cos, sin
    return None


def _heads_last(rotated):
    """Transpose(heads, perm=[0, 2, 1, 3]) -> heads: (batch, sequence, heads, head_size) with known sizes."""
    transpose = _producer(rotated, "Transpose")
    if transpose is None or list(transpose.attributes.get_ints("perm", [])) != [0, 2, 1, 3]:
        return None
    heads = transpose.inputs[0]
    return heads if heads.shape is not None and len(heads.shape) == 4 and all(isinstance(size, int) for size in heads.shape[2:]) else None


def _rotary_angles(table, op_type: str):
    """Unsqueeze(Cos(Concat(f, f))) -> f (the angles, repeated over both halves of each head), else None."""
    unary = _producer(_back_through(table, {"Unsqueeze"}), op_type)
    concat = _producer(unary.inputs[0], "Concat") if unary is not None else None
    if concat is None or len(concat.inputs) != 2 or concat.inputs[0] is not concat.inputs[1]:
        return None
    return concat.inputs[0]


def _producer(value, op_type: str):
    """value's producer if it is a standard-domain op_type node, else None."""
    producer = value.producer() if value is not None else None
    return producer if producer is not None and producer.domain == "" and producer.op_type == op_type else None


def _initializer(graph, name: str, array):
    """A new initializer holding array."""
    import onnx_ir as ir

    value = ir.Value(name=name, const_value=ir.tensor(array))
    graph.register_initializer(value)
    return value


def _split_skip_layer_norm(graph, node) -> None:
    """SkipLayerNormalization(x, skip, gamma, beta[, bias]) -> Add(x, skip[, bias]) + LayerNormalization."""
    import onnx_ir as ir

    x, skip, gamma, beta, *rest = list(node.inputs) + [None] * (5 - len(node.inputs))
    outputs = list(node.outputs) + [None] * (4 - len(node.outputs))
    if any(value is not None and value.uses() for value in outputs[1:3]):
        return  # mean / inverse std-dev are used downstream: leave the fused op
    total = ir.node("Add", [x, skip])
    new_nodes = [total]
    if rest[0] is not None:
        total = ir.node("Add", [total.outputs[0], rest[0]])
        new_nodes.append(total)
    norm = ir.node("LayerNormalization", [total.outputs[0], gamma, beta],
                   {"axis": -1, "epsilon": node.attributes.get_float("epsilon", 1e-12)})
    new_nodes.append(norm)
    for new_node in new_nodes:  # same shape as x: _pooled_token_only checks shapes
        new_node.outputs[0].shape, new_node.outputs[0].type = outputs[0].shape, outputs[0].type
    graph.insert_before(node, new_nodes)
    ir.convenience.replace_all_uses_with(outputs[0], norm.outputs[0])
    if outputs[3] is not None:
        ir.convenience.replace_all_uses_with(outputs[3], total.outputs[0])
    graph.remove(node, safe=True)


# Ops that compute each token's output from that token's input alone (any other input is a weight).
_TOKENWISE = {"MatMul", "Add", "Mul", "Sigmoid", "Tanh", "Relu", "Cast", "LayerNormalization", "SimplifiedLayerNormalization",
              "SkipLayerNormalization", "SkipSimplifiedLayerNormalization", "BiasGelu", "FastGelu", "Gelu"}


def _pooled_token_only(graph) -> int:
    """Compute the layers after the last attention for the pooled token only; returns how many ops now do.

    A classifier reads one token of the last layer (BERT: the first, ``Gather``; Qwen3: each row's last
    real token, ``GatherND``), but the exported graph computes the whole last layer for every token
    and selects afterwards. Everything between the last attention op and that selection works token
    by token (projections, residual adds, norms, the MLP), so the selection can move up to the
    attention output and the residual stream: the last layer's MLP then runs on one token per text
    instead of ~20 (MiniLM: ~13 % of all work). Nothing changes when the graph has another shape.
    """
    import numpy as np
    import onnx_ir as ir

    selection = next((node for node in reversed(list(graph)) if _is_token_selection(node)), None)
    if selection is None:
        return 0
    token_shape = selection.inputs[0].shape
    # The region: token-wise ops whose every output feeds only the region or the selection (walked
    # consumers-first, so each node's consumers are decided before it).
    region: list = []
    for node in reversed(list(graph)):
        if node is selection or not _is_tokenwise(node):
            continue
        uses = [user for output in node.outputs for user, _ in output.uses()]
        if uses and all(user is selection or user in region for user in uses) and \
                not any(output.is_graph_output() for output in node.outputs):
            region.append(node)
    if not region or selection.inputs[0].producer() not in region:
        return 0
    # Values flowing into the region from outside, other than weights, must be (batch, sequence, ...).
    entries = {value.name: value for node in region for value in node.inputs
               if value is not None and value.const_value is None and value.producer() not in region}
    for value in entries.values():
        if value.shape is None or token_shape is None or len(value.shape) != 3 or \
                list(value.shape[:2]) != list(token_shape[:2]):
            return 0
    # Select each entry, keeping a length-1 token axis so every op sees the rank it was built for.
    index = selection.inputs[1]
    if selection.op_type == "Gather":
        keep = ir.node("Constant", [], {"value": ir.tensor(np.asarray([index.const_value.numpy().item()], dtype=np.int64))})
        select_nodes, make = [keep], lambda value: ir.node("Gather", [value, keep.outputs[0]], {"axis": 1})
    else:  # GatherND with (batch, 2) indices -> (batch, 1, 2)
        axis = ir.node("Constant", [], {"value": ir.tensor(np.asarray([1], dtype=np.int64))})
        keep = ir.node("Unsqueeze", [index, axis.outputs[0]])
        select_nodes, make = [axis, keep], lambda value: ir.node("GatherND", [value, keep.outputs[0]])
    for value in entries.values():
        selected = make(value)
        selected.outputs[0].shape = ir.Shape([value.shape[0], 1, *value.shape[2:]])
        selected.outputs[0].type = value.type
        select_nodes.append(selected)
        for node in region:
            for slot, input_value in enumerate(node.inputs):
                if input_value is value:
                    node.replace_input_with(slot, selected.outputs[0])
    squeeze_axis = ir.node("Constant", [], {"value": ir.tensor(np.asarray([1], dtype=np.int64))})
    squeeze = ir.node("Squeeze", [selection.inputs[0], squeeze_axis.outputs[0]])
    squeeze.outputs[0].shape, squeeze.outputs[0].type = selection.outputs[0].shape, selection.outputs[0].type
    graph.insert_before(selection, [*select_nodes, squeeze_axis, squeeze])
    name = selection.outputs[0].name  # Qwen3's selection gives the graph output, `logits`: keep its name
    ir.convenience.replace_all_uses_with(selection.outputs[0], squeeze.outputs[0], replace_graph_outputs=True)
    graph.remove(selection, safe=True)
    squeeze.outputs[0].name = name
    for node in region:  # shapes along the token axis are now 1
        for output in node.outputs:
            if output.shape is not None and len(output.shape) == 3:
                output.shape = ir.Shape([output.shape[0], 1, output.shape[2]])
    graph.sort()  # the new selections after whatever computes their indices
    return len(region)


def _pooled_query_attention(graph) -> int:
    """The last attention computes every token's output, though after _pooled_token_only one token of it is
    read. Attention(x) -> Gather(token) becomes MultiHeadAttention(query = that token's Q projection,
    keys and values = every token's): 1 query row per text instead of ~20. Returns 1 if rewritten.

    For a fused Attention op (packed Q/K/V weight, BERT-type models) only; the projections stay
    MatMuls, which the quantiser turns into int8 ones like every other.
    """
    import numpy as np
    import onnx_ir as ir

    attention = next((node for node in reversed(list(graph)) if node.domain == "com.microsoft" and node.op_type == "Attention"),
                     None)
    if attention is None:
        return 0
    x, weight, bias, mask, *rest = list(attention.inputs) + [None] * (6 - len(attention.inputs))
    output = attention.outputs[0]
    uses = [user for user, _ in output.uses()]
    if any(value is not None for value in rest) or any(value.uses() for value in attention.outputs[1:]) or \
            weight.const_value is None or (bias is not None and bias.const_value is None) or \
            attention.attributes.get_int("unidirectional", 0) or "qkv_hidden_sizes" in attention.attributes or \
            len(uses) != 1 or uses[0].op_type != "Gather" or uses[0].attributes.get_int("axis", 0) != 1:
        return 0
    index = _constant(uses[0].inputs[1])
    if index is None or index.shape != (1,):  # the length-1 selection _pooled_token_only makes
        return 0
    selection = uses[0]
    weights = weight.const_value.numpy()
    hidden = weights.shape[0]
    biases = bias.const_value.numpy() if bias is not None else np.zeros(weights.shape[1], weights.dtype)

    def constant(name: str, array) -> ir.Value:
        return _initializer(graph, f"{attention.name or 'attention'}_{name}", np.ascontiguousarray(array))

    token = ir.node("Gather", [x, selection.inputs[1]], {"axis": 1})
    query = ir.node("MatMul", [token.outputs[0], constant("q_weight", weights[:, :hidden])])
    query_biased = ir.node("Add", [query.outputs[0], constant("q_bias", biases[:hidden])])
    keys_values = ir.node("MatMul", [x, constant("kv_weight", weights[:, hidden:])])
    keys_values_biased = ir.node("Add", [keys_values.outputs[0], constant("kv_bias", biases[hidden:])])
    split = ir.node("Split", [keys_values_biased.outputs[0], constant("kv_split", np.asarray([hidden, hidden], np.int64))],
                    {"axis": -1}, num_outputs=2)
    attributes = {"num_heads": attention.attributes.get_int("num_heads")}
    for name in ("scale", "mask_filter_value"):
        if name in attention.attributes:
            attributes[name] = attention.attributes.get_float(name)
    pooled = ir.node("MultiHeadAttention", [query_biased.outputs[0], *split.outputs, None, mask], attributes,
                     domain="com.microsoft")
    one_token = ir.Shape([x.shape[0], 1, hidden]) if x.shape is not None else None
    every_token = ir.Shape([x.shape[0], x.shape[1], hidden]) if x.shape is not None else None
    for value, shape in ((token.outputs[0], one_token), (query.outputs[0], one_token), (query_biased.outputs[0], one_token),
                         (keys_values.outputs[0], None), (keys_values_biased.outputs[0], None),
                         (split.outputs[0], every_token), (split.outputs[1], every_token), (pooled.outputs[0], one_token)):
        value.shape, value.type = shape, output.type
    graph.insert_before(attention, [token, query, query_biased, keys_values, keys_values_biased, split, pooled])
    ir.convenience.replace_all_uses_with(selection.outputs[0], pooled.outputs[0])
    graph.remove([selection, attention], safe=True)
    graph.sort()  # the selection's index is computed after the attention it now precedes
    return 1


def _constant(value):
    """A value's array if it is an initializer or a Constant node's output, else None."""
    if value.const_value is not None:
        return value.const_value.numpy()
    producer = value.producer()
    if producer is not None and producer.op_type == "Constant" and "value" in producer.attributes:
        return producer.attributes["value"].as_tensor().numpy()
    return None


def _is_token_selection(node) -> bool:
    """``x[:, i]`` for a constant i (Gather on axis 1), or ``x[b, i_b]`` per row (GatherND with (batch, 2) indices)."""
    if len(node.inputs) != 2 or node.inputs[0] is None or node.inputs[0].shape is None or len(node.inputs[0].shape) != 3:
        return False
    index = node.inputs[1]
    if node.op_type == "Gather" and node.domain == "":
        return node.attributes.get_int("axis", 0) == 1 and index.const_value is not None and index.const_value.shape.rank() == 0
    if node.op_type == "GatherND" and node.domain == "":
        return node.attributes.get_int("batch_dims", 0) == 0 and index.shape is not None and len(index.shape) == 2 \
            and index.shape[1] == 2
    return False


def _is_tokenwise(node) -> bool:
    if node.op_type not in _TOKENWISE or node.domain not in ("", "com.microsoft"):
        return False
    if node.op_type.endswith("LayerNormalization") and node.attributes.get_int("axis", -1) != -1:
        return False
    if node.op_type == "MatMul":  # activations times a weight matrix
        weight = node.inputs[1]
        return weight is not None and weight.const_value is not None and len(weight.const_value.shape) == 2
    if node.op_type in ("Add", "Mul"):  # weights broadcast along the features only
        return all(value.const_value is None or len(value.const_value.shape) <= 1 for value in node.inputs)
    return True


def quantize(fused_path: Path, int8_path: Path) -> None:
    """int8 weights, one scale per output channel; activations quantised on the fly (no calibration set).

    reduce_range: weights use 7 of their 8 bits. On x86 CPUs without VNNI (AVX2 only, e.g. the AMD EPYC
    this ran on), ONNX Runtime's u8 x s8 kernel adds pairs of products in 16 bits, which saturate with
    full-range weights: on 120 test texts the tiny Qwen3's int8 probabilities then moved up to 0.44 from
    fp32's (mean 0.011); with reduce_range up to 0.038 (mean 0.004); MiniLM's 0.042 -> 0.036. VNNI/AMX CPUs
    do not saturate, but the model must be right on whichever CPU serves it.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    weights = sum(path.stat().st_size for path in fused_path.parent.iterdir())
    # The quantiser matches op types without their domain: it would take ONNX's own Attention
    # (_grouped_query_attention) for ONNX Runtime's, whose int8 form it cannot express. Its projections
    # are MatMuls before it and are quantised like every other.
    onnx_attention = [node.name for node in onnx.load(fused_path, load_external_data=False).graph.node
                      if node.op_type == "Attention" and node.domain in ("", "ai.onnx")]
    quantize_dynamic(str(fused_path), str(int8_path), per_channel=True, reduce_range=True, weight_type=QuantType.QInt8,
                     nodes_to_exclude=onnx_attention, use_external_data_format=weights // 4 > PROTOBUF_LIMIT)


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


def build_int8(export_dir: Path, out_dir: Path) -> dict[str, int]:
    """export_dir (a saved fp32 classifier) -> out_dir/model.onnx (int8) + config.json + tokenizer files."""
    with tempfile.TemporaryDirectory(prefix="onnx-", dir=out_dir) as scratch, _library_chatter_muted():
        scratch = Path(scratch)
        (scratch / "fp32").mkdir()
        (scratch / "fused").mkdir()
        export_onnx(export_dir, scratch / "fp32" / ONNX_FILE)
        fusions = fuse(scratch / "fp32" / ONNX_FILE, scratch / "fused" / ONNX_FILE)
        tokenizer = AutoTokenizer.from_pretrained(export_dir)
        check_fused(scratch / "fp32" / ONNX_FILE, scratch / "fused" / ONNX_FILE, tokenizer)
        quantize(scratch / "fused" / ONNX_FILE, out_dir / ONNX_FILE)
    AutoConfig.from_pretrained(export_dir).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return fusions


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
