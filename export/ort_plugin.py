"""Run a ``--plugin`` ONNX graph in ONNX Runtime on a CPU (for tests and export verification).

ONNX Runtime does not know ``proad::ProtoAttention``; onnxruntime-extensions lets a Python function
serve as a custom op. Ours calls :func:`proad.kernels.proto_attention`, the same entry point the
torch model uses. onnxruntime-extensions serves Python ops only in its own domain
(``ai.onnx.contrib``), so the session gets a copy of the graph with the plugin nodes moved there;
the file on disk keeps TensorRT's domain.
"""

from __future__ import annotations

import threading

import numpy as np
import onnx

from proad.kernels.plugin_spec import PLUGIN_NAME, PLUGIN_NAMESPACE

CONTRIB_DOMAIN = "ai.onnx.contrib"
_lock = threading.Lock()
_registered = False


def _register() -> None:
    global _registered
    with _lock:
        if _registered:
            return
        import torch
        from onnxruntime_extensions import PyCustomOpDef, onnx_op

        from proad.kernels import proto_attention

        f32, s = PyCustomOpDef.dt_float, PyCustomOpDef.dt_string

        @onnx_op(
            op_type=PLUGIN_NAME,
            inputs=[f32, f32, f32],
            outputs=[f32],
            attrs={"scale": f32, "plugin_namespace": s, "plugin_version": s, "aot": PyCustomOpDef.dt_int64},
        )
        def _proto_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, **attrs: object) -> np.ndarray:
            tensors = (torch.from_numpy(q), torch.from_numpy(k), torch.from_numpy(v))
            with torch.no_grad():
                return proto_attention(*tensors, float(attrs["scale"])).numpy()

        _registered = True


def to_contrib_domain(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy with the plugin nodes in onnxruntime-extensions' domain."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for node in copy.graph.node:
        if node.op_type == PLUGIN_NAME and node.domain == PLUGIN_NAMESPACE:
            node.domain = CONTRIB_DOMAIN
    if not any(o.domain == CONTRIB_DOMAIN for o in copy.opset_import):
        copy.opset_import.append(onnx.helper.make_opsetid(CONTRIB_DOMAIN, 1))
    return copy


def plugin_session(model: onnx.ModelProto, threads: int = 2):  # -> onnxruntime.InferenceSession
    """An ONNX Runtime CPU session that runs ProtoAttention nodes through torch."""
    import onnxruntime as ort
    from onnxruntime_extensions import get_library_path

    _register()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    options.register_custom_ops_library(get_library_path())
    data = to_contrib_domain(model).SerializeToString()
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
