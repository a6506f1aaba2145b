"""Evaluation of a trained model on MVTec-AD-layout test sets (DESIGN §7).

Per category and averaged over categories: image AUROC / AP / F1-max, pixel AUROC / AP / F1-max,
AUPRO (FPR <= 0.3), plus how the stored OK/NG threshold does (accuracy, misses, false alarms) and
the inference time per image. Optionally writes a few overlays per category for a person to look
at: the highest-scoring defects, the highest-scoring good image (the likeliest false alarm) and
the lowest-scoring defect (the likeliest miss).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from proad.data.folder import MVTecFolder
from proad.data.tiling import infer_tiled
from proad.metrics import METRIC_NAMES, compute_metrics, fewest_missed
from proad.viz import overlay


@torch.no_grad()
def predict(
    model: torch.nn.Module, images: Sequence[np.ndarray], batch: int = 16
) -> tuple[np.ndarray, np.ndarray, float]:
    """(maps ``[N, H, W]`` float32, scores ``[N]``, seconds per image) of uint8 BGR images.

    Images larger than the model's input are a grid of input-sized tiles (a tiled category's
    pictures, :mod:`proad.data.tiling`): their maps come back stitched, their scores the largest
    tile's, through the same :func:`~proad.data.tiling.infer_tiled` the edge daemon uses."""
    model.eval()

    def infer(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        amap, score = model(torch.from_numpy(x))
        return amap.numpy(), score.numpy()

    t0 = time.perf_counter()
    maps, scores = infer_tiled(infer, images, model.cfg.image_size, batch)
    per_image = (time.perf_counter() - t0) / max(1, len(images))
    return np.stack(maps), scores, per_image


def evaluate_category(
    model: torch.nn.Module,
    folder: MVTecFolder,
    threshold: float | None,
    viz_dir: Path | None = None,
    viz_count: int = 4,
) -> dict[str, Any]:
    """Metrics of one category's test set; with a ``threshold``, also what a line feels at it.

    ``threshold=None`` is a model that stores none (the PatchCore baseline): its ranking only, and
    overlays without an OK/NG verdict."""
    if not folder.test:
        return {"images": 0, "note": "no test images"}
    loaded = [folder.load(item) for item in folder.test]
    images = [im for im, _ in loaded]
    masks = np.stack([m for _, m in loaded])
    labels = np.array([item.label for item in folder.test])
    maps, scores, per_image = predict(model, images)
    result: dict[str, Any] = compute_metrics(labels, scores, masks if labels.any() else None, maps)
    result.update(images=len(labels), defective=int(labels.sum()))
    if threshold is not None:
        decisions = scores >= threshold
        false_alarms = int((decisions & (labels == 0)).sum())
        if len(np.unique(labels)) == 2:
            result["fewest_missed_at_same_false_alarms"] = fewest_missed(labels, scores, false_alarms)
        result.update(
            accuracy_at_threshold=float((decisions == labels.astype(bool)).mean()),
            threshold=float(threshold),
            missed_at_threshold=int((~decisions & (labels == 1)).sum()),
            false_alarms_at_threshold=false_alarms,
        )
    result.update(
        ms_per_image=round(per_image * 1000, 2),
        tiles=list(folder.grid),  # (rows, cols) each picture was cut into (proad.data.tiling)
    )
    if viz_dir is not None:
        _write_overlays(viz_dir / folder.category, folder, images, masks, maps, scores, labels, threshold, viz_count)
    return result


def _write_overlays(out: Path, folder: MVTecFolder, images, masks, maps, scores, labels, threshold, count) -> None:
    out.mkdir(parents=True, exist_ok=True)
    vmax = float(np.quantile(maps, 0.999))
    bad = np.flatnonzero(labels == 1)
    good = np.flatnonzero(labels == 0)
    picks: list[tuple[str, int]] = [("ng", int(i)) for i in bad[np.argsort(-scores[bad])][: max(1, count - 2)]]
    if good.size:
        picks.append(("worst_good", int(good[np.argmax(scores[good])])))
    if bad.size:
        picks.append(("weakest_defect", int(bad[np.argmin(scores[bad])])))
    for tag, i in picks:
        item = folder.test[i]
        verdict = "" if threshold is None else (" NG" if scores[i] >= threshold else " OK")
        text = f"{item.kind} {scores[i]:.3f}{verdict}"
        img = overlay(images[i], maps[i], vmax, masks[i], text)
        side = np.hstack([images[i], img])
        cv2.imwrite(str(out / f"{tag}_{item.kind}_{item.path.stem}.png"), side)


def evaluate(
    model: torch.nn.Module,
    folders: Sequence[MVTecFolder],
    threshold: float,
    category_thresholds: dict[str, float] | None = None,
    viz_dir: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Metrics per category and their mean over categories."""
    from tqdm import tqdm

    per: dict[str, Any] = {}
    for folder in tqdm(folders, desc="evaluate", unit="cat", disable=not progress):
        t = (category_thresholds or {}).get(folder.category, threshold)
        per[folder.category] = evaluate_category(model, folder, t, Path(viz_dir) if viz_dir else None)
    mean = {}
    for name in (*METRIC_NAMES, "accuracy_at_threshold", "ms_per_image"):
        vals = [r[name] for r in per.values() if name in r]
        if vals:
            mean[name] = float(np.mean(vals))
    return {"categories": per, "mean": mean}


def at_threshold_lines(result: dict[str, Any]) -> str:
    """What a line feels at the stored thresholds, one line per category: defects let through and
    good parts rejected, and beside them the fewest defects any threshold rejecting no more good
    parts would let through (the stored threshold's misses far above it: recalibrate; close to it:
    the model's ranking is the limit)."""
    lines = []
    for name, r in result["categories"].items():
        if "missed_at_threshold" not in r:
            continue
        bad, good = r["defective"], r["images"] - r["defective"]
        missed, alarms = r["missed_at_threshold"], r["false_alarms_at_threshold"]
        rows, cols = r.get("tiles", (1, 1))
        tiled = f" ({rows}x{cols} tiles a picture)" if rows * cols > 1 else ""
        line = (f"{name}{tiled}: at threshold {r['threshold']:.4g}, {missed} of {bad} defective missed "
                f"({missed / max(1, bad):.1%}), {alarms} of {good} good rejected ({alarms / max(1, good):.1%})")
        if "fewest_missed_at_same_false_alarms" in r:
            best = r["fewest_missed_at_same_false_alarms"]
            line += f"; the best threshold rejecting as few would miss {best} ({best / max(1, bad):.1%})"
        lines.append(line)
    return "\n".join(lines)


def format_table(result: dict[str, Any]) -> str:
    """Markdown table: one row per category, then the mean."""
    cols = [*METRIC_NAMES, "accuracy_at_threshold"]
    short = ["img AUROC", "img AP", "img F1", "px AUROC", "px AP", "px F1", "AUPRO", "acc@thr"]
    lines = ["| category | " + " | ".join(short) + " |", "|---|" + "---:|" * len(cols)]
    rows = [*result["categories"].items(), ("**mean**", result["mean"])]
    for name, r in rows:
        cells = [f"{r[c]:.3f}" if c in r else "-" for c in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
