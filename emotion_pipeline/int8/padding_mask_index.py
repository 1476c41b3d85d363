"""Attention(x, w, b, attention_bias=f(mask)) -> Attention(x, w, b, mask_index=int32(mask)).

onnxscript's fusion hands BERT's padding mask to the fused Attention op as an additive bias, an
input that QAttention (the op's int8 form) does not have: the quantiser dropped it, and the int8
model attended to padded positions (probabilities moved by up to 0.84 on the offline-profile
MiniLM, benchmarks/README.md). An encoder's bias only hides padded keys, which is what a 2-D
mask_index does, so the attention mask itself is given there (-6 % speed: the price of being right).
Bidirectional attention only. build_int8 then checks on a padded batch that the fused graph still
gives the export's logits, so a bias that did more than hide padding fails the build.
"""

from __future__ import annotations

import onnx_ir as ir
from onnxscript.rewriter import pattern

from emotion_pipeline.int8.values import graph_input, set_shape


class PaddingBiasToMaskIndex(pattern.RewriteRuleClassBase):
    def __init__(self, *, mask_index: ir.Value):
        super().__init__("padding_bias_to_mask_index")
        self._mask_index = mask_index  # the attention mask as int32, computed once for every layer

    def pattern(self, op, x, weight, bias, attention_bias):
        return op.Attention(x, weight, bias, None, None, attention_bias, _domain="com.microsoft", _outputs=["attention"])

    def check(self, context, attention, **_) -> pattern.MatchResult:
        if attention.producer().attributes.get_int("unidirectional", 0):
            return pattern.MatchResult().fail("causal attention: its bias does more than hide padding")
        return pattern.MatchResult()

    def rewrite(self, op, x, weight, bias, attention, **_):
        return op.Attention(x, weight, bias, self._mask_index, _domain="com.microsoft", **attention.producer().attributes)


def apply(model: ir.Model) -> int:
    """Requires the graph input ``attention_mask`` (rules.py checks it first)."""
    mask = graph_input(model.graph, "attention_mask")
    cast = ir.node("Cast", [mask], {"to": ir.DataType.INT32}, name="attention_mask_int32")
    set_shape(cast.outputs[0], mask.shape, ir.TensorType(ir.DataType.INT32))
    model.graph.insert_before(next(iter(model.graph)), cast)
    count = pattern.RewriteRuleSet([PaddingBiasToMaskIndex.rule(mask_index=cast.outputs[0])]).apply_to_model(model)
    if not count:
        model.graph.remove(cast, safe=True)
    return count
