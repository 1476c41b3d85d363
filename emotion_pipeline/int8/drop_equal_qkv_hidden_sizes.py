"""Attention(..., qkv_hidden_sizes=[n, n, n]) -> Attention(...) without the attribute.

onnxscript's fused Attention op states equal Q/K/V sizes in ``qkv_hidden_sizes``, an attribute that
makes the int8 quantiser skip the op; without it (equal sizes are the default) its Q/K/V projection
is quantised too, as QAttention (MiniLM int8: 558 -> 674 sentences/s, benchmarks/README.md).
"""

from __future__ import annotations

import onnx_ir as ir
from onnxscript.rewriter import pattern


class DropEqualQkvHiddenSizes(pattern.RewriteRuleClassBase):
    def pattern(self, op, x):
        return op.Attention(x, _domain="com.microsoft", _allow_other_inputs=True, _outputs=["attention"])

    def check(self, context, attention, **_) -> pattern.MatchResult:
        sizes = attention.producer().attributes.get_ints("qkv_hidden_sizes")
        if sizes is None or len(set(sizes)) != 1:
            return pattern.MatchResult().fail("no qkv_hidden_sizes, or unequal ones (needed then)")
        return pattern.MatchResult()

    def rewrite(self, op, attention, **_):
        node = attention.producer()
        attributes = {name: attr for name, attr in node.attributes.items() if name != "qkv_hidden_sizes"}
        return op.Attention(*node.inputs, _domain="com.microsoft", **attributes)


def apply(model: ir.Model) -> int:
    return pattern.RewriteRuleSet([DropEqualQkvHiddenSizes.rule()]).apply_to_model(model)
