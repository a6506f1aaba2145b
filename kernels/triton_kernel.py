"""The fused prototype-attention kernel in Triton: ``softmax(q k_pᵀ · scale) v_p`` in one pass.

One program owns a tile of ``BLOCK_N`` queries of one (batch, head) and streams the M prototypes
through on-chip memory in tiles of ``BLOCK_M`` with an online softmax (running max and sum, as
FlashAttention does), so the ``N x M`` attention matrix never reaches global memory. Every tail is
masked: any N, any M up to 1024, head dims up to 128 (padded to a power of two on chip).
Prototype banks shared by the whole batch come in with batch stride 0 (an ``expand``), so they are
read, never copied.

The same jitted function is what three callers run:

- :func:`proto_attention_triton` on CUDA tensors (and on CPU tensors under ``TRITON_INTERPRET=1``,
  which is how CI tests it against the torch reference);
- the TensorRT plugin's ``aot_impl``, which compiles it to PTX so the engine carries the kernel and
  the daemon needs no Python plugin code;
- the plugin's JIT ``impl`` for TensorRT 10.6-10.8.

The argument order (input pointers, integer strides and sizes, output pointer, then constexprs)
is TensorRT's AOT plugin convention; :data:`proad.kernels.plugin_spec.KERNEL_ARGS` names the
integers, and the plugin builds its symbolic argument list with the same functions. The scale is a
compile-time constant because AOT plugin attributes are not serialised into the engine: each
attention site compiles its own specialisation (the model has two scales, so two variants).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from proad.kernels.plugin_spec import ceil_div, grid, tiles


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


def proto_attention_triton(
    q: torch.Tensor, k_p: torch.Tensor, v_p: torch.Tensor, scale: float, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Run the fused kernel. k_p / v_p may have batch 1 (broadcast without a copy).

    ``out``: write the result there (the TensorRT JIT plugin passes its output buffer).
    """
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
    t = tiles(n, m, d)
    o = torch.empty_like(q, memory_format=torch.contiguous_format) if out is None else out
    if o.shape != q.shape or o.dtype != q.dtype:
        raise ValueError(f"out must be {tuple(q.shape)} {q.dtype}, got {tuple(o.shape)} {o.dtype}")
    proto_attention_kernel[grid(q.shape, t.block_n, ceil_div)](
        q, k_p, v_p,
        *q.stride(), *k_p.stride(), *v_p.stride(), *o.stride(),
        h, n, m,
        o,
        SCALE=float(scale), HEAD_DIM=d, BLOCK_D=t.block_d, BLOCK_N=t.block_n, BLOCK_M=t.block_m,
        DOT_FP32=q.dtype == torch.bfloat16 and interpreting(),
        num_warps=t.num_warps,
    )  # fmt: skip
    return o
