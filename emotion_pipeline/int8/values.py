"""Small helpers on graph values that the rules share: the shape and type of the values they make,
constants, graph inputs, producers."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx_ir as ir


def set_shape(value: ir.Value, dims: Sequence | ir.Shape | None, tensor_type: ir.TypeProtocol | None) -> ir.Value:
    """Give a value that a rule made its shape (dims None: unknown) and type.

    The rewriter gives the values that replace a matched output that output's shape, but not the
    values in between; pooled_token_only checks the shapes of the values entering its region, so
    every rule states the shapes of what it makes. Returns the value.
    """
    value.shape = None if dims is None else ir.Shape(dims)
    value.type = tensor_type
    return value


def same_shape(template: ir.Value, *values: ir.Value) -> None:
    """The values take template's shape and type (ops that keep their input's shape: Add, norms, GELU)."""
    for value in values:
        set_shape(value, template.shape, template.type)


def constant_array(value: ir.Value | None) -> np.ndarray | None:
    """The array of an initializer or of a Constant op's output, else None."""
    tensor = ir.convenience.get_const_tensor(value) if value is not None else None
    return tensor.numpy() if tensor is not None else None


def graph_input(graph: ir.Graph, name: str) -> ir.Value | None:
    return next((value for value in graph.inputs if value.name == name), None)


def producer(value: ir.Value | None, op_type: str) -> ir.Node | None:
    """The op that computes value, if it is a standard-domain ``op_type``, else None."""
    node = value.producer() if value is not None else None
    return node if node is not None and node.domain == "" and node.op_type == op_type else None
