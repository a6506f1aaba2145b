"""Which implementation ``proto_attention`` runs.

``auto`` (the default) runs the fused Triton kernel on CUDA tensors at inference (no gradient
needed: the kernel has no backward) and the torch reference everywhere else, so the torch model
uses the kernel on a GPU without being told. ``triton`` forces the kernel (on CPU tensors that
needs ``TRITON_INTERPRET=1``, how CI tests it), ``reference`` forces the reference. Choose with
the environment variable ``PROAD_PROTO_ATTENTION`` or, in code, :func:`use_implementation`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Literal

import torch

from proad.kernels.reference import proto_attention_reference

Implementation = Literal["auto", "triton", "reference"]
_CHOICES = ("auto", "triton", "reference")
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


def _triton_fits(q: torch.Tensor, k_p: torch.Tensor, v_p: torch.Tensor) -> bool:
    from proad.kernels.plugin_spec import MAX_HEAD_DIM, MAX_PROTOTYPES

    needs_grad = torch.is_grad_enabled() and (q.requires_grad or k_p.requires_grad or v_p.requires_grad)
    return (
        q.is_cuda
        and not needs_grad
        and q.dtype in (torch.float32, torch.float16, torch.bfloat16)
        and q.dtype == k_p.dtype == v_p.dtype
        and k_p.shape[2] <= MAX_PROTOTYPES
        and q.shape[-1] <= MAX_HEAD_DIM
    )


def proto_attention(q: torch.Tensor, k_p: torch.Tensor, v_p: torch.Tensor, scale: float) -> torch.Tensor:
    """``softmax(q k_pᵀ · scale) v_p`` by the selected implementation (see the module docstring)."""
    if _current == "reference" or (_current == "auto" and not _triton_fits(q, k_p, v_p)):
        return proto_attention_reference(q, k_p, v_p, scale)
    from proad.kernels.triton_kernel import proto_attention_triton

    return proto_attention_triton(q, k_p, v_p, scale)
