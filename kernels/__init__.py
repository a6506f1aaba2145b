"""Prototype attention, the one op the Pro-AD decoder spends its time in (DESIGN §3).

``proto_attention(q, k_p, v_p, scale)`` is the single entry point the model calls, so the fused
kernel replaces the implementation without touching the model:

- :mod:`proad.kernels.reference`: the plain torch version, the oracle of every kernel test;
- :mod:`proad.kernels.triton_kernel`: the fused Triton kernel (online softmax, one pass);
- :mod:`proad.kernels.dispatch`: which of the two runs (the kernel on CUDA at inference);
- :mod:`proad.kernels.trt_plugin`: the TensorRT plugin ``proad::ProtoAttention`` built on the
  same kernel (imports TensorRT only when asked).

This package imports nothing of ours (DESIGN §1). Its attributes load lazily, so ``import
proad.kernels`` needs neither torch, Triton nor TensorRT: the edge runtime imports it without them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from proad.kernels.dispatch import proto_attention, use_implementation
    from proad.kernels.reference import proto_attention_reference

__all__ = ["proto_attention", "proto_attention_reference", "use_implementation"]

_LAZY = {
    "proto_attention": "proad.kernels.dispatch",
    "use_implementation": "proad.kernels.dispatch",
    "proto_attention_reference": "proad.kernels.reference",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'proad.kernels' has no attribute {name!r}")
