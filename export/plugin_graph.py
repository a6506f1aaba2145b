"""Rewrite each attention subgraph of a plain export into one ``proad::ProtoAttention`` node.

The plain ONNX export decomposes :func:`proad.kernels.proto_attention` into standard ops::

    MatMul(q, Transpose(k)) -> Mul(scale) -> [Cast] -> Softmax(-1) -> [Cast] -> MatMul(., v)

This pass (onnx-graphsurgeon) finds every such chain, starting from its Softmax, and replaces it
with the plugin node TensorRT turns into the fused kernel::

    ProtoAttention(q, k, v; scale, plugin_namespace="proad", plugin_version="1", aot=1)  domain "proad"

Deriving the plugin graph from the plain one (rather than exporting twice) keeps one source of
truth, and comparing the two in ONNX Runtime checks the rewrite. A chain that does not match the
pattern exactly is left alone and reported; the caller compares the count with what the model
config says (three attentions per decoder layer).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from proad.kernels.plugin_spec import PLUGIN_NAME, PLUGIN_NAMESPACE, PLUGIN_VERSION


class PatternError(ValueError):
    """The graph does not have the attention pattern where a Softmax says it should."""


def _producer(t: gs.Tensor) -> gs.Node | None:
    return t.inputs[0] if isinstance(t, gs.Variable) and t.inputs else None


def _skip_cast_up(t: gs.Tensor) -> gs.Tensor:
    node = _producer(t)
    return node.inputs[0] if node is not None and node.op == "Cast" else t


def _only_consumer(t: gs.Tensor) -> gs.Node:
    if len(t.outputs) != 1:
        raise PatternError(f"{t.name} feeds {len(t.outputs)} nodes, expected 1")
    return t.outputs[0]


def _scalar(t: gs.Tensor) -> float | None:
    if isinstance(t, gs.Constant) and t.values.size == 1:
        return float(t.values.reshape(()))
    node = _producer(t)
    if node is not None and node.op == "Constant" and "value" in node.attrs:
        v = node.attrs["value"]
        values = v.values if isinstance(v, gs.Constant) else np.asarray(v)
        return float(values.reshape(())) if values.size == 1 else None
    return None


def _untranspose(graph: gs.Graph, kt: gs.Tensor) -> gs.Tensor:
    """``k`` from ``kᵀ``: the Transpose's input when there is one, else a new Transpose node."""
    node = _producer(kt)
    if node is not None and node.op == "Transpose" and list(node.attrs.get("perm", [])) == [0, 1, 3, 2]:
        return node.inputs[0]
    if isinstance(kt, gs.Constant):
        return gs.Constant(f"{kt.name}_untransposed", np.ascontiguousarray(np.swapaxes(kt.values, -1, -2)))
    k = gs.Variable(f"{kt.name}_untransposed", dtype=kt.dtype)
    graph.nodes.append(gs.Node("Transpose", inputs=[kt], outputs=[k], attrs={"perm": [0, 1, 3, 2]}))
    return k


def _match(graph: gs.Graph, softmax: gs.Node) -> tuple[gs.Tensor, gs.Tensor, gs.Tensor, float, gs.Tensor]:
    """(q, k, v, scale, output) of the attention around ``softmax``."""
    if softmax.attrs.get("axis", -1) not in (-1, 3):
        raise PatternError(f"{softmax.name}: softmax axis {softmax.attrs.get('axis')} is not the last")
    mul = _producer(_skip_cast_up(softmax.inputs[0]))
    if mul is None or mul.op != "Mul":
        raise PatternError(f"{softmax.name}: expected Mul(scale) before the softmax, found {mul and mul.op}")
    scale, logits = None, None
    for a, b in ((mul.inputs[0], mul.inputs[1]), (mul.inputs[1], mul.inputs[0])):
        if _scalar(b) is not None:
            scale, logits = _scalar(b), a
    if scale is None or logits is None:
        raise PatternError(f"{mul.name}: no scalar scale")
    qk = _producer(logits)
    if qk is None or qk.op != "MatMul":
        raise PatternError(f"{mul.name}: expected MatMul(q, kT) before the scale")
    q, kt = qk.inputs
    after = _only_consumer(softmax.outputs[0])
    if after.op == "Cast":
        after = _only_consumer(after.outputs[0])
    if after.op != "MatMul" or after.inputs[1] is softmax.outputs[0]:
        raise PatternError(f"{softmax.name}: expected MatMul(weights, v) after the softmax, found {after.op}")
    v = after.inputs[1]
    return q, _untranspose(graph, kt), v, scale, after.outputs[0]


def fuse_attention(model: onnx.ModelProto, aot: bool = True) -> tuple[onnx.ModelProto, int]:
    """The model with every attention chain replaced by a ProtoAttention node, and how many."""
    graph = gs.import_onnx(model)
    count = 0
    for softmax in [n for n in graph.nodes if n.op == "Softmax"]:
        q, k, v, scale, out = _match(graph, softmax)
        out.inputs.clear()  # detach the old MatMul; cleanup() removes the dead chain
        graph.nodes.append(
            gs.Node(
                op=PLUGIN_NAME,
                name=f"{PLUGIN_NAME}_{count}",
                domain=PLUGIN_NAMESPACE,
                inputs=[q, k, v],
                outputs=[out],
                attrs={
                    "scale": float(scale),
                    "plugin_namespace": PLUGIN_NAMESPACE,
                    "plugin_version": PLUGIN_VERSION,
                    "aot": int(aot),
                },
            )
        )
        count += 1
    graph.cleanup().toposort()
    fused = gs.export_onnx(graph)
    fused.opset_import.append(onnx.helper.make_opsetid(PLUGIN_NAMESPACE, 1))
    fused.ir_version = model.ir_version
    return fused, count
