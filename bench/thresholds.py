"""How well a threshold rule keeps its target false-alarm rate when a category has few held-out images.

A category's OK/NG threshold comes from the scores of its held-out normal images (10 % of
train/good: ten images for a category of a hundred). This benchmark scores one trained model's
held-out images and its test images per category, then compares rules two ways:

- *as trained*: each rule's threshold from the category's own held-out images, applied to its test
  images (share of good rejected, share of defective missed);
- *resampled*: ``--draws`` times, ``n`` test good images play the held-out set (``n`` = the
  category's own hold-out size, and each of ``--sizes``), the rule's threshold is applied to the
  other good images and to the defective ones; the mean shows what the rule does on average, not
  for one lucky or unlucky split (a category with fewer good test images than twice ``n`` is left
  out of this part).

Rules: ``plug-in`` (the larger of the 1 - target quantile and mean + z * std, the rule until
2026-12-05), ``prediction`` (the same with the Gaussian prediction bound mean + t * s * sqrt(1 +
1/n), :func:`proad.train.normal_threshold`, shipped), and both in log space (scores are positive
and right-skewed).

    python bench/thresholds.py --checkpoint model.pt --data <roots> [--target 0.01] [--name thresholds]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_results
from proad.checkpoint import CheckpointError, load_model
from proad.data.folder import DatasetError
from proad.evaluate import predict
from proad.train import normal_threshold, open_categories, split_holdout

Rule = Callable[[np.ndarray, float], float]


def plug_in(scores: np.ndarray, target: float) -> float:
    z = stats.norm.ppf(1.0 - target)
    return float(max(np.quantile(scores, 1.0 - target), scores.mean() + z * scores.std()))


def in_logs(rule: Rule) -> Rule:
    return lambda scores, target: float(
        max(np.quantile(scores, 1.0 - target), np.exp(rule(np.log(np.maximum(scores, 1e-12)), target)))
    )


RULES: dict[str, Rule] = {
    "plug-in": plug_in,
    "prediction": normal_threshold,
    "plug-in, logs": in_logs(plug_in),
    "prediction, logs": in_logs(normal_threshold),
}


def rates(threshold: float, good: np.ndarray, defective: np.ndarray) -> tuple[float, float | None]:
    return float((good >= threshold).mean()), float((defective < threshold).mean()) if len(defective) else None


def study(holdout: np.ndarray, good: np.ndarray, defective: np.ndarray, target: float, sizes: list[int],
          draws: int, seed: int) -> dict[str, Any]:
    out: dict[str, Any] = {"holdout": len(holdout), "good": len(good), "defective": len(defective),
                           "as_trained": {}, "resampled": {}}  # fmt: skip
    for name, rule in RULES.items():
        fa, miss = rates(rule(holdout, target), good, defective)
        out["as_trained"][name] = {"rejected": fa, "missed": miss}
    rng = np.random.default_rng(seed)
    for n in sorted({len(holdout), *sizes}):
        if len(good) < 2 * n or n < 2:
            continue
        got: dict[str, list[tuple[float, float | None]]] = {name: [] for name in RULES}
        for _ in range(draws):
            order = rng.permutation(len(good))
            held, rest = good[order[:n]], good[order[n:]]
            for name, rule in RULES.items():
                got[name].append(rates(rule(held, target), rest, defective))
        out["resampled"][str(n)] = {
            name: {
                "rejected": float(np.mean([r[0] for r in v])),
                "rejected_p90": float(np.percentile([r[0] for r in v], 90)),
                "missed": float(np.mean([r[1] for r in v])) if len(defective) else None,
            }
            for name, v in got.items()
        }
    return out


def pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f} %"


def table(result: dict[str, Any]) -> str:
    names = list(RULES)
    lines = [
        "# Threshold rules at a target false-alarm rate",
        "",
        f"{result['machine']['cpu']}, {result['machine']['date']}; checkpoint `{result['checkpoint']}`, target "
        f"{pct(result['target'])}, {result['draws']} draws per size. Each cell: good rejected / defective missed.",
        "",
        "| category | held-out images: as trained | " + " | ".join(names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    for cat, c in result["categories"].items():
        cells = [f"{pct(c['as_trained'][n]['rejected'])} / {pct(c['as_trained'][n]['missed'])}" for n in names]
        lines.append(f"| {cat} | {c['holdout']} (of {c['good']} good test) | " + " | ".join(cells) + " |")
        for size, r in c["resampled"].items():
            cells = [f"{pct(r[n]['rejected'])} (p90 {pct(r[n]['rejected_p90'])}) / {pct(r[n]['missed'])}"
                     for n in names]
            lines.append(f"| | resampled, n = {size} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, required=True, help="a model trained with proad-train")
    p.add_argument("--data", type=Path, nargs="+", required=True, help="the roots it was trained on")
    p.add_argument("--target", type=float, default=0.01, help="target false-alarm rate")
    p.add_argument("--sizes", type=int, nargs="*", default=[10, 20, 40], help="held-out sizes to resample")
    p.add_argument("--draws", type=int, default=2000)
    p.add_argument("--name", default="thresholds")
    args = p.parse_args(argv)

    if not 0 < args.target < 0.5 or args.draws < 1:
        p.error("--target must be in (0, 0.5) and --draws at least 1")
    try:  # a wrong --checkpoint or --data: say which, exit 2 (as bench/accuracy.py)
        model, ckpt = load_model(args.checkpoint)
        folders = open_categories(args.data, None, model.cfg.image_size, model.cfg.resize, ckpt.category_tiles)
    except (CheckpointError, DatasetError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    fraction = float(ckpt.train_info.get("train_config", {}).get("holdout_fraction", 0.1))
    seed = int(ckpt.train_info.get("train_config", {}).get("seed", 0))
    result: dict[str, Any] = {"machine": machine(), "checkpoint": str(args.checkpoint), "target": args.target,
                              "draws": args.draws, "categories": {}}  # fmt: skip
    for folder in tqdm(folders, desc="categories", unit="cat"):
        split = split_holdout(folder, fraction, seed)  # the very images training held out
        _, held, _ = predict(model, [folder.image(folder.train[i]) for i in split.holdout])
        _, scores, _ = predict(model, [folder.load(item)[0] for item in folder.test])
        labels = np.array([item.label for item in folder.test])
        result["categories"][folder.category] = study(
            held, scores[labels == 0], scores[labels == 1], args.target, args.sizes, args.draws, seed
        )
    write_results(args.name, result, table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
