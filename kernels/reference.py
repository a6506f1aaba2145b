"""Torch reference for prototype attention: ``softmax(q k_pᵀ · scale) v_p``.

Shapes: q ``[B, H, N, d]``; k_p and v_p ``[B, H, M, d]`` (a leading 1 broadcasts, so a prototype bank
shared by the whole batch is passed without copying). Softmax runs over the M prototypes, with no
mask. Plain matmul-softmax-matmul rather than ``scaled_dot_product_attention``: it exports to the
same few standard ONNX ops on every opset and is the simplest thing a test can trust.
"""

from __future__ import annotations

import torch


def proto_attention_reference(q: torch.Tensor, k_p: torch.Tensor, v_p: torch.Tensor, scale: float) -> torch.Tensor:
    """Attention of N queries over M prototypes; softmax in fp32 for fp16/bf16 inputs."""
    if q.dim() != 4 or k_p.dim() != 4 or v_p.dim() != 4:
        raise ValueError(f"expected 4-d q, k_p, v_p, got {tuple(q.shape)}, {tuple(k_p.shape)}, {tuple(v_p.shape)}")
    if k_p.shape != v_p.shape or q.shape[-1] != k_p.shape[-1]:
        raise ValueError(f"shape mismatch: q {tuple(q.shape)}, k_p {tuple(k_p.shape)}, v_p {tuple(v_p.shape)}")
    logits = torch.matmul(q, k_p.transpose(-1, -2)) * scale
    weights = torch.softmax(logits.float(), dim=-1).to(v_p.dtype)
    return torch.matmul(weights, v_p)

