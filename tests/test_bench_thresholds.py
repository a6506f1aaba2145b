"""bench/thresholds.py: its resampling reads a rule's average false-alarm rate, and a wrong model file
is one line and exit 2, not a traceback."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import thresholds


def test_resampling_shows_the_plug_in_rule_over_its_target() -> None:
    rng = np.random.default_rng(0)
    good, defective = rng.normal(0.1, 0.01, 400), rng.normal(0.16, 0.01, 100)
    out = thresholds.study(good[:10], good[10:], defective, 0.01, [10, 40], draws=300, seed=0)
    ten = out["resampled"]["10"]
    assert ten["prediction"]["rejected"] < 0.02 < ten["plug-in"]["rejected"]  # Gaussian scores: ~1 % vs ~3 %
    assert out["resampled"]["40"]["prediction"]["rejected"] < ten["plug-in"]["rejected"]
    assert set(out["as_trained"]) == set(thresholds.RULES) and out["holdout"] == 10


def test_a_wrong_checkpoint_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"not a checkpoint")
    assert thresholds.main(["--checkpoint", str(bad), "--data", str(tmp_path)]) == 2
    assert "error:" in capsys.readouterr().err
