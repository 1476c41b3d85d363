"""MultiHeadAttention on rotated, repeated K/V heads (Qwen3, Llama-type models) -> ONNX RotaryEmbedding
+ Attention (opset 23), which takes the model's K/V heads as they are.

onnxscript fuses such a block into MultiHeadAttention, which needs as many K/V heads as query heads,
and leaves the rotation as ~12 small ops per layer plus Expand/Transpose copies around it: on the
full-size Qwen3-0.6B architecture (int8) the attention with that glue took ~37 % of the time, and
~17 % after this rewrite (1.4x sentences/s, benchmarks/README.md). The model's own attention bias
(causal and padding, as the export computes it) and its own cos/sin tables are kept, so nothing is
assumed about positions or the padding side; build_int8's check on a padded batch verifies the result.

The pattern, from the attention op back to the per-head projections (heads: (batch, sequence, heads,
head_size); the export computes in (batch, heads, sequence, head_size), hence the Transposes):

    cos = Unsqueeze(Cos(Concat(angles, angles)))           sin likewise
    rotated(x) = x * cos + Concat(-x[..., half:], x[..., :half]) * sin
    MultiHeadAttention(flat(rotated(query_heads)), flat(repeated(rotated(key_heads))),
                       flat(repeated(value_flat as heads)), attention_bias)
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern
from onnxscript.version_converter import convert_version

from emotion_pipeline.int8.values import constant_array, graph_input, producer

SWAP_HEADS_AND_SEQUENCE = [0, 2, 1, 3]


def _rotated(op, x, cos, sin):
    """The rotary embedding as the export writes it: x * cos + Concat(-x[..., half:], x[..., :half]) * sin."""
    second_half = op.Slice(x, pattern.ANY_VALUE, pattern.ANY_VALUE, pattern.ANY_VALUE, pattern.ANY_VALUE,
                           _check=_slices_second_half)
    first_half = op.Slice(x, pattern.ANY_VALUE, pattern.ANY_VALUE, pattern.ANY_VALUE, pattern.ANY_VALUE,
                          _check=_slices_first_half)
    return op.Add(op.Mul(x, cos), op.Mul(op.Concat(op.Neg(second_half), first_half, axis=-1), sin))


def _repeated(op, heads):
    """Each K/V head copied for the query heads sharing it (Unsqueeze, Expand, Reshape), or, with as many
    K/V heads as query heads, the heads themselves."""
    copies = op.Reshape(op.Expand(op.Unsqueeze(heads, pattern.ANY_VALUE), pattern.ANY_VALUE), pattern.ANY_VALUE)
    return pattern.OrValue([copies, heads])


def _flat(op, heads):
    """(batch, heads, sequence, head_size) -> (batch, sequence, heads * head_size)."""
    return op.Reshape(op.Transpose(heads, perm=SWAP_HEADS_AND_SEQUENCE), pattern.ANY_VALUE)


class GroupedQueryAttention(pattern.RewriteRuleClassBase):
    def __init__(self, *, mask: ir.Value):
        # remove_nodes=False: the rotated query also feeds the bias's per-head Expand (its shape); the
        # rotation and that Expand are removed once nothing reads them.
        super().__init__("grouped_query_attention", remove_nodes=False)
        self._mask = mask  # its shape is (batch, sequence): the cos/sin tables are expanded to it
        self.setup()

    def setup(self) -> None:
        """Per graph: the values every rewritten block shares, made by the first that needs them."""
        self._heads_flat: ir.Value | None = None
        self._tables: dict[ir.Value, tuple[ir.Value, ir.Value]] = {}  # rotary angles -> (cos, sin) per position
        self._count = 0

    def pattern(self, op, query_heads, key_heads, value_flat, angles, attention_bias):
        cos = op.Unsqueeze(op.Cos(op.Concat(angles, angles, axis=-1)), pattern.ANY_VALUE)
        sin = op.Unsqueeze(op.Sin(op.Concat(angles, angles, axis=-1)), pattern.ANY_VALUE)
        query = _rotated(op, op.Transpose(query_heads, perm=SWAP_HEADS_AND_SEQUENCE), cos, sin)
        key = _repeated(op, _rotated(op, op.Transpose(key_heads, perm=SWAP_HEADS_AND_SEQUENCE), cos, sin))
        value = _repeated(op, op.Transpose(op.Reshape(value_flat, pattern.ANY_VALUE), perm=SWAP_HEADS_AND_SEQUENCE))
        return op.MultiHeadAttention(_flat(op, query), _flat(op, key), _flat(op, value), None, None, attention_bias,
                                     _domain="com.microsoft", _outputs=["attention"])

    def check(self, context, query_heads, key_heads, value_flat, angles, attention, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        node = attention.producer()
        if any(output.uses() for output in node.outputs[1:]):
            return result.fail("its present key/value outputs are read")
        if not (_heads_shape(query_heads) and _heads_shape(key_heads) and value_flat.shape is not None
                and len(value_flat.shape) == 3 and angles.shape is not None and isinstance(angles.shape[-1], int)):
            return result.fail("head counts and sizes unknown")
        heads, kv_heads, head_size = query_heads.shape[2], key_heads.shape[2], query_heads.shape[3]
        if heads != node.attributes.get_int("num_heads") or heads % kv_heads or key_heads.shape[3] != head_size or \
                value_flat.shape[2] != kv_heads * head_size or angles.shape[-1] * 2 != head_size:
            return result.fail("head counts or sizes do not fit together")
        if not list(query_heads.shape[:2]) == list(key_heads.shape[:2]) == list(value_flat.shape[:2]):
            return result.fail("q, k and v do not share batch and sequence axes")
        return result

    def rewrite(self, op, query_heads, key_heads, value_flat, angles, attention_bias, attention, **_):
        node = attention.producer()
        heads, kv_heads = query_heads.shape[2], key_heads.shape[2]
        if self._heads_flat is None:  # (b, s, h, d) -> (b, s, h * d)
            self._heads_flat = op.initializer(ir.tensor(np.asarray([0, 0, -1], np.int64)), name="attention_heads_flat")
        if angles not in self._tables:  # (batch, sequence, head_size / 2), as RotaryEmbedding takes them
            half = op.initializer(ir.tensor(np.asarray([angles.shape[-1]], np.int64)), name=f"rotary_half_{len(self._tables)}")
            shape = op.Concat(op.Shape(self._mask), half, axis=0)
            self._tables[angles] = op.Expand(op.Cos(angles), shape), op.Expand(op.Sin(angles), shape)
        cos, sin = self._tables[angles]
        query = op.RotaryEmbedding(op.Reshape(query_heads, self._heads_flat), cos, sin, num_heads=heads)
        key = op.RotaryEmbedding(op.Reshape(key_heads, self._heads_flat), cos, sin, num_heads=kv_heads)
        attributes = {"q_num_heads": heads, "kv_num_heads": kv_heads}
        if "scale" in node.attributes:
            attributes["scale"] = node.attributes.get_float("scale")
        self._count += 1
        return op.Attention(query, key, value_flat, _bias_for_all_heads(attention_bias),
                            _name=f"grouped_query_attention_{self._count - 1}", **attributes)


def _heads_shape(heads: ir.Value) -> bool:
    """(batch, sequence, heads, head_size) with known head count and size."""
    return heads.shape is not None and len(heads.shape) == 4 and all(isinstance(size, int) for size in heads.shape[2:])


def _slices_half(node: ir.Node, first: bool) -> bool:
    """Slice(x, starts, ends, axes[, steps]) takes [0, half) (first) or [half, end) of x's last axis, step 1."""
    x = node.inputs[0]
    arguments = [constant_array(value) for value in node.inputs[1:]]
    if x.shape is None or len(x.shape) != 4 or not isinstance(x.shape[3], int) or len(arguments) < 3 or \
            any(argument is None or argument.size != 1 for argument in arguments):
        return False
    start, end, axis, *step = (int(argument.item()) for argument in arguments)
    half = x.shape[3] // 2
    span = (start, end) == (0, half) if first else start == half and end >= 2 * half
    return span and axis in (3, -1) and step in ([], [1])


def _slices_first_half(context, node: ir.Node) -> bool:
    return _slices_half(node, first=True)


def _slices_second_half(context, node: ir.Node) -> bool:
    return _slices_half(node, first=False)


def _bias_for_all_heads(bias: ir.Value) -> ir.Value:
    """The attention bias before the Expand that copies it per head, when that Expand copied heads alone:
    Attention broadcasts the heads axis itself (it needs the full query x key axes)."""
    expand = producer(bias, "Expand")
    if expand is None:
        return bias
    unexpanded = expand.inputs[0]
    if unexpanded.shape is not None and bias.shape is not None and len(unexpanded.shape) == len(bias.shape) == 4 and \
            list(unexpanded.shape[2:]) == list(bias.shape[2:]):
        return unexpanded
    return bias


def apply(model: ir.Model) -> int:
    """Requires the graph input ``attention_mask`` (rules.py checks it first). Converts the model to opset 23
    (RotaryEmbedding and Attention are opset 23 ops) only when some block matches."""
    rules = pattern.RewriteRuleSet([GroupedQueryAttention.rule(mask=graph_input(model.graph, "attention_mask"))],
                                   commute=True)  # x * cos or cos * x, and so on
    if not any(rule.match(model, model.graph, node, check_nodes_are_removable=False)
               for node in model.graph for rule in rules.rules):
        return 0
    if model.opset_imports.get("", 0) < 23:
        convert_version(model, 23)
    return rules.apply_to_model(model)
