"""The fused Triton kernel against the torch reference (interpreted on CPU in CI), and its dispatch."""

from __future__ import annotations

import pytest
import torch

from conftest import DEVICE
from proad.kernels import proto_attention_reference, use_implementation
from proad.kernels.plugin_spec import KERNEL_ARGS, ceil_div, grid, kernel_int_args, tiles
from proad.kernels.triton_kernel import proto_attention_triton

TOL = {torch.float32: 2e-5, torch.float16: 3e-3, torch.bfloat16: 2.5e-2}

# (batch, heads, queries N, prototypes M, head dim): non-powers of two, tiny and large M, every head dim
SHAPES = [
    (1, 1, 1, 6, 32),
    (2, 4, 37, 6, 32),
    (2, 2, 100, 256, 64),
    (1, 1, 256, 1000, 32),
    (3, 1, 19, 1024, 128),
    (1, 2, 65, 129, 96),
]


def _inputs(shape, dtype, kv_batch=None, seed=0):
    b, h, n, m, d = shape
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, n, d, generator=g)
    k = torch.randn(kv_batch or b, h, m, d, generator=g)
    v = torch.randn(kv_batch or b, h, m, d, generator=g)
    return [t.to(DEVICE, dtype) for t in (q, k, v)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_kernel_matches_reference(shape, dtype) -> None:
    q, k, v = _inputs(shape, dtype)
    scale = shape[-1] ** -0.5 * 2.0  # sharper than 1/sqrt(d): exercises the running max
    out = proto_attention_triton(q, k, v, scale)
    ref = proto_attention_reference(q.float(), k.float(), v.float(), scale)
    assert out.dtype == dtype and out.shape == q.shape
    torch.testing.assert_close(out.float(), ref, atol=TOL[dtype], rtol=TOL[dtype])


def test_shared_bank_is_read_with_batch_stride_zero() -> None:
    q, k, v = _inputs((3, 2, 40, 50, 32), torch.float32, kv_batch=1)
    out = proto_attention_triton(q, k, v, 0.3)
    k3, v3 = (t.expand(3, -1, -1, -1).contiguous() for t in (k, v))
    expanded = proto_attention_triton(q, k3, v3, 0.3)
    torch.testing.assert_close(out, expanded)
    torch.testing.assert_close(out, proto_attention_reference(q, k, v, 0.3), atol=2e-5, rtol=2e-5)


def test_non_contiguous_queries_and_output_buffer() -> None:
    q, k, v = _inputs((2, 4, 33, 20, 32), torch.float32)
    q_t = q.transpose(1, 2).contiguous().transpose(1, 2)  # the model's [B, N, H, d] view
    buffer = torch.empty_like(q)
    result = proto_attention_triton(q_t, k, v, 0.2, out=buffer)
    assert result is buffer
    torch.testing.assert_close(buffer, proto_attention_reference(q, k, v, 0.2), atol=2e-5, rtol=2e-5)


def test_extreme_logits_stay_finite() -> None:
    q, k, v = _inputs((1, 1, 16, 300, 32), torch.float32)
    out = proto_attention_triton(q * 50, k, v, 1.0)  # logits in the hundreds
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, proto_attention_reference(q * 50, k, v, 1.0), atol=1e-4, rtol=1e-4)


def test_limits_are_enforced() -> None:
    q, k, v = _inputs((1, 1, 4, 1025, 32), torch.float32)
    with pytest.raises(ValueError, match="prototype count"):
        proto_attention_triton(q, k, v, 1.0)
    q, k, v = _inputs((1, 1, 4, 8, 160), torch.float32)
    with pytest.raises(ValueError, match="head dim"):
        proto_attention_triton(q, k, v, 1.0)
    q, k, v = _inputs((1, 1, 4, 8, 32), torch.float32)
    with pytest.raises(ValueError, match="share a dtype"):
        proto_attention_triton(q, k.half(), v, 1.0)


def test_launch_arguments_are_the_plugin_contract() -> None:
    """What the torch launcher passes for contiguous tensors is exactly what the AOT plugin computes."""
    b, h, n, m, d = 2, 4, 256, 96, 32
    q, k, v = _inputs((b, h, n, m, d), torch.float32, kv_batch=1)
    ke, ve = k.expand(b, h, -1, -1), v.expand(b, h, -1, -1)
    out = torch.empty_like(q)
    launched = [*q.stride(), *ke.stride(), *ve.stride(), *out.stride(), h, n, m]
    assert kernel_int_args(q.shape, k.shape, kv_batch_one=True) == launched
    assert len(launched) == len(KERNEL_ARGS)
    t = tiles(n, m, d)
    assert (t.block_n, t.block_m, t.block_d) == (64, 64, 32)
    assert grid(q.shape, t.block_n, ceil_div) == (4, b * h)
    small = tiles(5, 6, 20)
    assert (small.block_n, small.block_m, small.block_d) == (16, 16, 32)  # tl.dot needs tiles >= 16
    assert tiles(None, 256, 128).block_n == 64 and tiles(None, 256, 128).num_warps == 8


def test_dispatch_modes(monkeypatch: pytest.MonkeyPatch) -> None:
    import proad.kernels.dispatch as dispatch
    from proad.kernels import proto_attention

    calls = []
    real = dispatch.proto_attention_reference
    monkeypatch.setattr(dispatch, "proto_attention_reference", lambda *a: calls.append("ref") or real(*a))
    q, k, v = _inputs((1, 2, 20, 24, 32), torch.float32)
    auto = proto_attention(q, k, v, 0.5)
    assert calls == (["ref"] if DEVICE == "cpu" else [])  # auto: the kernel only on CUDA
    with use_implementation("triton"):
        fused = proto_attention(q, k, v, 0.5)
    with use_implementation("reference"):
        proto_attention(q, k, v, 0.5)
    torch.testing.assert_close(fused, auto, atol=2e-5, rtol=2e-5)
    n_calls = len(calls)
    q.requires_grad_(True)
    trained = proto_attention(q, k, v, 0.5)  # needs a gradient: torch's fused attention, not the reference
    assert len(calls) == n_calls
    (grad,) = torch.autograd.grad(trained.square().sum(), q)
    q_ref = q.detach().clone().requires_grad_(True)
    (grad_ref,) = torch.autograd.grad(proto_attention_reference(q_ref, k, v, 0.5).square().sum(), q_ref)
    torch.testing.assert_close(trained, proto_attention_reference(q, k, v, 0.5), atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(grad, grad_ref, atol=2e-5, rtol=2e-5)
    with use_implementation("reference"):
        proto_attention(q, k, v, 0.5)
    assert calls[-1] == "ref"
    with pytest.raises(ValueError, match="implementation must be one of"), use_implementation("fast"):  # type: ignore[arg-type]
        pass


def test_model_with_fused_kernel_matches_reference(small_cfg) -> None:
    from proad.data.synth import render
    from proad.model import ProAD

    torch.manual_seed(0)
    model = ProAD(small_cfg).eval().to(DEVICE)
    x = torch.from_numpy(render("board", "spot", index=2).image[None]).to(DEVICE)
    with torch.no_grad(), use_implementation("reference"):
        ref_map, ref_score = model(x)
    with torch.no_grad(), use_implementation("triton"):
        map_, score = model(x)
    torch.testing.assert_close(map_, ref_map, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(score, ref_score, atol=1e-4, rtol=1e-4)
