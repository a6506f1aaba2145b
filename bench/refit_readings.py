"""Readings of the same trained decoders, compared pair by pair: each checkpoint refitted with each
reading and evaluated.

A reading (how a model's map is read: the memory of normal patches beside the reconstruction, its
bank, grid and weight, the smoothing, the score's top fraction; :data:`proad.refit.READING_FIELDS`)
changes nothing the decoder learnt. Comparing readings on the *same* decoders therefore leaves the
training seed's noise (about 0.01 image AUROC on Magnetic Tile between two seeds) out of the
difference, and each costs a refit (``proad-train --from``: under a minute on the shared sets) and an
evaluation instead of a training run. Each checkpoint is evaluated on the test sets of the categories
it was trained on, under the roots it records, at the thresholds its refit calibrated; the reading
``{}`` is the checkpoint as it was written.

Writes ``bench/results/NAME.json`` (every category's metrics per checkpoint and reading) and
``NAME.md``: per reading, the mean over the checkpoints of image AUROC / pixel AUROC / AUPRO per
category and the defects missed / good parts rejected at the stored thresholds, then each reading's
change against the first one, per checkpoint (the pairs).

    python bench/refit_readings.py --checkpoint A.pt [B.pt ...] --reading '{}' '{"memory_weight": 2}' ... \
        [--categories magnetic_tile bottle] [--name refit_readings]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, write_results
from proad.checkpoint import Checkpoint, build_model, load_checkpoint
from proad.evaluate import evaluate
from proad.refit import refit
from proad.train import open_categories

METRICS = ("image_auroc", "pixel_auroc", "aupro")


def reading_name(reading: dict[str, Any]) -> str:
    return json.dumps(reading, sort_keys=True) if reading else "as trained"


def evaluate_reading(path: Path, reading: dict[str, Any], categories: list[str] | None = None) -> dict[str, Any]:
    """``path`` refitted with ``reading`` (or as it is, for ``{}``), evaluated on its own categories
    (``categories``: only these of them; the refit's memory and thresholds still come from all)."""
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt: Checkpoint = refit(path, Path(tmp) / "refit.pt", reading, progress=False, log=lambda s: None) \
            if reading else load_checkpoint(path)  # fmt: skip
    refit_s = time.perf_counter() - t0
    cfg, info = ckpt.model_config, ckpt.train_info
    names = [c for c in info["categories"] if not categories or c in categories]
    folders = open_categories(info["data"], names, cfg.image_size, cfg.resize, ckpt.category_tiles)
    t1 = time.perf_counter()
    result = evaluate(build_model(ckpt), folders, ckpt.threshold, info.get("category_thresholds"), progress=False)
    return {"refit_seconds": round(refit_s, 1), "eval_seconds": round(time.perf_counter() - t1, 1),
            "categories": result["categories"], "mean": result["mean"]}  # fmt: skip


def _cell(rows: list[dict[str, Any]]) -> str:
    return " / ".join(f"{sum(r[m] for r in rows) / len(rows):.3f}" for m in METRICS)


def _at_threshold(rows: list[dict[str, Any]]) -> str:
    missed = sum(r["missed_at_threshold"] for r in rows)
    defective = sum(r["defective"] for r in rows)
    rejected = sum(r["false_alarms_at_threshold"] for r in rows)
    good = sum(r["images"] - r["defective"] for r in rows)
    return f"{missed} of {defective} / {rejected} of {good}"


def table(data: dict[str, Any]) -> str:
    runs: dict[str, dict[str, Any]] = data["runs"]  # checkpoint -> reading -> result
    readings = data["readings"]
    categories = list(next(iter(next(iter(runs.values())).values()))["categories"])
    lines = [f"# Readings of the same decoders ({len(runs)} checkpoint(s))", "",
             f"Machine: {data['machine'].get('cpu', '?')}. Checkpoints: "
             + ", ".join(f"`{Path(c).name}`" for c in runs) + ".", "",
             "Image AUROC / pixel AUROC / AUPRO, mean over the checkpoints; defects missed / good parts rejected "
             "at the stored thresholds, summed over categories and checkpoints.", "",
             "| reading | " + " | ".join(categories) + " | missed / rejected |",
             "|---|" + "---:|" * (len(categories) + 1)]  # fmt: skip
    for name in readings:
        done = [r[name] for r in runs.values() if name in r]
        if not done:
            continue
        cells = [_cell([d["categories"][c] for d in done]) for c in categories]
        every = [d["categories"][c] for d in done for c in categories]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {_at_threshold(every)} |")
    first = readings[0]
    lines += ["", f"Change against `{first}`, per checkpoint (image AUROC / pixel AUROC / AUPRO):", "",
              "| checkpoint, reading | " + " | ".join(categories) + " |",
              "|---|" + "---:|" * len(categories)]  # fmt: skip
    for ckpt, by_reading in runs.items():
        if first not in by_reading:
            continue
        base = by_reading[first]["categories"]
        for name in readings[1:]:
            if name not in by_reading:
                continue
            cat = by_reading[name]["categories"]
            cells = [" / ".join(f"{cat[c][m] - base[c][m]:+.3f}" for m in METRICS) for c in categories]
            lines.append(f"| `{Path(ckpt).name}`, {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--checkpoint", nargs="+", required=True, type=Path, help="trained checkpoints (proad-train)")
    p.add_argument("--reading", nargs="+", required=True, type=json.loads,
                   help="readings as JSON objects of proad.refit.READING_FIELDS ('{}': as trained); "
                        "the first is the one the others are compared with")  # fmt: skip
    p.add_argument("--categories", nargs="+", help="evaluate only these of each checkpoint's categories")
    p.add_argument("--name", default="refit_readings", help="results file stem under bench/results")
    args = p.parse_args(argv)
    readings = [reading_name(r) for r in args.reading]
    data: dict[str, Any] = {"name": args.name, "machine": machine(), "readings": readings,
                            "categories": args.categories, "runs": {}}  # fmt: skip
    for path in args.checkpoint:
        runs = data["runs"].setdefault(str(path), {})
        for reading, name in zip(args.reading, readings, strict=True):
            print(f"{path.name}, {name} ...", flush=True)
            runs[name] = evaluate_reading(path, reading, args.categories)
            cats = runs[name]["categories"]
            print("  " + "; ".join(f"{c} {_cell([r])}" for c, r in cats.items()), flush=True)
            write_results(args.name, data, table(data), show=False)  # keep what is done if interrupted
    write_results(args.name, data, table(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
