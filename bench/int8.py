"""int8 against fp32 on the real sets and on this CPU: what ``proad-export onnx --precision int8`` buys
and what it costs (issue 16).

For a trained checkpoint (one model for the real categories in ``../shared/data``):

1. exports the fp32 graph and the int8 graph exactly as ``proad-export onnx [--precision int8
   --calibration <each category's train/good>]`` does (the "default" row: the first of its forms,
   int8 from block 1 or the fallback, that its check accepts; the report says which), the
   fallback form beside it when the export wrote the faster one, plus the int8 forms that lost
   (measured and kept in the report, never the default): ``encoder all int8`` (only the map tail in float)
   and ``everything int8`` (nothing kept in float); with ``--bf16`` also the fp32 and default int8
   graphs with OpenVINO's bf16 for what runs in float (``openvino.precision: bf16``); with
   ``--settings SETTING:FLOAT ...`` also graphs quantized with other NNCF settings (:data:`SETTINGS`)
   and another choice of what stays in float (:data:`KEPT_FLOAT`), e.g. ``min-max:default`` (the
   export's written float parts with min-max activation ranges; min-max was the export's until
   2026-12-03, with the fallback's float parts);
   the lost forms and the default use the export's settings (``proad.export.quantize.export_settings``);
2. **accuracy**: every real category's test set through each graph in OpenVINO (what the daemon's
   ``backend.kind: openvino`` runs), scored by :func:`proad.evaluate.evaluate` (image AUROC,
   pixel AUROC, AUPRO, misses and false alarms at each graph's thresholds: the stored ones plus the
   graph's score shift, as the export writes them); the bar is at most
   0.005 image AUROC and 0.01 AUPRO lost against fp32 on every category;
3. **speed**: the whole model at batch 1 and 8, ONNX Runtime fp32 (today's path) beside OpenVINO
   fp32 and every int8 form, interleaved (``--rounds`` rounds of each in turn, the median kept, and
   the median of each round's ratio to ONNX Runtime fp32 in that round); and
   the export's int8 under OpenVINO's throughput hint (two one-thread streams): through the backend
   (a batch cut into one part per stream) and with two requests kept in flight (:class:`InFlight`),
   beside ONNX Runtime fp32 kept in flight the same way (two one-thread sessions).

Writes ``bench/results/int8.{json,md}``.

    python bench/int8.py --checkpoint model.pt [--data ROOT ...] [--seconds 6] [--rounds 3] [--bf16]
                         [--settings histogram:tail full-bias-correction:tail ...] [--name NAME]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, real_roots, throughput, write_results
from proad.checkpoint import load_model
from proad.config import ModelConfig
from proad.evaluate import evaluate
from proad.export.onnx_export import ExportError, export_onnx, sample_images
from proad.export.quantize import (
    TOLERANCE,
    QuantReport,
    calibration_images,
    compare,
    export_settings,
    first_feature_block,
    float_nodes,
    int8_forms,
    nncf_quantize,
    node_scope,
    quantize,
    runner,
    score_offsets,
    shift_share,
    shifted_thresholds,
)
from proad.train import open_categories

BAR = {"image_auroc": 0.005, "aupro": 0.01}

#: NNCF settings a ``--settings`` candidate can use (``nncf.quantize`` keywords, built lazily: nncf is
#: imported only when one is asked for). The export uses ``histogram`` (README, "int8"); the others
#: are NNCF's defaults (min-max) and variations of them.
SETTINGS: dict[str, Callable[[], dict[str, Any]]] = {
    "min-max": lambda: {},  # NNCF's own defaults: min-max activation ranges (the export's until 2026-12-03)
    "histogram": export_settings,  # activation ranges from histograms (the export's)
    "quantile": lambda: _advanced(ranges="MEAN_QUANTILE"),  # activation ranges with outliers clipped
    "full-bias-correction": lambda: {"fast_bias_correction": False},  # NNCF's slower, layer-wise correction
    "no-bias-correction": lambda: _advanced(disable_bias_correction=True),
}
#: What a ``--settings`` candidate keeps in float: the form the export wrote, only the map tail (the
#: whole encoder int8), the tail and the encoder's stem (its blocks int8), or the export's fallback
#: form (int8 from the first feature level, the only form before 2026-12-05) less block 1's 1x1
#: convolutions or less all of block 1 (those int8: README, "Which of block 1's convolutions").
KEPT_FLOAT = ("default", "tail", "tail+stem", "default-block1-1x1", "default-block1")


def _advanced(ranges: str | None = None, **fields: Any) -> dict[str, Any]:
    """NNCF's advanced parameters: ``ranges`` names a ``RangeEstimatorParametersSet`` for activations."""
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    if ranges is not None:
        fields["activations_range_estimator_params"] = getattr(RangeEstimatorParametersSet, ranges)
    return {"advanced_parameters": AdvancedQuantizationParameters(**fields)}


class InFlight:
    """Several calls kept in flight, one per runner (an ONNX Runtime session or an OpenVINO request
    each; both release the GIL): what an application that keeps frames in flight gets from OpenVINO's
    throughput streams. :meth:`rate` is its images per second, every started call waited for."""

    def __init__(self, runs: list[Callable[[np.ndarray], Any]]) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.runs = runs
        self.pools = [ThreadPoolExecutor(1) for _ in runs]

    def rate(self, x: np.ndarray, seconds: float) -> float:
        for run in self.runs:  # warm each runner
            run(x)
        t0 = time.perf_counter()
        pending = [pool.submit(run, x) for pool, run in zip(self.pools, self.runs, strict=True)]
        done, k = 0, 0
        while time.perf_counter() - t0 < seconds:  # the oldest call ends, its runner starts the next
            pending[k].result()
            done += len(x)
            pending[k] = self.pools[k].submit(self.runs[k], x)
            k = (k + 1) % len(self.runs)
        for future in pending:
            future.result()
            done += len(x)
        return done / (time.perf_counter() - t0)


def rate(run: Callable[[np.ndarray], Any] | InFlight, images: np.ndarray, seconds: float) -> float:
    """Images per second of a runner called flat out, or of calls kept in flight."""
    return run.rate(images, seconds) if isinstance(run, InFlight) else throughput(run, images, seconds)


def setting_spec(text: str) -> tuple[str, str]:
    """``SETTING:FLOAT`` -> (setting, kept float), for argparse."""
    setting, _, kept = text.partition(":")
    if setting not in SETTINGS or (kept or "default") not in KEPT_FLOAT:
        raise argparse.ArgumentTypeError(
            f"{text!r}: want SETTING:FLOAT, SETTING one of {', '.join(SETTINGS)}, FLOAT one of {', '.join(KEPT_FLOAT)}")
    return setting, kept or "default"


class GraphModel(torch.nn.Module):
    """An exported graph behind the interface :func:`proad.evaluate.evaluate` calls."""

    def __init__(self, infer: Callable[[np.ndarray], tuple[np.ndarray, ...]], cfg: ModelConfig) -> None:
        super().__init__()
        self.infer, self.cfg = infer, cfg

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        amap, score = self.infer(image.numpy())[:2]
        return torch.from_numpy(amap), torch.from_numpy(score)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True, help="a model trained on the real categories")
    p.add_argument("--data", nargs="+", type=Path, help="MVTec-layout roots (default: ../shared/data/*)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seconds", type=float, default=6.0, help="measured time per graph and batch size")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--name", default="int8")
    p.add_argument("--bf16", action="store_true",
                   help="also the fp32 and default int8 graphs with OpenVINO's bf16 for their float parts "
                        "(where the CPU has bf16 units)")
    p.add_argument("--settings", nargs="+", type=setting_spec, default=[], metavar="SETTING:FLOAT",
                   help=f"also int8 graphs quantized with other NNCF settings ({', '.join(SETTINGS)}) keeping "
                        f"{' / '.join(KEPT_FLOAT)} in float, e.g. histogram:tail")
    args = p.parse_args()
    import onnxruntime as ort

    torch.set_num_threads(args.threads)
    roots = args.data or real_roots()
    model, ckpt = load_model(args.checkpoint)
    cfg = ckpt.model_config
    folders = open_categories(roots, None, cfg.image_size, cfg.resize, ckpt.category_tiles)
    calibration = [f.root / f.category / "train" / "good" for f in folders]
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        export_onnx(args.checkpoint, fp32)
        first = first_feature_block(model)
        proto = onnx.load(str(fp32))
        scopes = {node.name: node_scope(node) for node in proto.graph.node}
        fallback = float_nodes(proto, first)  # the export's form when the faster one is refused: int8 from blocks.2
        tail = [n for n in fallback if "model.encoder." not in scopes[n] and "model.input_norm" not in scopes[n]]
        kept = {"tail": tail, "tail+stem": [n for n in fallback if n in tail or "blocks." not in scopes[n]]}
        weights = {w.name: list(w.dims) for w in proto.graph.initializer}
        block1 = {n.name for n in proto.graph.node if n.op_type == "Conv" and "body.blocks.1." in scopes[n.name]}
        pointwise = {n.name for n in proto.graph.node if n.name in block1 and weights.get(n.input[1], [])[2:] == [1, 1]}
        kept["default-block1-1x1"] = [n for n in fallback if n not in pointwise]  # "default": the form before
        kept["default-block1"] = [n for n in fallback if n not in block1]  # 2026-12-05, the fallback now
        per_cat = ckpt.train_info.get("category_thresholds") or {}
        inputs = calibration_images(calibration, cfg, 128, ckpt.category_tiles, list(per_cat))  # as quantize()
        calib, check = inputs.split()
        limits = check.thresholds(ckpt.threshold, per_cat)
        t0 = time.perf_counter()
        try:  # the export itself: it writes the first of its forms its check accepts, or refuses them all
            export_verdict: dict[str, Any] = quantize(fp32, Path(tmp) / "int8.onnx", calibration, first,
                                                      images=inputs).to_dict()
            default = onnx.load(str(Path(tmp) / "int8.onnx"))
        except ExportError as exc:  # refused: the fastest form quantized here, measured all the same
            export_verdict = {"refused": str(exc)}
            default = nncf_quantize(proto, calib.images, float_nodes(proto, int8_forms(first)[0]))
        quant_seconds = time.perf_counter() - t0
        kept["default"] = float_nodes(proto, export_verdict.get("int8_from_block", int8_forms(first)[0]))
        graphs = {"OpenVINO fp32": proto, "OpenVINO int8 (default)": default}
        if kept["default"] != fallback:  # the export's fallback form, measured beside it
            graphs["OpenVINO int8, encoder int8 from its first level (the export's fallback)"] = nncf_quantize(
                proto, calib.images, fallback)
        graphs["OpenVINO int8, encoder all int8 (lost)"] = nncf_quantize(proto, calib.images, tail)
        graphs["OpenVINO int8, everything int8 (lost)"] = nncf_quantize(proto, calib.images, [])
        for setting, floats in args.settings:
            graphs[f"OpenVINO int8, {floats} float, {setting}"] = nncf_quantize(proto, calib.images, kept[floats],
                                                                                SETTINGS[setting]())
        runners = {name: runner(g, args.threads) for name, g in graphs.items()}
        if args.bf16:  # the same graphs with their float parts in bf16 (openvino.precision: bf16)
            runners["OpenVINO fp32, bf16"] = runner(proto, args.threads, "bf16")
            runners["OpenVINO int8 (default), bf16 float parts"] = runner(graphs["OpenVINO int8 (default)"],
                                                                          args.threads, "bf16")
        # would the export's check (the same held-out normal images) have refused each form?
        # each graph's own thresholds, as the export sets them: fp32's plus its score shift on the calibration
        # inputs (measured with f32 float parts); bf16 float parts run the same graph against those thresholds
        offsets = {"OpenVINO fp32": (0.0, {})}
        same_graph = {"OpenVINO fp32, bf16": "OpenVINO fp32",
                      "OpenVINO int8 (default), bf16 float parts": "OpenVINO int8 (default)"}
        gate = {}
        for name in list(runners)[1:]:
            offsets[name] = (offsets[same_graph[name]] if name in same_graph
                             else score_offsets(runners["OpenVINO fp32"], runners[name], calib))
            shifts = check.shifts(*offsets[name], per_cat)
            found = compare(runners["OpenVINO fp32"], runners[name], check.images, limits, offsets=shifts)
            unshifted = compare(runners["OpenVINO fp32"], runners[name], check.images, limits)
            probe = QuantReport(Path(name), "nncf", "openvino", len(calib.images), len(check.images), 0, **found,
                                score_offset=offsets[name][0], category_score_offsets=offsets[name][1],
                                score_shift_rel=shift_share(ckpt.threshold, per_cat, *offsets[name]))
            by_category = {}  # the same check on each category's held-out images alone
            for c in dict.fromkeys(check.categories):
                idx = [i for i, k in enumerate(check.categories) if k == c]
                by_category[c] = compare(runners["OpenVINO fp32"], runners[name], [check.images[i] for i in idx],
                                         [limits[i] for i in idx], offsets=[shifts[i] for i in idx])
            gate[name] = {**found, "refused": bool(probe.failures()), "why": probe.failures(),
                          "score_offset": offsets[name][0], "category_score_offsets": offsets[name][1],
                          "score_shift_rel": probe.score_shift_rel,
                          "without_offsets": unshifted, "by_category": by_category}
            print(name, "export check:", "refused" if probe.failures() else "accepted", found,
                  "score shift", offsets[name], "without the shift", unshifted, flush=True)

        accuracy: dict[str, Any] = {}
        for name, run in runners.items():
            own = shifted_thresholds(ckpt.threshold, per_cat, *offsets[name])  # the thresholds its line decides by
            result = evaluate(GraphModel(run, cfg), folders, *own, progress=False)
            accuracy[name] = result["categories"]
            print(name, {c: round(r["image_auroc"], 4) for c, r in result["categories"].items()}, flush=True)

        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
        session = ort.InferenceSession(str(fp32), options, providers=["CPUExecutionProvider"])
        speed_runs: dict[str, Callable[[np.ndarray], Any] | InFlight] = {
            "ONNX Runtime fp32": lambda x: session.run(None, {"image": x}), **runners}
        # OpenVINO's throughput hint: two streams of one thread each, one request on each (the backend's
        # openvino.hint: throughput, which cuts a batch into one part per stream), and the same two
        # requests kept in flight, beside ONNX Runtime kept in flight the same way (two one-thread sessions)
        single = ort.SessionOptions()
        single.intra_op_num_threads, single.inter_op_num_threads = 1, 1
        sessions = [ort.InferenceSession(str(fp32), single, providers=["CPUExecutionProvider"]) for _ in range(2)]
        speed_runs["ONNX Runtime fp32, 2 one-thread sessions in flight"] = InFlight(
            [lambda x, s=s: s.run(None, {"image": x}) for s in sessions])
        if (Path(tmp) / "int8.onnx").is_file():
            from proad.edge.backends import load_backend
            from proad.edge.config import BackendConfig

            streams = load_backend(BackendConfig(kind="openvino", model=str(Path(tmp) / "int8.onnx"),
                                                 threads=args.threads, max_batch=8,
                                                 openvino={"hint": "throughput", "streams": 2}))
            speed_runs["OpenVINO int8 (default), throughput hint: the backend, a batch cut per stream"] = streams.infer
            speed_runs["OpenVINO int8 (default), throughput hint, 2 requests in flight"] = InFlight(
                [lambda x, r=r: r.infer({0: x}) for r in streams.requests.workers])
        speed = []
        for batch in (1, 8):
            images = sample_images(cfg.image_size, batch)
            rounds: dict[str, list[float]] = {name: [] for name in speed_runs}
            for _ in range(args.rounds):
                for name, run in speed_runs.items():
                    rounds[name].append(rate(run, images, args.seconds / args.rounds))
            med = {name: float(np.median(v)) for name, v in rounds.items()}
            base = rounds["ONNX Runtime fp32"]
            # each round's rate over ONNX Runtime's in the same round: the machine's drift between rounds cancels
            paired = {n: float(np.median([a / b for a, b in zip(v, base, strict=True)])) for n, v in rounds.items()}
            speed.append({"batch": batch, "img_s": med, "rounds": rounds,
                          "ratio_to_ort_fp32": {n: v / med["ONNX Runtime fp32"] for n, v in med.items()},
                          "paired_ratio_to_ort_fp32": paired})
            print(f"batch {batch}: " + ", ".join(f"{n} {v:.1f}" for n, v in med.items()), flush=True)

    base = accuracy["OpenVINO fp32"]
    verdict = {}
    for name, cats in accuracy.items():
        if name == "OpenVINO fp32":
            continue
        losses = {c: {"image_auroc": base[c]["image_auroc"] - r["image_auroc"], "aupro": base[c]["aupro"] - r["aupro"]}
                  for c, r in cats.items()}
        verdict[name] = {"losses": losses, "within_bar": all(v[k] <= BAR[k] for v in losses.values() for k in BAR)}
    data = {"machine": machine(), "checkpoint": str(args.checkpoint), "checkpoint_sha256": ckpt.sha256,
            "threads": args.threads, "bar": BAR, "tolerance": TOLERANCE,
            "check_thresholds": dict(zip(check.categories, limits, strict=True)), "export_check": export_verdict,
            "export_check_of_each_form": gate,
            "quantize_seconds": quant_seconds,
            "accuracy": accuracy, "verdict": verdict, "speed": speed}
    cats = list(base)
    lines = [
        "# int8 against fp32: the real sets and this CPU",
        "",
        f"{data['machine']['cpu']}, {args.threads} threads, {data['machine']['date']}; checkpoint "
        f"`{args.checkpoint.name}` ({ckpt.sha256[:12]}); calibration: each category's train/good "
        f"({len(calib.images)} inputs, {len(check.images)} held out for the export's check, each judged by its "
        f"category's threshold; tolerance: score error {TOLERANCE['score_error_rel']:.0%}, map error (99.9th pct) "
        f"{TOLERANCE['map_error_rel_p999']:.0%} of the threshold, rank agreement at least "
        f"{TOLERANCE['rank_agreement_min']:.2f}). "
        + ("The export refused every form. " if "refused" in export_verdict else
           f"The export wrote the encoder int8 from blocks.{export_verdict['int8_from_block']}"
           + "".join(f" (refused first: {why})" for why in export_verdict["faster_forms_refused"]) + ". ")
        + f"Bar: at most {BAR['image_auroc']} image AUROC and {BAR['aupro']} AUPRO lost on every category.",
        "",
        "| graph | " + " | ".join(f"{c} img AUROC / px AUROC / AUPRO / missed / rejected" for c in cats)
        + " | within bar | proad-export's check on held-out normal images |",
        "|---|" + "---:|" * len(cats) + ":---:|---|",
    ]
    for name, per in accuracy.items():
        cells = []
        for c in cats:
            r = per[c]
            good = r["images"] - r["defective"]
            cells.append(f"{r['image_auroc']:.4f} / {r['pixel_auroc']:.4f} / {r['aupro']:.4f} / "
                         f"{r['missed_at_threshold'] / max(1, r['defective']):.0%} / "
                         f"{r['false_alarms_at_threshold'] / max(1, good):.0%}")
        ok = "reference" if name == "OpenVINO fp32" else ("yes" if verdict[name]["within_bar"] else "**no**")
        g = gate.get(name)
        checked = "-" if g is None else (
            f"{'refused' if g['refused'] else 'accepted'} (score {g['score_error_rel']:.1%}, map "
            f"{g['map_error_rel_p999']:.1%}, rank {g['rank_agreement']:.3f}; thresholds moved by "
            + ", ".join(f"{v:+.4f}" for v in [g['score_offset'], *g['category_score_offsets'].values()])
            + f" (up to {g['score_shift_rel']:.1%}); without that move: score "
            f"{g['without_offsets']['score_error_rel']:.1%}, map {g['without_offsets']['map_error_rel_p999']:.1%})")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {ok} | {checked} |")
    lines += ["", f"Speed, whole model, {args.rounds} interleaved rounds: the median img/s, the ratio of the medians "
              "to ONNX Runtime fp32's, and the median of each round's ratio to ONNX Runtime fp32 in the same round "
              "(paired: the machine's drift between rounds cancels):", "",
              "| graph | batch 1: img/s (ratio of medians; paired) | batch 8 |", "|---|---:|---:|"]
    for name in speed[0]["img_s"]:
        lines.append(f"| {name} | " + " | ".join(
            f"{row['img_s'][name]:.1f} ({row['ratio_to_ort_fp32'][name]:.2f}x; "
            f"{row['paired_ratio_to_ort_fp32'][name]:.2f}x)" for row in speed) + " |")
    write_results(args.name, data, "\n".join(lines))
    print(json.dumps({n: v["within_bar"] for n, v in verdict.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
