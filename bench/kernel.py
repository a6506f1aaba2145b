"""Fused prototype-attention kernel vs torch SDPA vs plain matmul-softmax-matmul, on a GPU.

Shapes are the model's (4 heads of 32 channels) over batch 1-32, N = 256-4096 tokens and
M = 6-1024 prototypes, fp16. Reports time per call (CUDA events via ``triton.testing.do_bench``)
and the achieved memory bandwidth (q, k, v read once and o written once, over the time), plus a
check that the torch model with the fused kernel matches the reference within fp16 tolerance.

    python bench/kernel.py            # writes bench/results/kernel.json and kernel.md on a GPU

Where no CUDA device exists it says so and writes nothing (committed GPU results stay).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_results

HEADS, HEAD_DIM = 4, 32
GRID = [  # (batch, N, M)
    (1, 256, 256), (16, 256, 6), (16, 256, 256), (16, 256, 1024), (32, 256, 256),
    (16, 1024, 256), (8, 4096, 256), (1, 4096, 1024), (32, 1024, 1024),
]  # fmt: skip


def plain(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    return torch.softmax((q @ k.transpose(-1, -2)) * scale, dim=-1) @ v


def bench_shape(batch: int, n: int, m: int, dtype: torch.dtype) -> dict[str, Any]:
    from triton.testing import do_bench

    from proad.kernels.triton_kernel import proto_attention_triton

    q = torch.randn(batch, HEADS, n, HEAD_DIM, device="cuda", dtype=dtype)
    k = torch.randn(batch, HEADS, m, HEAD_DIM, device="cuda", dtype=dtype)
    v = torch.randn_like(k)
    scale = HEAD_DIM**-0.5
    fused = proto_attention_triton(q, k, v, scale)
    ref = plain(q.float(), k.float(), v.float(), scale)
    err = float((fused.float() - ref).abs().max())
    times = {
        "fused_ms": do_bench(lambda: proto_attention_triton(q, k, v, scale)),
        "sdpa_ms": do_bench(lambda: F.scaled_dot_product_attention(q, k, v, scale=scale)),
        "plain_ms": do_bench(lambda: plain(q, k, v, scale)),
    }
    moved = (q.numel() * 2 + k.numel() + v.numel()) * q.element_size()  # q in, o out, k and v in
    return {
        "batch": batch, "n": n, "m": m, "dtype": str(dtype).removeprefix("torch."), **times,
        "fused_gbps": moved / (times["fused_ms"] * 1e-3) / 1e9,
        "speedup_vs_sdpa": times["sdpa_ms"] / times["fused_ms"],
        "speedup_vs_plain": times["plain_ms"] / times["fused_ms"],
        "max_abs_error": err,
    }  # fmt: skip


def model_check() -> dict[str, Any]:
    """The torch model with the fused kernel (fp16) against the reference implementation."""
    from proad.config import ModelConfig
    from proad.data.synth import render
    from proad.kernels import use_implementation
    from proad.model import ProAD

    torch.manual_seed(0)
    model = ProAD(ModelConfig()).eval().cuda().half()
    x = torch.from_numpy(render("board", "missing", index=1).image[None]).cuda()
    with torch.no_grad(), use_implementation("reference"):
        ref_map, ref_score = model(x)
    with torch.no_grad(), use_implementation("triton"):
        map_, score = model(x)
    return {"map_max_abs_error": float((map_ - ref_map).abs().max()),
            "score_abs_error": float((score - ref_score).abs().max()), "tolerance": 5e-3}


def table(data: dict[str, Any]) -> str:
    lines = [
        "# Fused prototype attention vs torch",
        "",
        f"{data['machine']['gpu']}, torch {data['machine']['torch']}, {data['machine']['date']}. "
        f"{HEADS} heads x {HEAD_DIM} channels, fp16.",
        "",
        "| batch | N | M | fused ms | SDPA ms | plain ms | fused GB/s | vs SDPA | vs plain | max err |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in data["shapes"]:
        lines.append(f"| {r['batch']} | {r['n']} | {r['m']} | {r['fused_ms']:.4f} | {r['sdpa_ms']:.4f} | "
                     f"{r['plain_ms']:.4f} | {r['fused_gbps']:.0f} | {r['speedup_vs_sdpa']:.2f}x | "
                     f"{r['speedup_vs_plain']:.2f}x | {r['max_abs_error']:.1e} |")
    mc = data["model_check"]
    lines += ["", f"Model with the fused kernel vs reference (fp16): max |map| error {mc['map_max_abs_error']:.1e}, "
              f"score {mc['score_abs_error']:.1e} (tolerance {mc['tolerance']:.0e})."]
    return "\n".join(lines)


def main() -> int:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    if not torch.cuda.is_available():
        kept = Path(__file__).resolve().parent / "results" / "kernel.md"
        where = f"committed GPU results: {kept}" if kept.is_file() else "no GPU results are committed yet"
        print(f"bench/kernel.py: no CUDA device on this machine: nothing measured, nothing written ({where})")
        return 0
    shapes = []
    for batch, n, m in GRID:
        row = bench_shape(batch, n, m, torch.float16)
        shapes.append(row)
        print(f"B={batch} N={n} M={m}: fused {row['fused_ms']:.4f} ms, SDPA {row['sdpa_ms']:.4f} ms "
              f"({row['speedup_vs_sdpa']:.2f}x), {row['fused_gbps']:.0f} GB/s", flush=True)
    data = {"machine": machine(), "shapes": shapes, "model_check": model_check()}
    write_results("kernel", data, table(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
