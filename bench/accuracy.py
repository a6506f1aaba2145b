"""Accuracy benchmark and ablation of Pro-AD (issue 3; DESIGN §2 "the ablation decides what ships").

Trains one multi-class model per variant on the generated set plus the real MVTec AD bottle set
(when ``../shared/data/mvtec_bottle_256`` exists), evaluates every category with the metrics of
``proad-eval``, and writes ``bench/results/accuracy.json`` and ``accuracy.md``.

Variants: the shipped default, no constraint, the constraint exactly as first written
(dot-product logits at tau = sqrt(D)), softer and partial forms (higher temperature, residual mix,
later layers only, a loss instead of a projection), and M = 6 prototypes (INP-Former's count).

    python bench/accuracy.py                       # all variants (about 8 min each on 2 cores)
    python bench/accuracy.py --variants default no-constraint --iterations 500

Finished variants are kept in the JSON and skipped on the next run unless ``--force``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEFAULT_REAL, RESULTS, machine, write_results
from proad.checkpoint import build_model
from proad.config import ModelConfig, TrainConfig
from proad.data.synth import write_dataset
from proad.evaluate import evaluate
from proad.train import open_categories, train

VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "default": ("shipped: cosine logits, tau 0.05, hard projection in every layer, M=256", {}),
    "no-constraint": ("no prototype constraint (reconstruct from adapted prototypes)", {"constraint": "none"}),
    "as-written": (
        "constraint as first written: dot logits, tau = sqrt(D)",
        {"constraint_similarity": "dot", "constraint_tau": None},
    ),
    "tau-0.2": ("cosine logits, softer tau 0.2", {"constraint_tau": 0.2}),
    "mix-0.5": ("half projection, half adapted prototype", {"constraint_mix": 0.5}),
    "late": ("constraint only in the last two layers", {"constraint_from_layer": 2}),
    "loss-form": ("a loss pulling P towards C(P) instead of a projection", {"constraint": "loss"}),
    "M6": ("M = 6 prototypes (INP-Former), default constraint", {"prototypes": 6}),
    "M6-no-constraint": ("M = 6, no constraint", {"prototypes": 6, "constraint": "none"}),
}

KEYS = ("image_auroc", "pixel_auroc", "aupro")


def summarise(result: dict[str, Any], real: set[str]) -> dict[str, Any]:
    cats = result["categories"]
    synth = [c for c in cats if c not in real]
    out: dict[str, Any] = {}
    for group, names in (("synthetic", synth), ("real", sorted(real & set(cats)))):
        for k in KEYS:
            vals = [cats[c][k] for c in names if k in cats[c]]
            if vals:
                out[f"{group}_{k}"] = sum(vals) / len(vals)
    return out


def table(data: dict[str, Any]) -> str:
    m = data["machine"]
    lines = [
        "# Pro-AD accuracy and ablation",
        "",
        f"One multi-class model per variant, {data['iterations']} iterations, batch 16, on {m['cpu']} "
        f"({m['cores']} cores), {m['date']}. Synthetic: mean over the generated categories; real: MVTec AD bottle.",
        "",
        "| variant | synth img AUROC | synth px AUROC | synth AUPRO | real img AUROC | real px AUROC | real AUPRO "
        "| final loss | train s | description |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, v in data["variants"].items():
        s = v["summary"]
        cells = [f"{s[k]:.3f}" if k in s else "-" for k in
                 [f"{g}_{k}" for g in ("synthetic", "real") for k in KEYS]]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {v['final_loss']:.4f} | {v['train_seconds']:.0f} | "
                     f"{v['description']} |")
    lines.append("")
    lines.append("Per-category numbers are in accuracy.json.")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--iterations", type=int, default=TrainConfig().iterations)
    p.add_argument(
        "--data", type=Path, default=RESULTS.parent / ".cache" / "synth", help="generated set (written if missing)"
    )
    p.add_argument("--real", type=Path, default=DEFAULT_REAL, help="real MVTec-AD-layout root (skipped if absent)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--force", action="store_true", help="re-run variants already in the JSON")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    if not (args.data / "board").is_dir():
        write_dataset(args.data)
    roots = [args.data] + ([args.real] if args.real.is_dir() else [])
    real = set()
    if args.real.is_dir():
        real = {f.category for f in open_categories([args.real], None, 256)}
    else:
        print(f"note: {args.real} not found, evaluating on generated data only")

    path = RESULTS / "accuracy.json"
    data: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    if data.get("iterations") != args.iterations:
        data = {}
    data.update(iterations=args.iterations, machine=machine(), data=[str(r) for r in roots])
    data.setdefault("variants", {})
    folders = open_categories(roots, None, 256)
    for name in args.variants:
        if name in data["variants"] and not args.force:
            print(f"{name}: kept from the previous run")
            continue
        desc, overrides = VARIANTS[name]
        cfg = ModelConfig(**overrides)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            ckpt = train(roots, Path(tmp) / "model.pt", cfg, TrainConfig(iterations=args.iterations), progress=False,
                         log=lambda s: None)
            seconds = time.perf_counter() - t0
        model = build_model(ckpt)
        result = evaluate(model, folders, ckpt.threshold, ckpt.train_info["category_thresholds"], progress=False)
        data["variants"][name] = {
            "description": desc,
            "overrides": overrides,
            "train_seconds": seconds,
            "final_loss": ckpt.train_info["final_loss"],
            "summary": summarise(result, real),
            "categories": result["categories"],
        }
        print(f"{name}: {data['variants'][name]['summary']}", flush=True)
        write_results("accuracy", data, table(data), show=False)  # keep finished variants if interrupted
    write_results("accuracy", data, table(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
