"""Attention(x) -> Gather(one token) becomes MultiHeadAttention(query = that token's Q projection,
keys and values = every token's): the last attention computes 1 query row per text instead of ~20.

After pooled_token_only the last attention's output is read for the pooled token only, through a
length-1 Gather; the op still computes every token's row (+8 % for the whole model once it does not,
benchmarks/README.md). For a fused Attention op (packed Q/K/V weight, BERT-type models) with equal
Q/K/V sizes only; the projections stay MatMuls, which the quantiser turns into int8 ones like every other.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern

from emotion_pipeline.int8.values import constant_array, set_shape


class PooledQueryAttention(pattern.RewriteRuleClassBase):
    def pattern(self, op, x, weight, bias, mask_index, index):
        attention = op.Attention(x, weight, bias, mask_index, _domain="com.microsoft", _outputs=["attention"])
        return op.Gather(attention, index, axis=1, _outputs=["selected"])

    def check(self, context, weight, bias, index, attention, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        node = attention.producer()
        if weight.const_value is None or bias.const_value is None:
            return result.fail("Q/K/V weight or bias not constant")
        if node.attributes.get_int("unidirectional", 0) or "qkv_hidden_sizes" in node.attributes:
            return result.fail("causal attention, or Q/K/V of different sizes")
        selected = constant_array(index)
        if selected is None or selected.shape != (1,):  # the length-1 selection pooled_token_only makes
            return result.fail("not a length-1 token selection")
        return result

    def rewrite(self, op, x, weight, bias, mask_index, index, attention, selected, **_):
        node = attention.producer()
        weights, biases = weight.const_value.numpy(), bias.const_value.numpy()
        hidden = weights.shape[0]

        def constant(name: str, array) -> ir.Value:
            return op.initializer(ir.tensor(np.ascontiguousarray(array)), name=f"{node.name or 'attention'}_{name}")

        token = op.Gather(x, index, axis=1)
        query = op.MatMul(token, constant("q_weight", weights[:, :hidden]))
        query_biased = op.Add(query, constant("q_bias", biases[:hidden]))
        keys_values = op.MatMul(x, constant("kv_weight", weights[:, hidden:]))
        keys_values_biased = op.Add(keys_values, constant("kv_bias", biases[hidden:]))
        keys, values = op.Split(keys_values_biased, constant("kv_split", np.asarray([hidden, hidden], np.int64)), axis=-1,
                                _outputs=2)
        attributes = {"num_heads": node.attributes.get_int("num_heads")}
        for name in ("scale", "mask_filter_value"):
            if name in node.attributes:
                attributes[name] = node.attributes.get_float(name)
        pooled = op.MultiHeadAttention(query_biased, keys, values, None, mask_index, _domain="com.microsoft", **attributes)
        batch, sequence = (x.shape[0], x.shape[1]) if x.shape is not None else (None, None)
        for value in (token, query, query_biased, pooled):
            set_shape(value, [batch, 1, hidden] if x.shape is not None else None, selected.type)
        for value in (keys_values, keys_values_biased):
            set_shape(value, None, selected.type)
        for value in (keys, values):
            set_shape(value, [batch, sequence, hidden] if x.shape is not None else None, selected.type)
        return pooled


def apply(model: ir.Model) -> int:
    """Requires the length-1 Gather after the last attention (pooled_token_only) and no qkv_hidden_sizes on it
    (drop_equal_qkv_hidden_sizes): rules.py checks both first."""
    return pattern.RewriteRuleSet([PooledQueryAttention.rule()]).apply_to_model(model)
