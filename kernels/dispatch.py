"""Which implementation ``proto_attention`` runs.

``auto`` (the default) runs the fused Triton kernel on CUDA tensors at inference (no gradient
needed: the kernel has no backward); where a gradient is needed (training) torch's own fused
attention, ``scaled_dot_product_attention``, which has a backward and on 2 CPU cores runs a
training iteration of the default model 1.1-1.2x faster than matmul-softmax-matmul
(``bench/train_step.py``; the same function: gradients agree to about 1e-9); the plain torch
reference everywhere else (CPU inference and every ONNX export, whose graph must stay the few
standard ops the reference traces to). So the torch model uses the fastest form it may without
being told. ``triton`` forces the kernel (on CPU tensors that needs ``TRITON_INTERPRET=1``, how CI
tests it), ``sdpa`` torch's fused attention, ``reference`` the reference. Choose with the
environment variable ``PROAD_PROTO_ATTENTION`` or, in code, :func:`use_implementation`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Literal

import torch

from proad.kernels.reference import proto_attention_reference

Implementation = Literal["auto", "triton", "sdpa", "reference"]
_CHOICES = ("auto", "triton", "sdpa", "reference")
_env = os.environ.get("PROAD_PROTO_ATTENTION", "auto")
if _env not in _CHOICES:
    raise ValueError(f"PROAD_PROTO_ATTENTION must be one of {', '.join(_CHOICES)}, got {_env!r}")
_current: str = _env


def current_implementation() -> str:
    return _current


@contextlib.contextmanager
def use_implementation(name: Implementation) -> Iterator[None]:
    """Run the enclosed code with ``name`` as the implementation."""
    global _current
    if name not in _CHOICES:
        raise ValueError(f"implementation must be one of {', '.join(_CHOICES)}, got {name!r}")
    previous, _current = _current, name
    try:
        yield
    finally:
        _current = previous


def _needs_grad(q: torch.Tensor, k_p: torch.Tensor, v_p: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and (q.requires_grad or k_p.requires_grad or v_p.requires_grad)


def _triton_fits(q: torch.Tensor, k_p: torch.Tensor, v_p: torch.Tensor) -> bool:
    from proad.kernels.plugin_spec import MAX_HEAD_DIM, MAX_PROTOTYPES

    return (
        q.is_cuda
        and not _needs_grad(q, k_p, v_p)
        and q.dtype in (torch.float32, torch.float16, torch.bfloat16)
        and q.dtype == k_p.dtype == v_p.dtype
        and k_p.shape[2] <= MAX_PROTOTYPES
        and q.shape[-1] <= MAX_HEAD_DIM
    )


def proto_attention(q: torch.Tensor, k_p: torch.Tensor, v_p: torch.Tensor, scale: float) -> torch.Tensor:
    """``softmax(q k_pᵀ · scale) v_p`` by the selected implementation (see the module docstring)."""
    choice = _current
    if choice == "auto":
        if torch.onnx.is_in_onnx_export():
            choice = "reference"
        elif _needs_grad(q, k_p, v_p):
            choice = "sdpa"
        else:
            choice = "triton" if _triton_fits(q, k_p, v_p) else "reference"
    if choice == "reference":
        return proto_attention_reference(q, k_p, v_p, scale)
    if choice == "sdpa":
        return torch.nn.functional.scaled_dot_product_attention(q, k_p, v_p, scale=scale)
    from proad.kernels.triton_kernel import proto_attention_triton

    return proto_attention_triton(q, k_p, v_p, scale)
