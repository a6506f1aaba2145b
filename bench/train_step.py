"""Seconds per training iteration of a preset's decoder, by ``proto_attention`` implementation.

Training runs only the decoder on cached encoder features (:mod:`proad.train`), so its time is the
cost of one iteration: decode a batch, the loss, backward, the optimiser step. The attention is
where most of it goes, and ``proto_attention`` can run it as matmul-softmax-matmul (the reference,
what every ONNX export traces) or as torch's fused ``scaled_dot_product_attention`` (what ``auto``
picks when a gradient is needed). This times both on the same model, batch and threads,
interleaved in rounds (this shared machine's speed moves between minutes: only the ratio within
one run counts), on random features of the encoder's shapes (speed does not depend on values), and
checks that both give the same loss and gradients::

    python bench/train_step.py                      # the fast preset (the defaults)
    python bench/train_step.py --rounds 8 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_results
from proad.kernels import use_implementation
from proad.loss import proad_loss
from proad.model import ProAD
from proad.presets import preset_configs
from proad.train import TrainStep

IMPLEMENTATIONS = ("reference", "sdpa")


def iteration(step: TrainStep, feats: list[torch.Tensor], opt: torch.optim.Optimizer) -> float:
    """One training iteration as :func:`proad.train.train` runs it; its seconds."""
    t0 = time.perf_counter()
    loss, _ = step(feats)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in step.parameters() if p.requires_grad], 1.0)
    opt.step()
    return time.perf_counter() - t0


def same_gradients(model: ProAD, feats: list[torch.Tensor]) -> float:
    """Largest gradient difference between the implementations on one batch (dropout off)."""
    model.eval()
    grads = []
    for impl in IMPLEMENTATIONS:
        model.zero_grad(set_to_none=True)
        with use_implementation(impl):
            out = model.decode(feats)
            proad_loss(feats, out, model.bank, model.cfg)[0].backward()
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    model.train()
    model.zero_grad(set_to_none=True)
    return max(float((a - b).abs().max()) for a, b in zip(*grads, strict=True))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--preset", default="fast")
    ap.add_argument("--rounds", type=int, default=6, help="interleaved rounds (default 6)")
    ap.add_argument("--per-round", type=int, default=3, help="iterations per implementation and round")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--name", default="train_step")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model_cfg, train_cfg = preset_configs(args.preset)
    model = ProAD(model_cfg)
    height, width = model_cfg.input_hw
    with torch.no_grad():
        shapes = [f.shape[1:] for f in model.features(torch.zeros((1, height, width, 3), dtype=torch.uint8))]
    feats = [torch.randn(train_cfg.batch_size, *s) for s in shapes]
    max_grad_diff = same_gradients(model, feats)

    step = TrainStep(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    model.train()
    seconds: dict[str, list[float]] = {impl: [] for impl in IMPLEMENTATIONS}
    for impl in IMPLEMENTATIONS:  # warm-up
        with use_implementation(impl):
            iteration(step, feats, opt)
    for _ in range(args.rounds):
        for impl in IMPLEMENTATIONS:
            with use_implementation(impl):
                seconds[impl] += [iteration(step, feats, opt) for _ in range(args.per_round)]
    median = {impl: statistics.median(v) for impl, v in seconds.items()}
    ratio = median["reference"] / median["sdpa"]

    info = machine()
    data: dict[str, Any] = {
        "machine": info,
        "preset": args.preset,
        "batch_size": train_cfg.batch_size,
        "threads": args.threads,
        "rounds": args.rounds,
        "per_round": args.per_round,
        "seconds_per_iteration": {k: round(v, 4) for k, v in median.items()},
        "all_seconds": {k: [round(x, 4) for x in v] for k, v in seconds.items()},
        "sdpa_speedup": round(ratio, 3),
        "max_gradient_difference": max_grad_diff,
    }
    lines = [
        "# Seconds per training iteration, by attention implementation",
        "",
        f"{info['cpu']} ({info['cores']} cores), {info['date']}. `{args.preset}` preset, batch {train_cfg.batch_size}, "
        f"{args.threads} threads; medians of {args.rounds} interleaved rounds of {args.per_round} iterations.",
        "",
        "| implementation | s / iteration | 1,000 iterations |",
        "|---|---:|---:|",
    ]
    for impl, v in median.items():
        lines.append(f"| {impl} | {v:.3f} | {v * 1000:.0f} s |")
    lines += [
        f"| speed-up of sdpa | {ratio:.2f}x | |",
        "",
        f"Same loss and gradients: largest gradient difference between the two {max_grad_diff:.1e} (one batch, "
        "dropout off).",
    ]
    write_results(args.name, data, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
