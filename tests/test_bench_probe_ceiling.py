"""bench/probe_ceiling.py: a candidate is an encoder at an input size, the Gaussian reading is the
Mahalanobis distance, maps are read at 256², and bad arguments are usage errors."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial.distance import mahalanobis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import probe_ceiling


def test_a_candidate_names_an_encoder_and_an_input_size() -> None:
    cfg = probe_ceiling.parse("lite2@320")
    assert cfg.backbone == "tf_efficientnet_lite2" and cfg.input_hw == (320, 320)
    for bad in ("lite3@256", "lite0", "lite0@big"):
        with pytest.raises(Exception, match="expected one of"):
            probe_ceiling.parse(bad)


def test_the_gaussian_reading_is_the_mahalanobis_distance() -> None:
    rng = np.random.default_rng(0)
    normal = rng.normal(size=(2000, 5)) @ rng.normal(size=(5, 5)) + rng.normal(size=5)
    mean, precision = probe_ceiling.fit_gaussian(torch.from_numpy(normal))
    cov = np.cov(normal.T)
    shrunk = cov + probe_ceiling.SHRINK * np.trace(cov) / len(cov) * np.eye(len(cov))
    assert np.allclose(precision.numpy(), np.linalg.inv(shrunk), rtol=1e-6, atol=1e-8)
    q = rng.normal(size=(7, 5)) * 3
    got = probe_ceiling.mahalanobis(torch.from_numpy(q), mean, precision).numpy()
    want = [mahalanobis(x, normal.mean(0), np.linalg.inv(shrunk)) for x in q]
    assert np.allclose(got, want, rtol=1e-6)


def test_maps_are_read_at_the_masks_size() -> None:
    m = torch.arange(2 * 384 * 384, dtype=torch.float32).reshape(2, 384, 384)
    out = probe_ceiling.to_reference(m)
    assert out.shape == (2, 256, 256)
    assert torch.allclose(out.mean((1, 2)), m.mean((1, 2)), rtol=1e-5)
    same = torch.rand(1, 256, 256)
    assert probe_ceiling.to_reference(same) is same


@pytest.mark.parametrize("args", [["--candidates", "lite9@256"], ["--candidates", "lite0@x"]])
def test_bad_candidates_are_usage_errors(args: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        raise SystemExit(probe_ceiling.main(args))
    assert exc.value.code == 2
