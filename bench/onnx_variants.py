"""Whole-model ONNX Runtime throughput of model-config variants against the old default, interleaved.

Issue 14's speed bar is a ratio in one run (machines here differ up to 3x): a new default must keep
at least 80 % of the old default's throughput. Each variant is exported untrained (speed does not
depend on the weights) exactly as ``proad-export onnx`` does, and all sessions run alternately in
rounds of ``--seconds`` each, at batch 1 and 8, with the same threads; the ratio is of medians.

    python bench/onnx_variants.py                                  # today's default vs the pre-issue-14 one
    python bench/onnx_variants.py --variant '{"backbone": "tf_efficientnet_lite2"}'
    python bench/onnx_variants.py --variant '{}' --variant '{"image_size": 320}' --name onnx_presets
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_results
from proad.checkpoint import Checkpoint, save_checkpoint
from proad.config import ModelConfig
from proad.export.onnx_export import export_onnx, sample_images
from proad.model import ProAD

#: The default before issue 14 (2026-11): what every ratio is taken against. Spelled out in full, not
#: as a difference to today's defaults, which have moved since (M = 6 without the constraint since
#: 2026-12-04; results written before then took ``{"feature_pool": 1}`` over the M = 256 defaults).
BASELINE = {"feature_pool": 1, "prototypes": 256, "constraint": "project", "backbone": "tf_efficientnet_lite0",
            "image_size": 256, "dim": 128}  # fmt: skip


def session(overrides: dict[str, Any], folder: Path, name: str, threads: int) -> Any:
    import onnxruntime as ort

    cfg = ModelConfig(**overrides)
    torch.manual_seed(0)
    ckpt = folder / f"{name}.pt"
    model = ProAD(cfg)
    if cfg.memory_size:  # a random bank: the search costs the same, and an unfilled one is refused on load
        model.memory_bank.normal_()
    save_checkpoint(Checkpoint(cfg, model.trainable_state_dict(), 0.5), ckpt)
    export_onnx(ckpt, folder / f"{name}.onnx", verify_count=1)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(folder / f"{name}.onnx"), opts, providers=["CPUExecutionProvider"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", action="append", default=[], help="JSON ModelConfig overrides (repeatable; "
                    "default: today's default config)")  # fmt: skip
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=2.0, help="per session, batch and round")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--name", default="onnx_variants", help="results file stem under bench/results")
    args = ap.parse_args(argv)
    variants = {"pre-issue-14 default (M = 256, feature_pool 1)": BASELINE}
    for spec in args.variant or ["{}"]:
        variants["today's default" if spec == "{}" else spec] = json.loads(spec)
    # each model gets pictures of its own input size (a bigger input costs what it costs)
    images = {name: sample_images(ModelConfig(**o).image_size, 8) for name, o in variants.items()}
    with tempfile.TemporaryDirectory() as tmp:
        sessions = {name: session(o, Path(tmp), f"v{i}", args.threads) for i, (name, o) in enumerate(variants.items())}
        rates: dict[str, dict[int, list[float]]] = {name: {1: [], 8: []} for name in sessions}
        order = list(sessions)
        for rnd in range(args.rounds):
            for name in order if rnd % 2 == 0 else order[::-1]:
                for batch in (1, 8):
                    x = images[name][:batch]
                    sessions[name].run(None, {"image": x})
                    done, t0 = 0, time.perf_counter()
                    while time.perf_counter() - t0 < args.seconds:
                        sessions[name].run(None, {"image": x})
                        done += batch
                    rates[name][batch].append(done / (time.perf_counter() - t0))
    base = next(iter(rates))
    med = {n: {b: float(np.median(v)) for b, v in r.items()} for n, r in rates.items()}
    rows = ["| model | img/s batch 1 | img/s batch 8 | ratio to the pre-issue-14 default (1 / 8) |",
            "|---|---:|---:|---:|"]
    for n, m in med.items():
        rows.append(f"| {n} | {m[1]:.1f} | {m[8]:.1f} | {m[1] / med[base][1]:.3f} / {m[8] / med[base][8]:.3f} |")
    data = {"machine": machine(), "threads": args.threads, "rounds": args.rounds, "seconds": args.seconds,
            "variants": variants, "img_per_s_median": med, "img_per_s_rounds": rates}  # fmt: skip
    write_results(args.name, data, "\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
