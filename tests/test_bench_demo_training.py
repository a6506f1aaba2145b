"""bench/demo_training.py: a recipe is ITERATIONS:BATCH:TRAIN_PICTURES:SEED, anything else is a usage
error (exit 2) before any training starts. (Its reading of the demo's summary is checked on a real demo
run in tests/test_demo.py.)"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import demo_training


def test_a_recipe_names_iterations_batch_pictures_and_seed() -> None:
    assert demo_training.parse_candidate("2000:8:100:0") == {
        "iterations": 2000, "batch_size": 8, "train_pictures": 100, "seed": 0}  # fmt: skip
    assert [demo_training.parse_candidate(c) for c in demo_training.CANDIDATES]  # the defaults parse


@pytest.mark.parametrize("bad", ["2000:8:100", "2000:8:100:0:1", "0:8:100:0", "2000:x:100:0", "2000:8:-1:0", ""])
def test_a_malformed_recipe_exits_2(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="ITERATIONS:BATCH:TRAIN_PICTURES:SEED"):
        demo_training.parse_candidate(bad)
    assert demo_training.main(["--candidate", bad]) == 2
    assert "error: --candidate expects" in capsys.readouterr().err
