"""Metrics against values computed by hand on tiny inputs, and AUPRO against a direct definition."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.measure import label

from proad.metrics import aupro, best_f1_threshold, compute_metrics, f1_max, fewest_missed


def test_image_metrics_by_hand() -> None:
    labels = np.array([0, 0, 1, 1])
    scores = np.array([0.1, 0.4, 0.35, 0.8])
    m = compute_metrics(labels, scores)
    # pairs (defect, good) ranked right: 0.35>0.1, 0.8>0.1, 0.8>0.4 of 4 -> 0.75
    assert m["image_auroc"] == pytest.approx(0.75)
    # ranked: 0.8(+) 0.4(-) 0.35(+) 0.1(-): precision 1 at recall 1/2, 2/3 at recall 1
    assert m["image_ap"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    # best cut at 0.35: precision 2/3, recall 1 -> F1 0.8
    assert m["image_f1_max"] == pytest.approx(0.8)
    assert best_f1_threshold(labels, scores) == pytest.approx(0.35)


def test_fewest_missed_at_a_false_alarm_count_by_hand() -> None:
    labels = np.array([0, 0, 0, 1, 1, 1, 1])
    scores = np.array([0.9, 0.5, 0.2, 0.95, 0.5, 0.4, 0.1])
    # no good rejected: the threshold must pass 0.9, so every defect at or below it is missed
    assert fewest_missed(labels, scores, 0) == 3
    # one good rejected (0.9): the threshold passes 0.5; the defect tied with it is missed too
    assert fewest_missed(labels, scores, 1) == 3
    assert fewest_missed(labels, scores, 2) == 1  # passes only 0.2: 0.1 missed
    assert fewest_missed(labels, scores, 3) == 0  # every good rejected: nothing need be missed
    with pytest.raises(ValueError):
        fewest_missed(labels, scores, -1)


def test_evaluation_sets_the_stored_thresholds_misses_beside_the_best_ones() -> None:
    from proad.evaluate import at_threshold_lines

    result = {"categories": {"tile": {"images": 7, "defective": 4, "threshold": 0.45, "missed_at_threshold": 2,
                                      "false_alarms_at_threshold": 2, "fewest_missed_at_same_false_alarms": 1}}}
    assert at_threshold_lines(result) == ("tile: at threshold 0.45, 2 of 4 defective missed (50.0%), 2 of 3 good "
                                          "rejected (66.7%); the best threshold rejecting as few would miss 1 (25.0%)")


def test_f1_max_perfect_and_pixel_metrics() -> None:
    assert f1_max(np.array([0, 1, 1]), np.array([0.0, 0.5, 0.9])) == pytest.approx(1.0)
    masks = np.zeros((2, 4, 4), bool)
    masks[1, 1:3, 1:3] = True
    maps = masks.astype(float) * 0.5 + 0.1
    m = compute_metrics(np.array([0, 1]), np.array([0.1, 0.6]), masks, maps)
    assert m["pixel_auroc"] == pytest.approx(1.0)
    assert m["pixel_ap"] == pytest.approx(1.0)
    assert m["aupro"] == pytest.approx(1.0)


def test_aupro_two_regions_by_hand() -> None:
    # one 1x10 image; region A = pixels 0-1, region B = pixel 5, seven normal pixels
    mask = np.zeros((1, 1, 10), bool)
    mask[0, 0, [0, 1, 5]] = True
    scores = np.array([0.9, 0.5, 0.8, 0.6, 0.3, 0.7, 0.2, 0.1, 0.05, 0.0])[None, None]
    # thresholds from the top: 0.9 -> PRO 1/4 at FPR 0; 0.8 -> FPR 1/7; 0.7 -> PRO 3/4;
    # 0.6 -> FPR 2/7; 0.5 -> PRO 1; 0.3 -> FPR 3/7 (past 0.3, so the curve is cut at 0.3)
    by_hand = (0.25 * (1 / 7) + 0.75 * (1 / 7) + 1.0 * (0.3 - 2 / 7)) / 0.3
    assert aupro(mask, scores) == pytest.approx(by_hand, abs=1e-12)
    assert by_hand == pytest.approx(0.5238095, abs=1e-6)


def _aupro_direct(masks: np.ndarray, maps: np.ndarray, limit: float = 0.3) -> float:
    """The definition, threshold by threshold: mean region overlap vs. FPR, then the area."""
    regions = [(i, label(m, connectivity=2)) for i, m in enumerate(masks)]
    thresholds = np.unique(maps)[::-1]
    normal = ~masks
    fprs, pros = [0.0], [0.0]
    for t in thresholds:
        pred = maps >= t
        fprs.append((pred & normal).sum() / normal.sum())
        overlaps = []
        for i, lab in regions:
            for r in range(1, lab.max() + 1):
                region = lab == r
                overlaps.append((pred[i] & region).sum() / region.sum())
        pros.append(float(np.mean(overlaps)))
    fprs_a, pros_a = np.array(fprs), np.array(pros)
    keep = fprs_a <= limit
    xs, ys = list(fprs_a[keep]), list(pros_a[keep])
    j = int(np.argmax(fprs_a > limit))
    ys.append(pros_a[j - 1] + (pros_a[j] - pros_a[j - 1]) * (limit - fprs_a[j - 1]) / (fprs_a[j] - fprs_a[j - 1]))
    xs.append(limit)
    return float(np.trapezoid(ys, xs) / limit)


def test_aupro_matches_the_definition_on_random_maps() -> None:
    rng = np.random.default_rng(0)
    masks = np.zeros((3, 12, 12), bool)
    masks[0, 2:5, 2:6] = True
    masks[0, 8:10, 8:11] = True
    masks[2, 5:9, 1:3] = True
    maps = rng.random((3, 12, 12)).round(2) + masks * 0.3  # rounded: many ties
    assert aupro(masks, maps) == pytest.approx(_aupro_direct(masks, maps), abs=1e-9)


def test_aupro_needs_regions() -> None:
    with pytest.raises(ValueError, match="region"):
        aupro(np.zeros((1, 4, 4), bool), np.zeros((1, 4, 4)))
    with pytest.raises(ValueError, match="shape"):
        aupro(np.zeros((1, 4, 4), bool), np.zeros((1, 4, 5)))
