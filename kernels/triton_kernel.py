"""The fused prototype-attention kernel in Triton: ``softmax(q k_pᵀ · scale) v_p`` in one pass.

One program owns a tile of ``BLOCK_N`` queries of one (batch, head) and streams the M prototypes
through on-chip memory in tiles of ``BLOCK_M`` with an online softmax (running max and sum, as
FlashAttention does), so the ``N x M`` attention matrix never reaches global memory. Every tail is
masked: any N, any M up to 1024, head dims up to 128 (padded to a power of two on chip).
Prototype banks shared by the whole batch come in with batch stride 0 (an ``expand``), so they are
read, never copied.

The same ``@triton.jit`` function is what three callers run:

- :func:`proto_attention_triton` on CUDA tensors (and on CPU tensors under ``TRITON_INTERPRET=1``,
  which is how CI tests it against the torch reference);
- the TensorRT plugin's ``aot_impl``, which compiles it to PTX with :func:`compile_ptx` so the
  engine carries the kernel and the daemon needs no Python plugin code;
- the plugin's JIT ``impl`` for TensorRT 10.6-10.8.

The argument order (input pointers, integer strides and sizes, output pointer, then constexprs,
the scale among them) is TensorRT's AOT plugin convention; :data:`KERNEL_ARGS` names the integers
and the plugin builds its symbolic argument list from the same table. The scale is a compile-time
constant because AOT plugin attributes are not serialised into the engine: each attention site
compiles its own specialisation (the model has two scales, so two variants).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

#: The kernel's integer arguments, in order, between the input pointers (Q, K, V) and the output
#: pointer Out: the layout TensorRT's AOT plugins use (scalars after the inputs, before the outputs).
KERNEL_ARGS: tuple[str, ...] = (
    "stride_qb", "stride_qh", "stride_qn", "stride_qd",
    "stride_kb", "stride_kh", "stride_km", "stride_kd",
    "stride_vb", "stride_vh", "stride_vm", "stride_vd",
    "stride_ob", "stride_oh", "stride_on", "stride_od",
    "heads", "n_queries", "n_protos",
)  # fmt: skip

MAX_PROTOTYPES = 1024
MAX_HEAD_DIM = 128


@triton.jit
def proto_attention_kernel(
    Q, K, V,
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_km, stride_kd,
    stride_vb, stride_vh, stride_vm, stride_vd,
    stride_ob, stride_oh, stride_on, stride_od,
    heads, n_queries, n_protos,
    Out,
    SCALE: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
    DOT_FP32: tl.constexpr,
):  # fmt: skip
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // heads
    h = pid_bh % heads

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    n_ok = offs_n < n_queries
    d_ok = offs_d < HEAD_DIM

    q_ptrs = Q + b * stride_qb + h * stride_qh + offs_n[:, None] * stride_qn + offs_d[None, :] * stride_qd
    q = tl.load(q_ptrs, mask=n_ok[:, None] & d_ok[None, :], other=0.0)
    if DOT_FP32:
        q = q.to(tl.float32)

    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    qk_scale = SCALE * 1.4426950408889634  # exp(x) = exp2(x * log2(e))

    m_i = tl.full([BLOCK_N], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_N], dtype=tl.float32)
    acc = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    for start in range(0, n_protos, BLOCK_M):
        offs_m = start + tl.arange(0, BLOCK_M)
        m_ok = offs_m < n_protos
        k = tl.load(
            k_base + offs_m[None, :] * stride_km + offs_d[:, None] * stride_kd,
            mask=d_ok[:, None] & m_ok[None, :],
            other=0.0,
        )
        if DOT_FP32:
            k = k.to(tl.float32)
        qk = tl.dot(q, k) * qk_scale
        qk = tl.where(m_ok[None, :], qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        p = tl.exp2(qk - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(
            v_base + offs_m[:, None] * stride_vm + offs_d[None, :] * stride_vd,
            mask=m_ok[:, None] & d_ok[None, :],
            other=0.0,
        )
        if DOT_FP32:
            v = v.to(tl.float32)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new

    acc = acc / l_i[:, None]
    o_ptrs = Out + b * stride_ob + h * stride_oh + offs_n[:, None] * stride_on + offs_d[None, :] * stride_od
    tl.store(o_ptrs, acc.to(Out.dtype.element_ty), mask=n_ok[:, None] & d_ok[None, :])


def interpreting() -> bool:
    """True under ``TRITON_INTERPRET=1`` (Triton runs the kernel on CPU tensors with numpy).

    numpy has no bfloat16, and the interpreter's ``tl.dot`` misreads bf16 tiles, so there (and only
    there) bf16 tiles are widened to fp32 before each dot; on a GPU they go to the tensor cores as is.
    """
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@dataclass(frozen=True)
class LaunchConfig:
    """Tile sizes and grid of one launch; the plugin computes the same from shape expressions."""

    block_n: int
    block_m: int
    block_d: int
    num_warps: int

    def grid(self, batch: int, heads: int, n_queries: int) -> tuple[int, int]:
        return (triton.cdiv(n_queries, self.block_n), batch * heads)


def launch_config(n_queries: int, n_protos: int, head_dim: int) -> LaunchConfig:
    """Tiles for a shape: 64 queries x 64 prototypes, smaller for tiny problems (tl.dot needs >= 16)."""
    if not 1 <= n_protos <= MAX_PROTOTYPES:
        raise ValueError(f"prototype count must be 1..{MAX_PROTOTYPES}, got {n_protos}")
    if not 1 <= head_dim <= MAX_HEAD_DIM:
        raise ValueError(f"head dim must be 1..{MAX_HEAD_DIM}, got {head_dim}")
    block_d = max(16, triton.next_power_of_2(head_dim))
    block_n = min(64, max(16, triton.next_power_of_2(n_queries)))
    block_m = min(64, max(16, triton.next_power_of_2(n_protos)))
    num_warps = 4 if block_d <= 64 else 8
    return LaunchConfig(block_n, block_m, block_d, num_warps)


def proto_attention_triton(q: torch.Tensor, k_p: torch.Tensor, v_p: torch.Tensor, scale: float) -> torch.Tensor:
    """Run the fused kernel. k_p / v_p may have batch 1 (broadcast without a copy)."""
    if q.dim() != 4 or k_p.dim() != 4 or v_p.dim() != 4:
        raise ValueError("q, k_p and v_p must be 4-d [B, H, N|M, d]")
    b, h, n, d = q.shape
    k_p = k_p.expand(b, h, -1, -1)
    v_p = v_p.expand(b, h, -1, -1)
    if k_p.shape != v_p.shape or k_p.shape[-1] != d:
        raise ValueError(f"shape mismatch: q {tuple(q.shape)}, k_p {tuple(k_p.shape)}, v_p {tuple(v_p.shape)}")
    if not (q.dtype == k_p.dtype == v_p.dtype):
        raise ValueError(f"q, k_p, v_p must share a dtype, got {q.dtype}, {k_p.dtype}, {v_p.dtype}")
    m = k_p.shape[2]
    cfg = launch_config(n, m, d)
    o = torch.empty_like(q, memory_format=torch.contiguous_format)
    proto_attention_kernel[cfg.grid(b, h, n)](
        q, k_p, v_p,
        *q.stride(), *k_p.stride(), *v_p.stride(), *o.stride(),
        h, n, m,
        o,
        SCALE=float(scale), HEAD_DIM=d, BLOCK_D=cfg.block_d, BLOCK_N=cfg.block_n, BLOCK_M=cfg.block_m,
        DOT_FP32=q.dtype == torch.bfloat16 and interpreting(),
        num_warps=cfg.num_warps,
    )  # fmt: skip
    return o
