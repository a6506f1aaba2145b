"""Inference backends behind one interface (:class:`Backend`): ONNX Runtime, OpenVINO, torch, TensorRT.

Each is imported only when chosen, so the runtime needs only the one it uses.
"""

from __future__ import annotations

from proad.edge.backends.base import Backend, ModelInfo, ModelLoadError
from proad.edge.config import BackendConfig

__all__ = ["Backend", "ModelInfo", "ModelLoadError", "load_backend"]


def load_backend(cfg: BackendConfig) -> Backend:
    """The configured backend with its model loaded, or :class:`ModelLoadError` (one line)."""
    if cfg.kind == "onnxruntime":
        from proad.edge.backends.onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(cfg)
    if cfg.kind == "openvino":
        from proad.edge.backends.openvino_backend import OpenVinoBackend

        return OpenVinoBackend(cfg)
    if cfg.kind == "torch":
        from proad.edge.backends.torch_backend import TorchBackend

        return TorchBackend(cfg)
    from proad.edge.backends.tensorrt_backend import TensorRTBackend

    return TensorRTBackend(cfg)
