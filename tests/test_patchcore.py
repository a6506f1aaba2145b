"""The PatchCore baseline of bench/ is a faithful one: its coreset covers the bank, and it finds
the generated defects with the same encoder Pro-AD uses."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench" / "baselines"))
from patchcore import PatchCore

from proad.config import ModelConfig
from proad.data.folder import MVTecFolder
from proad.evaluate import evaluate_category
from proad.memory import greedy_coreset


def test_greedy_coreset_covers_what_random_sampling_misses() -> None:
    g = torch.Generator().manual_seed(0)
    cluster = torch.randn(2000, 16, generator=g) * 0.1
    outliers = torch.randn(5, 16, generator=g) + 10.0  # five rare but normal patches, far away
    features = torch.cat([cluster, outliers])
    chosen = greedy_coreset(features, 20, projection_dim=8)
    assert len(set(chosen.tolist())) == 20
    assert set(range(2000, 2005)) <= set(chosen.tolist())  # the farthest points are taken first

    def radius(idx: torch.Tensor) -> float:  # the largest distance from any point to its nearest chosen one
        return float(torch.cdist(features, features[idx]).min(1).values.max())

    random_idx = torch.randperm(len(features), generator=g)[:20]
    assert radius(chosen) < radius(random_idx)
    assert greedy_coreset(features[:10], 50).tolist() == list(range(10))  # asked for more than there is


def test_large_banks_choose_among_a_bounded_random_subsample(tiny_data: Path) -> None:
    folder = MVTecFolder(tiny_data, "marble")
    images = [folder.load(item)[0] for item in folder.train]  # 12 images x 32 x 32 patches = 12,288
    model = PatchCore(ModelConfig(), coreset_ratio=0.5, max_candidates=3000)
    model.fit(images)
    assert model.bank.shape[0] == 3000  # half of all patches is more than the candidates: all of them
    small = PatchCore(ModelConfig(), coreset_ratio=0.1, max_candidates=3000, encoder=model.encoder)
    small.fit(images)
    assert small.bank.shape[0] == 12 * 32 * 32 // 10  # 10 % of all patches, greedily chosen from 3,000
    everything = model.embed(torch.from_numpy(np.stack(images)))
    flat = everything.permute(0, 2, 3, 1).reshape(-1, everything.shape[1])
    exact = torch.cdist(small.bank, flat, compute_mode="donot_use_mm_for_euclid_dist")
    assert exact.min(1).values.max() < 1e-3  # each one a real training patch


def test_patchcore_finds_generated_defects(tiny_data: Path) -> None:
    folder = MVTecFolder(tiny_data, "marble")
    model = PatchCore(ModelConfig(), coreset_ratio=0.1)
    with pytest.raises(RuntimeError, match="not fitted"):
        model(torch.zeros(1, 256, 256, 3, dtype=torch.uint8))
    model.fit([folder.load(item)[0] for item in folder.train])
    assert model.bank.shape == (12 * 32 * 32 // 10, sum(model.encoder.channels))
    result = evaluate_category(model, folder, None)
    assert result["image_auroc"] >= 0.9 and result["pixel_auroc"] >= 0.9
    assert "missed_at_threshold" not in result and "fewest_missed_at_same_false_alarms" not in result
