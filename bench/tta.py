"""Test-time augmentation: does averaging the anomaly map over flips and rotations of a picture help?

Averaging the maps of a picture and its mirror images is a common, training-free way to lower a
reconstruction model's noise, and Pro-AD's normal error on grainy real textures is exactly noise
(README, "Real images"). It costs one inference per transform on every frame, so it has to pay a lot
to be worth shipping. This runs a trained checkpoint on each real category's test set under the eight
symmetries of the square (the identity, horizontal and vertical flips, the 180 degree rotation, the
two 90 degree rotations and the two transposes), maps each map back to the picture's frame, and
reports image / pixel AUROC and AUPRO of the averaged maps for a few sets of transforms, plus the
image AUROC of every transform alone (is the model blind to the transform, or does it see a
different part?). Maps come from :func:`proad.evaluate.predict`, scores from the model's own rule
(:meth:`proad.model.ProAD.score`), so only the averaging is new here::

    python bench/tta.py --checkpoint real_fast.pt [--data ROOT ...]   # bench/results/tta.{json,md}
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, real_roots, write_results

Transform = tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray]]

#: name -> (on a uint8 NHWC batch, back on its [N, H, W] maps)
TRANSFORMS: dict[str, Transform] = {
    "identity": (lambda x: x, lambda m: m),
    "flip-h": (lambda x: x[:, :, ::-1], lambda m: m[:, :, ::-1]),
    "flip-v": (lambda x: x[:, ::-1], lambda m: m[:, ::-1]),
    "rot180": (lambda x: x[:, ::-1, ::-1], lambda m: m[:, ::-1, ::-1]),
    "rot90": (lambda x: np.rot90(x, 1, (1, 2)), lambda m: np.rot90(m, -1, (1, 2))),
    "rot270": (lambda x: np.rot90(x, -1, (1, 2)), lambda m: np.rot90(m, 1, (1, 2))),
    "transpose": (lambda x: x.transpose(0, 2, 1, 3), lambda m: m.transpose(0, 2, 1)),
    "anti-transpose": (
        lambda x: np.rot90(x, 2, (1, 2)).transpose(0, 2, 1, 3),
        lambda m: np.rot90(m.transpose(0, 2, 1), -2, (1, 2)),
    ),
}
#: the averaged sets reported
SETS: dict[str, tuple[str, ...]] = {
    "none (shipped)": ("identity",),
    "+ flip-h": ("identity", "flip-h"),
    "+ flip-v": ("identity", "flip-v"),
    "4 flips": ("identity", "flip-h", "flip-v", "rot180"),
    "all 8 symmetries": tuple(TRANSFORMS),
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, type=Path, help="a model trained on the real sets")
    p.add_argument("--data", nargs="+", type=Path, help="roots (default: the real sets in ../shared/data)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--name", default="tta")
    args = p.parse_args()
    roots = args.data or real_roots()
    if not roots:
        print("no real data: give --data (../shared/data is absent)", file=sys.stderr)
        return 2

    import torch
    from tqdm import tqdm

    from proad.checkpoint import CheckpointError, load_model
    from proad.data.geometry import size_text
    from proad.evaluate import predict
    from proad.metrics import compute_metrics
    from proad.train import open_categories

    torch.set_num_threads(args.threads)
    try:
        model, ckpt = load_model(args.checkpoint)
    except (CheckpointError, OSError) as exc:
        print(f"cannot load {args.checkpoint}: {exc}", file=sys.stderr)
        return 1
    cfg = ckpt.model_config
    folders = open_categories(roots, None, cfg.image_size, cfg.resize, ckpt.category_tiles)
    if any(f.grid != (1, 1) for f in folders):
        print("a tiled category: its stitched maps are not square, run this on untiled ones", file=sys.stderr)
        return 2
    height, width = cfg.input_hw
    if height != width:
        print(f"a {size_text(cfg.image_size)} input: turns by 90 degrees do not fit it, run this on a square model",
              file=sys.stderr)
        return 2

    def score(maps: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model.score(torch.from_numpy(np.ascontiguousarray(maps))).numpy()

    results: dict[str, dict] = {}
    for folder in folders:
        loaded = [folder.load(item) for item in folder.test]
        images = np.stack([im for im, _ in loaded])
        masks = np.stack([m for _, m in loaded])
        labels = np.array([item.label for item in folder.test])
        maps: dict[str, np.ndarray] = {}
        for name, (forward, back) in tqdm(TRANSFORMS.items(), desc=folder.category, unit="transform"):
            transformed, _, _ = predict(model, list(np.ascontiguousarray(forward(images))))
            maps[name] = np.ascontiguousarray(back(transformed))
        averaged = {}
        for set_name, names in SETS.items():
            m = np.mean([maps[n] for n in names], axis=0)
            r = compute_metrics(labels, score(m), masks, m)
            averaged[set_name] = {k: round(r[k], 4) for k in ("image_auroc", "pixel_auroc", "aupro")}
        alone = {n: round(compute_metrics(labels, score(maps[n]))["image_auroc"], 4) for n in TRANSFORMS}
        results[folder.category] = {"averaged": averaged, "alone_image_auroc": alone}

    lines = [
        "# Test-time augmentation: the map averaged over symmetries of the picture",
        "",
        f"{machine()['date']}, checkpoint `{args.checkpoint.name}` ({ckpt.train_info.get('preset', '?')}).",
        "",
        "| category | transforms averaged | image AUROC | pixel AUROC | AUPRO |",
        "|---|---|---:|---:|---:|",
    ]
    for cat, r in results.items():
        for set_name, v in r["averaged"].items():
            lines.append(f"| {cat} | {set_name} | {v['image_auroc']:.4f} | {v['pixel_auroc']:.4f} | {v['aupro']:.4f} |")
    lines += ["", "Image AUROC of each transform alone:", "", "| category | " + " | ".join(TRANSFORMS) + " |"]
    lines.append("|---|" + "---:|" * len(TRANSFORMS))
    for cat, r in results.items():
        lines.append(f"| {cat} | " + " | ".join(f"{r['alone_image_auroc'][n]:.4f}" for n in TRANSFORMS) + " |")
    data = {"machine": machine(), "checkpoint": str(args.checkpoint), "sets": SETS, "categories": results}
    write_results(args.name, data, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
