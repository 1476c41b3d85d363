"""SkipLayerNormalization(x, skip, gamma, beta[, bias]) -> Add(x, skip)[ + bias] -> LayerNormalization.

onnxscript's fusions turn a residual add + LayerNorm (BERT's post-norm blocks) into
SkipLayerNormalization, which runs ~3.5x slower on this CPU than a plain Add + LayerNormalization
(benchmarks/README.md), so it is split back. Left alone when its mean or inverse std-dev outputs
are read (the matcher requires them unused).
"""

from __future__ import annotations

import onnx_ir as ir
from onnxscript.rewriter import pattern

from emotion_pipeline.int8.values import same_shape


class SplitSkipLayerNorm(pattern.RewriteRuleClassBase):
    def __init__(self, name: str, *, has_bias: bool):
        super().__init__(name)
        self._has_bias = has_bias

    def pattern(self, op, x, skip, gamma, beta, bias):
        inputs = [x, skip, gamma, beta, bias] if self._has_bias else [x, skip, gamma, beta]
        normalized, _mean, _inverse_std, total = op.SkipLayerNormalization(
            *inputs, _domain="com.microsoft", _outputs=["normalized", None, None, "total"])
        return normalized, total

    def rewrite(self, op, x, skip, gamma, beta, bias, normalized, **_):
        epsilon = normalized.producer().attributes.get_float("epsilon", 1e-12)
        added = op.Add(x, skip)
        total = op.Add(added, bias) if self._has_bias else added
        norm = op.LayerNormalization(total, gamma, beta, axis=-1, epsilon=epsilon)
        same_shape(normalized, added, total, norm)
        return norm, total


def apply(model: ir.Model) -> int:
    rules = pattern.RewriteRuleSet([SplitSkipLayerNorm.rule("skip_layer_norm_with_bias", has_bias=True),
                                    SplitSkipLayerNorm.rule("skip_layer_norm", has_bias=False)])
    return rules.apply_to_model(model)
