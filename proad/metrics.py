"""Anomaly-detection metrics: image and pixel AUROC / AP / F1-max, AUPRO, and the fewest defects any
threshold misses at a given count of good parts rejected.

AUROC and AP come from scikit-learn; F1-max from its precision-recall curve. AUPRO (per-region
overlap, Bergmann et al.) is not in scikit-learn: it is computed exactly here in one sort, the way
MVTec's reference evaluation does it. Every pixel contributes to a cumulative false-positive rate
(if it is normal) or to the overlap of its ground-truth region, weighted so each connected region
counts equally; sweeping the threshold from the highest score down traces the PRO-vs-FPR curve,
which is integrated up to FPR 0.3 and divided by 0.3 so a perfect detector scores 1.
Connected regions are labelled with scikit-image (8-connectivity, as MVTec does).
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

METRIC_NAMES = (
    "image_auroc",
    "image_ap",
    "image_f1_max",
    "pixel_auroc",
    "pixel_ap",
    "pixel_f1_max",
    "aupro",
)


def f1_max(labels: np.ndarray, scores: np.ndarray) -> float:
    """Best F1 over all thresholds."""
    precision, recall, _ = precision_recall_curve(labels, scores)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    return float(f1.max())


def best_f1_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The score threshold that reaches F1-max (``score >= t`` is NG)."""
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    denom = precision[:-1] + recall[:-1]
    f1 = np.divide(2 * precision[:-1] * recall[:-1], denom, out=np.zeros_like(denom), where=denom > 0)
    return float(thresholds[int(np.argmax(f1))])


def fewest_missed(labels: np.ndarray, scores: np.ndarray, false_alarms: int) -> int:
    """The fewest defective images any threshold misses while it rejects at most ``false_alarms``
    good ones (``score >= t`` is NG): the best a calibration could do at that false-alarm count, so
    set beside the misses at the stored threshold it says whether the threshold or the ranking is
    what a line would have to improve. Ties with the last good score allowed through count as
    missed."""
    if false_alarms < 0:
        raise ValueError(f"false_alarms must be >= 0, got {false_alarms}")
    labels = np.asarray(labels, int)
    scores = np.asarray(scores, np.float64)
    good = np.sort(scores[labels == 0])[::-1]
    if false_alarms >= good.size:
        return 0
    return int(((labels == 1) & (scores <= good[false_alarms])).sum())


def aupro(masks: np.ndarray, maps: np.ndarray, fpr_limit: float = 0.3) -> float:
    """Normalised area under the per-region-overlap curve up to ``fpr_limit``.

    masks: boolean ``[N, H, W]``; maps: float ``[N, H, W]``. Needs at least one defect region and
    at least one normal pixel.
    """
    from skimage.measure import label

    masks = np.asarray(masks, bool)
    maps = np.asarray(maps, np.float64)
    if masks.shape != maps.shape:
        raise ValueError(f"masks {masks.shape} and maps {maps.shape} differ in shape")
    regions = np.zeros(masks.shape, np.int64)
    offset = 0
    for i, m in enumerate(masks):
        lab = label(m, connectivity=2)
        regions[i] = np.where(lab > 0, lab + offset, 0)
        offset += int(lab.max())
    if offset == 0:
        raise ValueError("AUPRO needs at least one defect region")
    flat_regions = regions.ravel()
    n_normal = int((flat_regions == 0).sum())
    if n_normal == 0:
        raise ValueError("AUPRO needs at least one normal pixel")
    sizes = np.bincount(flat_regions, minlength=offset + 1).astype(np.float64)
    # each normal pixel adds 1/n_normal to the FPR; each region pixel adds 1/(size * n_regions) to PRO
    fpr_step = np.where(flat_regions == 0, 1.0 / n_normal, 0.0)
    pro_step = np.where(flat_regions > 0, 1.0 / (sizes[flat_regions] * offset), 0.0)

    order = np.argsort(-maps.ravel(), kind="stable")
    scores = maps.ravel()[order]
    fpr = np.cumsum(fpr_step[order])
    pro = np.cumsum(pro_step[order])
    # a threshold admits every pixel with the same score at once: keep the last index of each run
    last = np.r_[np.nonzero(np.diff(scores))[0], scores.size - 1]
    fpr = np.r_[0.0, fpr[last]]
    pro = np.r_[0.0, pro[last]]
    fpr = np.minimum(fpr, 1.0)  # float round-off
    if fpr[-1] < fpr_limit:
        raise ValueError("the PRO curve does not reach the FPR limit")
    cut = int(np.searchsorted(fpr, fpr_limit, side="right"))
    # interpolate PRO at exactly fpr_limit between the two neighbouring points
    x0, x1, y0, y1 = fpr[cut - 1], fpr[cut], pro[cut - 1], pro[cut]
    y_lim = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0) if x1 > x0 else y1
    xs = np.r_[fpr[:cut], fpr_limit]
    ys = np.r_[pro[:cut], y_lim]
    return float(np.trapezoid(ys, xs) / fpr_limit)


def compute_metrics(
    labels: np.ndarray, scores: np.ndarray, masks: np.ndarray | None = None, maps: np.ndarray | None = None
) -> dict[str, float]:
    """All metrics of one category. Image metrics need both classes; pixel metrics need masks."""
    labels = np.asarray(labels, int)
    scores = np.asarray(scores, np.float64)
    out: dict[str, float] = {}
    if len(np.unique(labels)) == 2:
        out["image_auroc"] = float(roc_auc_score(labels, scores))
        out["image_ap"] = float(average_precision_score(labels, scores))
        out["image_f1_max"] = f1_max(labels, scores)
    if masks is not None and maps is not None:
        pix_labels = np.asarray(masks, bool).ravel()
        pix_scores = np.asarray(maps, np.float32).ravel()
        if pix_labels.any() and not pix_labels.all():
            out["pixel_auroc"] = float(roc_auc_score(pix_labels, pix_scores))
            out["pixel_ap"] = float(average_precision_score(pix_labels, pix_scores))
            out["pixel_f1_max"] = f1_max(pix_labels, pix_scores)
            out["aupro"] = aupro(masks, maps)
    return out
