"""Our rewrites of the fused graph, in the order they run, each with what it needs.

Two kinds of needs, both checked by ``run``:
- ``after``: rules whose output this one matches. A rule listed before one it needs is a bug in
  this list, so ``run`` refuses such a list before touching the graph.
- ``requires``: conditions on the graph (an input, an opset, what an earlier rule made). When one does
  not hold the graph is of another kind (no attention mask, no length-1 token selection): the rule is
  skipped and counted 0.

Counts are returned by rule name, as fuse() reports them (metrics/int8_details.json "fusions").
split_skip_layer_norm and drop_equal_qkv_hidden_sizes were never counted there and still are not
(``counted=False``), so the metrics keep their keys.

Between the rules, every value a rule makes carries its shape (values.set_shape): pooled_token_only
reads the shapes of what enters its region, and rejects a region it cannot see.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import onnx_ir as ir

from emotion_pipeline.int8 import (
    drop_equal_qkv_hidden_sizes,
    grouped_query_attention,
    padding_mask_index,
    pooled_query_attention,
    pooled_token_only,
    split_bias_gelu,
    split_skip_layer_norm,
)
from emotion_pipeline.int8.values import constant_array, graph_input

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Requirement:
    says: str  # what must hold, for messages and for the reader of RULES
    holds: Callable[[ir.Model], bool]


@dataclass(frozen=True)
class Rule:
    name: str  # its key in fuse()'s counts
    apply: Callable[[ir.Model], int]  # rewrites the model in place; returns how many places changed
    after: tuple[str, ...] = ()
    requires: tuple[Requirement, ...] = ()
    counted: bool = True


def _has_attention_mask(model: ir.Model) -> bool:
    return graph_input(model.graph, "attention_mask") is not None


def _attention_nodes(model: ir.Model) -> list[ir.Node]:
    return [node for node in model.graph if node.domain == "com.microsoft" and node.op_type == "Attention"]


def _last_attention_read_by_one_token(model: ir.Model) -> bool:
    attentions = _attention_nodes(model)
    if not attentions:
        return False
    users = [user for user, _ in attentions[-1].outputs[0].uses()]
    index = constant_array(users[0].inputs[1]) if len(users) == 1 and users[0].op_type == "Gather" else None
    return index is not None and index.shape == (1,) and users[0].attributes.get_int("axis", 0) == 1


HAS_ATTENTION_MASK = Requirement("a graph input named attention_mask", _has_attention_mask)
ONNX_OPSET_20 = Requirement("ONNX opset >= 20 (Gelu is a standard op)", lambda model: model.opset_imports.get("", 0) >= 20)
NO_QKV_HIDDEN_SIZES = Requirement("no Attention op carries qkv_hidden_sizes",
                                  lambda model: all("qkv_hidden_sizes" not in node.attributes for node in _attention_nodes(model)))
LENGTH_1_TOKEN_GATHER = Requirement("a length-1 token Gather reads the last Attention op", _last_attention_read_by_one_token)

RULES: tuple[Rule, ...] = (
    Rule("split_skip_layer_norm", split_skip_layer_norm.apply, counted=False),
    Rule("drop_equal_qkv_hidden_sizes", drop_equal_qkv_hidden_sizes.apply, counted=False),
    Rule("padding_mask_index", padding_mask_index.apply, requires=(HAS_ATTENTION_MASK,)),
    Rule("onnx_gelu", split_bias_gelu.apply, requires=(ONNX_OPSET_20,)),
    Rule("grouped_query_attention", grouped_query_attention.apply, requires=(HAS_ATTENTION_MASK,)),
    Rule("pooled_token_only", pooled_token_only.apply),
    Rule("pooled_query_attention", pooled_query_attention.apply,
         after=("drop_equal_qkv_hidden_sizes", "padding_mask_index", "pooled_token_only"),
         requires=(NO_QKV_HIDDEN_SIZES, LENGTH_1_TOKEN_GATHER)),
)


def check_order(rules: Sequence[Rule]) -> None:
    """Every rule after the ones it names in ``after``; raises ValueError otherwise."""
    seen: set[str] = set()
    for rule in rules:
        missing = [name for name in rule.after if name not in seen]
        if missing:
            raise ValueError(f"int8 rewrite rule '{rule.name}' must run after {', '.join(missing)}, whose output it "
                             f"matches: fix the order of emotion_pipeline.int8.rules.RULES")
        seen.add(rule.name)


def run(model: ir.Model, rules: Sequence[Rule] = RULES) -> dict[str, int]:
    """Apply the rules in order; returns name -> count for the counted ones (0 for a skipped rule)."""
    check_order(rules)
    counts: dict[str, int] = {}
    for rule in rules:
        unmet = [requirement.says for requirement in rule.requires if not requirement.holds(model)]
        if unmet:
            log.info("int8 rewrite %s skipped, it requires: %s", rule.name, "; ".join(unmet))
        count = 0 if unmet else rule.apply(model)
        if rule.counted:
            counts[rule.name] = count
    return counts
