"""bench/best_threshold.py: a share of good pictures rejected becomes a count rounded down, every model
(Pro-AD checkpoints and PatchCore) is scored on the same test pictures, and bad input is a usage error."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import best_threshold


def test_a_share_rejected_allows_that_many_good_pictures_rounded_down() -> None:
    labels = np.array([0, 0, 0, 0, 1, 1, 1])
    scores = np.array([0.9, 0.6, 0.3, 0.1, 0.95, 0.5, 0.2])
    # 0.2 of 4 good: none may be rejected, so the threshold passes 0.9; 0.5 of 4: two, it passes 0.3
    assert best_threshold.missed_at_shares(labels, scores, [0.2, 0.5]) == {"0.2": 2, "0.5": 1}


def test_every_model_is_scored_on_the_same_test_pictures(board_model: tuple[Path, Path]) -> None:
    ckpt = board_model[0]
    data = best_threshold.measure([ckpt.parent / "data"], "board", [ckpt], [0.0, 0.5], patchcore_ratio=0.1)
    assert list(data["missed"]) == ["board.pt", "PatchCore (10% coreset)"]
    assert data["good"] == 2 and data["defective"] > 0
    for row in data["missed"].values():
        assert 0 <= row["0.5"] <= row["0"] <= data["defective"]  # more rejected never misses more
    data["machine"] = {"cpu": "cpu", "date": "today"}
    assert "| board.pt | " in best_threshold.table(data)


@pytest.mark.parametrize("args", [["--rejected", "1.5"], ["--coreset-ratio", "0"], []])
def test_bad_input_is_a_usage_error(tmp_path: Path, args: list[str]) -> None:
    base = ["--data", str(tmp_path), "--category", "board", "--checkpoint", str(tmp_path / "missing.pt")]
    with pytest.raises(SystemExit) as exc:
        raise SystemExit(best_threshold.main(base + args))
    assert exc.value.code == 2
