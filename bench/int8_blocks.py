"""Which of the encoder's float stages int8 can take, and what each buys: the measurement behind
``proad.export.quantize.EARLIEST_INT8_BLOCK`` (issue 16).

The export keeps the encoder's first, full-resolution stages in float (``float_nodes``). For a
checkpoint trained on the real sets this quantizes, beside the export's fallback form (the encoder
int8 from its first feature level, ``blocks.2`` on Lite0), forms that also round some of those
stages: block 1's depthwise convolutions, block 1's convolutions, all of block 1 (its every node:
the form the export now tries first), block 1's convolutions less its linear 1x1 projections, block
0's depthwise convolution, both blocks' depthwise ones, and all of blocks 0 and 1. Each form goes
through the export's own check on the held-out normal images of each category's train/good (score
and map error relative to each image's threshold after the form's score shift, rank agreement, the
shift itself; ``proad.export.quantize.TOLERANCE``), and runs at batch 8 in OpenVINO under the
latency hint, ``--rounds`` interleaved rounds, each round's rate over the fallback form's in the
same round (the median kept). The test sets' accuracy of the export's form is ``bench/int8.py``'s
"default" row (of block 1's convolutions alone: ``--settings histogram:default-block1``).

Writes ``bench/results/int8_blocks.{json,md}``.

    python bench/int8_blocks.py --checkpoint model.pt [--data ROOT ...] [--rounds 5] [--seconds 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, real_roots, throughput, write_results
from proad.checkpoint import load_model
from proad.export.onnx_export import export_onnx
from proad.export.quantize import (
    TOLERANCE,
    calibration_images,
    first_feature_block,
    float_nodes,
    judge,
    nncf_quantize,
    node_scope,
    runner,
)
from proad.train import open_categories


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True, help="a model trained on the real categories")
    p.add_argument("--data", nargs="+", type=Path, help="MVTec-layout roots (default: ../shared/data/*)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=2.0, help="measured time per form and round")
    p.add_argument("--name", default="int8_blocks")
    args = p.parse_args()

    model, ckpt = load_model(args.checkpoint)
    cfg = ckpt.model_config
    folders = open_categories(args.data or real_roots(), None, cfg.image_size, cfg.resize, ckpt.category_tiles)
    per_cat = ckpt.train_info.get("category_thresholds") or {}
    inputs = calibration_images([f.root / f.category / "train" / "good" for f in folders], cfg, 128,
                                ckpt.category_tiles, list(per_cat))  # as the export reads them
    calib, check = inputs.split()
    with tempfile.TemporaryDirectory() as tmp:
        export_onnx(args.checkpoint, Path(tmp) / "fp32.onnx")
        proto = onnx.load(str(Path(tmp) / "fp32.onnx"))
    fallback = float_nodes(proto, first_feature_block(model))
    scopes = {n.name: node_scope(n) for n in proto.graph.node}
    weights = {w.name: list(w.dims) for w in proto.graph.initializer}
    convs = [n for n in proto.graph.node if n.op_type == "Conv" and n.name in fallback and "blocks." in scopes[n.name]]

    def convs_of(blocks: tuple[int, ...], depthwise_only: bool) -> set[str]:
        return {n.name for n in convs if any(f"blocks.{b}." in scopes[n.name] for b in blocks)
                and (not depthwise_only or weights[n.input[1]][1] == 1)}  # fmt: skip

    rounded = {  # what each form rounds beyond the fallback; "all of" a block: its every node, as the export does
        "fallback: the encoder int8 from its first feature level": set(),
        "+ block 1's depthwise convolutions": convs_of((1,), True),
        "+ block 1's convolutions": convs_of((1,), False),
        "+ all of block 1 (the export's first form)": set(fallback) - set(float_nodes(proto, 1)),
        "+ block 1 less its 1x1 projections (bn3)": {n for n in convs_of((1,), False) if ".bn3" not in scopes[n]},
        "+ block 0's depthwise convolution": convs_of((0,), True),
        "+ blocks 0 and 1's depthwise convolutions": convs_of((0, 1), True),
        "+ all of blocks 0 and 1": set(fallback) - set(float_nodes(proto, 0)),
    }
    reference = runner(proto, args.threads)
    x = np.stack([check.images[i % len(check.images)] for i in range(8)])
    forms: dict[str, Any] = {}
    runs = {}
    for name, extra in rounded.items():
        graph = nncf_quantize(proto, calib.images, [n for n in fallback if n not in extra])
        runs[name] = runner(graph, args.threads)
        report = judge(reference, runs[name], calib, check, ckpt.threshold, per_cat)  # the export's check
        found = {k: getattr(report, k) for k in ("score_error_rel", "map_error_rel_max", "map_error_rel_p999",
                                                 "rank_agreement", "decision_flips")}  # fmt: skip
        forms[name] = {**found, "score_shift_rel": report.score_shift_rel, "refused": report.failures(),
                       "nodes_rounded": sorted(extra)}
        print(name, "refused" if report.failures() else "accepted", found, flush=True)
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, run in runs.items():
            rates[name].append(throughput(run, x, args.seconds))
    base = rates[next(iter(rates))]
    for name, v in rates.items():
        forms[name]["batch8_img_s"] = float(np.median(v))
        forms[name]["batch8_rounds_img_s"] = v
        forms[name]["batch8_paired_ratio_to_fallback"] = float(np.median([a / b for a, b in zip(v, base, strict=True)]))

    data = {"machine": machine(), "checkpoint": str(args.checkpoint), "checkpoint_sha256": ckpt.sha256,
            "threads": args.threads, "tolerance": TOLERANCE, "calibration_inputs": len(calib.images),
            "check_inputs": len(check.images), "forms": forms}
    lines = [
        "# Which of the encoder's float stages int8 can take",
        "",
        f"{data['machine']['cpu']}, {args.threads} threads, {data['machine']['date']}; checkpoint "
        f"`{args.checkpoint.name}` ({ckpt.sha256[:12]}); the export's check on {len(check.images)} held-out normal "
        f"images (tolerance: score {TOLERANCE['score_error_rel']:.0%}, map (99.9th pct) "
        f"{TOLERANCE['map_error_rel_p999']:.0%} of the threshold, rank {TOLERANCE['rank_agreement_min']}, shift "
        f"{TOLERANCE['score_shift_rel']:.0%}); batch 8, OpenVINO latency hint, median of {args.rounds} interleaved "
        "rounds, each round's rate over the fallback form's.",
        "",
        "| form | score error | map error (99.9th pct) | rank agreement | threshold shift | check | batch 8 img/s "
        "(vs the fallback) |",
        "|---|---:|---:|---:|---:|---|---:|",
    ]
    for name, f in forms.items():
        lines.append(f"| {name} | {f['score_error_rel']:.1%} | {f['map_error_rel_p999']:.1%} | "
                     f"{f['rank_agreement']:.3f} | {f['score_shift_rel']:.1%} | "
                     f"{'refused' if f['refused'] else 'accepted'} | {f['batch8_img_s']:.1f} "
                     f"({f['batch8_paired_ratio_to_fallback']:.2f}x) |")
    write_results(args.name, data, "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
