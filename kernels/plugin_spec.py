"""The contract of the fused kernel and its TensorRT plugin, in plain Python (no torch, Triton, TensorRT).

Everything a launch needs besides the data: the plugin's identity, tile sizes, the integer
argument list in the kernel's order, and the grid. The torch launcher
(:mod:`proad.kernels.triton_kernel`) calls these with ints; the TensorRT AOT plugin
(:mod:`proad.kernels.trt_plugin`) calls the same functions with TensorRT's symbolic shape
expressions, which support ``+``, ``*`` and ceiling division. One source of truth, so the engine
launches exactly what the tests check on CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

PLUGIN_NAME = "ProtoAttention"
PLUGIN_NAMESPACE = "proad"
PLUGIN_VERSION = "1"
PLUGIN_ID = f"{PLUGIN_NAMESPACE}::{PLUGIN_NAME}"

MAX_PROTOTYPES = 1024
MAX_HEAD_DIM = 128

#: The kernel's integer arguments, in order, between the input pointers (Q, K, V) and the output
#: pointer Out: TensorRT's AOT convention (scalars after the inputs, before the outputs).
KERNEL_ARGS: tuple[str, ...] = (
    "stride_qb", "stride_qh", "stride_qn", "stride_qd",
    "stride_kb", "stride_kh", "stride_km", "stride_kd",
    "stride_vb", "stride_vh", "stride_vm", "stride_vd",
    "stride_ob", "stride_oh", "stride_on", "stride_od",
    "heads", "n_queries", "n_protos",
)  # fmt: skip


def _next_pow2(x: int) -> int:
    return 1 << (max(1, x) - 1).bit_length()


@dataclass(frozen=True)
class Tiles:
    """Tile sizes of one launch (``tl.dot`` needs every tile side >= 16)."""

    block_n: int
    block_m: int
    block_d: int
    num_warps: int


def tiles(n_queries: int | None, n_protos: int, head_dim: int) -> Tiles:
    """64 queries x 64 prototypes per step, smaller for tiny problems; ``n_queries`` None = dynamic."""
    if not 1 <= n_protos <= MAX_PROTOTYPES:
        raise ValueError(f"prototype count must be 1..{MAX_PROTOTYPES}, got {n_protos}")
    if not 1 <= head_dim <= MAX_HEAD_DIM:
        raise ValueError(f"head dim must be 1..{MAX_HEAD_DIM}, got {head_dim}")
    block_d = max(16, _next_pow2(head_dim))
    block_n = 64 if n_queries is None else min(64, max(16, _next_pow2(n_queries)))
    block_m = min(64, max(16, _next_pow2(n_protos)))
    return Tiles(block_n, block_m, block_d, num_warps=4 if block_d <= 64 else 8)


def contiguous_strides(shape: Sequence[Any]) -> list[Any]:
    """Element strides of a contiguous ``[B, H, N, d]`` tensor (ints or symbolic expressions)."""
    _, h, n, d = shape
    return [h * n * d, n * d, d, 1]


def kernel_int_args(q_shape: Sequence[Any], kv_shape: Sequence[Any], kv_batch_one: bool) -> list[Any]:
    """The integers of :data:`KERNEL_ARGS` for contiguous q / k / v / out.

    ``kv_batch_one``: the prototypes have batch 1 and are shared by every image (batch stride 0).
    """
    q_strides = contiguous_strides(q_shape)
    kv_strides = contiguous_strides(kv_shape)
    if kv_batch_one:
        kv_strides[0] = 0
    _, h, n, _ = q_shape
    m = kv_shape[2]
    return [*q_strides, *kv_strides, *kv_strides, *q_strides, h, n, m]


def grid(q_shape: Sequence[Any], block_n: int, cdiv: Callable[[Any, int], Any]) -> tuple[Any, Any]:
    """(query tiles, batch x heads): one program per query tile of one image and head."""
    b, h, n, _ = q_shape
    return cdiv(n, block_n), b * h


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)
