"""Export-time graph layout: 1-D convolutions served as 2-D ones over a height of 1.

onnxruntime's CPU provider runs 2-D convolutions in its blocked NCHWc layout and 1-D ones
without it; for the TCN (16 channels, kernel 3, 168 hours) the same network costs ~55 us of
CPU per window instead of ~80 (``bench/sustained.py``'s scoring process spends a third of
its time in the model). :func:`conv2d_graph` rewrites an exported graph so: every tensor of
shape (N, C, W) becomes (N, C, 1, W), the weights of each convolution gain the height axis,
and the few shape ops around them move their axes. The artifact contract does not change
(input ``[batch, C, W]``, output ``[batch, W]``): the graph lifts its input first.

Only graphs made of ops whose rewrite is known are rewritten (the TCN's: convolutions,
elementwise arithmetic, a mean over hours, a dense layer, unsqueeze/squeeze); anything else
(an LSTM, a transposed convolution, a reshape) leaves the graph as it is (``None``). The
exporter checks the result against torch like any export.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

_ELEMENTWISE = frozenset({"Add", "Sub", "Mul", "Div", "Erf", "Relu", "Sigmoid", "Tanh", "Gelu", "Pow", "Sqrt"})
_REDUCE = frozenset({"ReduceMean", "ReduceSum", "ReduceMax"})


class _Unsupported(Exception):
    pass


def conv2d_graph(proto: onnx.ModelProto) -> onnx.ModelProto | None:
    """A copy of ``proto`` with its 1-D convolutions as 2-D ones (see the module docstring), or
    None when the graph has an op this rewrite does not know or has no 1-D convolution."""
    if not any(n.op_type == "Conv" for n in proto.graph.node):
        return None
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    try:
        _lift(out.graph)
    except _Unsupported:
        return None
    return out


def _lift(g: onnx.GraphProto) -> None:
    if len(g.input) != 1 or len(g.output) != 1:
        raise _Unsupported("one input and one output")
    rank = {i.name: len(i.dims) for i in g.initializer}
    consts: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    inits = {i.name: i for i in g.initializer}
    source = g.input[0].name
    if len(g.input[0].type.tensor_type.shape.dim) != 3:
        raise _Unsupported("a (batch, channels, hours) input")
    lifted = source + "__nchw"  # the input with its height axis
    axes = source + "__height_axis"
    lifted_names = {lifted}  # tensors of shape (N, C, 1, W)
    new_nodes = [
        helper.make_node("Constant", [], [axes], value=numpy_helper.from_array(np.array([2], dtype=np.int64))),
        helper.make_node("Unsqueeze", [source, axes], [lifted]),
    ]
    for node in g.node:
        node = _copy(node)
        for j, name in enumerate(node.input):
            if name == source:
                node.input[j] = lifted
        ins = [x for x in node.input if x]
        up = [x in lifted_names for x in ins]
        op = node.op_type
        if op == "Constant":
            value = numpy_helper.to_array(helper.get_attribute_value(node.attribute[0]))
            consts[node.output[0]] = value
            rank[node.output[0]] = value.ndim
        elif op == "Conv":
            if not up[0] or any(up[1:]) or ins[1] not in inits:
                raise _Unsupported("a convolution of a lifted input with stored weights")
            w = consts[ins[1]]
            if w.ndim != 3:
                raise _Unsupported("1-D convolution weights")
            inits[ins[1]].CopyFrom(numpy_helper.from_array(w[:, :, None, :], ins[1]))
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
                raise _Unsupported("explicit padding")
            del node.attribute[:]
            k = attrs.get("kernel_shape", [w.shape[2]])
            pads = attrs.get("pads", [0, 0])
            node.attribute.extend([
                helper.make_attribute("kernel_shape", [1, k[0]]),
                helper.make_attribute("dilations", [1, attrs.get("dilations", [1])[0]]),
                helper.make_attribute("strides", [1, attrs.get("strides", [1])[0]]),
                helper.make_attribute("pads", [0, pads[0], 0, pads[1]]),
                helper.make_attribute("group", attrs.get("group", 1)),
            ])
            lifted_names.add(node.output[0])
        elif op in _ELEMENTWISE:
            if any(up):
                for x, u in zip(ins, up, strict=True):
                    if not u and rank.get(x, 99) > 1:  # a scalar or a per-hour vector broadcasts the same
                        raise _Unsupported("elementwise with a non-broadcastable operand")
                lifted_names.add(node.output[0])
            else:
                rank[node.output[0]] = max(rank.get(x, 99) for x in ins)
        elif op in _REDUCE:
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            if len(ins) != 1 or "axes" not in attrs:
                raise _Unsupported("reduction axes as an attribute")
            if up[0]:
                if list(attrs["axes"]) != [2]:
                    raise _Unsupported("a reduction over hours")
                _set_attr(node, "axes", [2, 3])
                if attrs.get("keepdims", 1):
                    lifted_names.add(node.output[0])
                else:
                    rank[node.output[0]] = 2
            else:
                rank[node.output[0]] = rank.get(ins[0], 99) - (0 if attrs.get("keepdims", 1) else len(attrs["axes"]))
        elif op == "Gemm":
            if any(up):
                raise _Unsupported("a dense layer on hours")
            rank[node.output[0]] = 2
        elif op in ("Unsqueeze", "Squeeze"):
            if len(ins) != 2 or ins[1] not in consts:
                raise _Unsupported("constant axes")
            old = [int(a) for a in consts[ins[1]].ravel()]
            if op == "Unsqueeze" and not up[0] and rank.get(ins[0]) == 2 and old in ([1], [2]):
                new, lift = ([1, 2] if old == [1] else [2, 3]), True  # (N, C) -> (N, C, 1, 1) or (N, 1, 1, C)
            elif op == "Squeeze" and up[0] and old == [1]:
                new, lift = [1, 2], False  # (N, 1, 1, W) -> (N, W)
            else:
                raise _Unsupported(f"{op} over axes {old}")
            name = f"{node.output[0]}__axes"
            new_nodes.append(helper.make_node("Constant", [], [name],
                                              value=numpy_helper.from_array(np.array(new, dtype=np.int64))))
            node.input[1] = name
            if lift:
                lifted_names.add(node.output[0])
            else:
                rank[node.output[0]] = 2
        else:
            raise _Unsupported(op)
        new_nodes.append(node)
    if g.output[0].name in lifted_names:
        raise _Unsupported("a (batch, hours) output")
    used = {x for n in new_nodes for x in n.input} | {g.output[0].name}
    del g.node[:]
    g.node.extend(n for n in new_nodes if n.op_type != "Constant" or n.output[0] in used)  # replaced axes
    del g.value_info[:]  # intermediate shapes changed; onnxruntime infers them again


def _copy(node: onnx.NodeProto) -> onnx.NodeProto:
    out = onnx.NodeProto()
    out.CopyFrom(node)
    return out


def _set_attr(node: onnx.NodeProto, name: str, value: list[int]) -> None:
    for a in node.attribute:
        if a.name == name:
            a.CopyFrom(helper.make_attribute(name, value))
