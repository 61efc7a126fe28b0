"""What an FX node computes, in one vocabulary whatever spelling the model used.

Dynamo records `torch.matmul(a, b)`, `a @ b` and `a.matmul(b)` as three different targets, a
function call and a method call. `node_op` maps each to one canonical name with the tensor the
method was called on as the first argument, so the recognizers match patterns once.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx

_FUNCTIONS: dict[Any, str] = {
    F.scaled_dot_product_attention: "sdpa",
    torch.matmul: "matmul",
    operator.matmul: "matmul",
    torch.bmm: "matmul",
    operator.mul: "mul",
    torch.mul: "mul",
    operator.truediv: "div",
    torch.div: "div",
    operator.add: "add",
    torch.add: "add",
    operator.sub: "sub",
    torch.sub: "sub",
    F.softmax: "softmax",
    torch.softmax: "softmax",
    F.dropout: "dropout",
    torch.dropout: "dropout",
    torch.transpose: "transpose",
    torch.permute: "permute",
    torch.masked_fill: "masked_fill",
    torch.where: "where",
    torch.arange: "arange",
    torch.zeros: "zeros",
    torch.ones: "ones",
    torch.full: "full",
    operator.getitem: "getitem",
    torch.reshape: "reshape",
    torch.unsqueeze: "unsqueeze",
    torch.repeat_interleave: "repeat_interleave",
    operator.le: "le",
    operator.lt: "lt",
    operator.ge: "ge",
    operator.gt: "gt",
    operator.eq: "eq",
    operator.ne: "ne",
    torch.le: "le",
    torch.lt: "lt",
    torch.ge: "ge",
    torch.gt: "gt",
    torch.eq: "eq",
    torch.ne: "ne",
    operator.and_: "and",
    operator.or_: "or",
    operator.invert: "not",
    torch.logical_and: "and",
    torch.logical_or: "or",
    torch.logical_not: "not",
    torch.tril: "tril",
    torch.triu: "triu",
}

_METHODS: dict[str, str] = {
    "matmul": "matmul",
    "bmm": "matmul",
    "mul": "mul",
    "div": "div",
    "add": "add",
    "sub": "sub",
    "softmax": "softmax",
    "transpose": "transpose",
    "permute": "permute",
    "masked_fill": "masked_fill",
    "to": "cast",
    "type": "cast",
    "float": "cast",
    "contiguous": "cast",
    "expand": "expand",
    "reshape": "reshape",
    "view": "reshape",
    "unsqueeze": "unsqueeze",
    "repeat_interleave": "repeat_interleave",
    "new_ones": "new_ones",
    "bool": "cast",
    "le": "le",
    "lt": "lt",
    "ge": "ge",
    "gt": "gt",
    "eq": "eq",
    "ne": "ne",
    "logical_and": "and",
    "logical_or": "or",
    "logical_not": "not",
    "__and__": "and",
    "__or__": "or",
    "__invert__": "not",
    "tril": "tril",
    "triu": "triu",
}


@dataclass(frozen=True)
class NodeOp:
    """A node's canonical operation; `args` start with the tensor a method was called on."""

    name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]

    def arg(self, position: int, keyword: str, default: Any = None) -> Any:
        """The argument at `position`, or passed as `keyword`, or `default`."""
        if position < len(self.args):
            return self.args[position]
        return self.kwargs.get(keyword, default)


def node_op(node: fx.Node) -> NodeOp | None:
    """The canonical operation of `node`, or None for anything else (placeholders, modules,
    operations no recognizer needs)."""
    if node.op == "call_function":
        name = _FUNCTIONS.get(node.target)
    elif node.op == "call_method":
        name = _METHODS.get(str(node.target))
    else:
        return None
    if name is None:
        return None
    return NodeOp(name, tuple(node.args), dict(node.kwargs))


def example(node: Any) -> torch.Tensor | None:
    """The example value Dynamo recorded for `node` (a fake tensor with shape and dtype)."""
    if not isinstance(node, fx.Node):
        return None
    value = node.meta.get("example_value", node.meta.get("val"))
    return value if isinstance(value, torch.Tensor) else None


def describe_node(node: fx.Node) -> str:
    """Where `node` comes from in the user's code: the module path and the source line."""
    module_stack = node.meta.get("nn_module_stack") or {}
    path = next(reversed(module_stack.values()), ("", None))[0] if module_stack else ""
    # Dynamo names the compiled module L['self']; the user knows it by its attribute path.
    path = path.removeprefix("L['self'].").removeprefix("L['self']")
    trace = node.meta.get("stack_trace") or ""
    lines = [line.strip() for line in trace.strip().splitlines() if line.strip()]
    # The last frame of the stack trace is the user's line: 'File "x.py", line N, in f'.
    frame = next((line for line in reversed(lines) if line.startswith("File ")), "")
    where = frame.replace("File ", "", 1) if frame else f"graph node {node.name}"
    return f"{path} ({where})" if path else where
