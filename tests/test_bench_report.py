"""The comparison's seed averaging and the report's reading of it, on numbers worked out by hand."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))
from accuracy import _at_threshold, _mean_over_runs, main  # noqa: E402
from report import reading  # noqa: E402


def _cat(auroc: float, aupro: float, images: int = 10, defective: int = 6) -> dict:
    return {"image_auroc": auroc, "aupro": aupro, "pixel_auroc": 0.9, "images": images, "defective": defective,
            "ms_per_image": 10.0}  # fmt: skip


def _run(seed: int, board: float, weave: float, aupro: float) -> dict:
    cats = {"board": _cat(board, aupro), "weave": _cat(weave, aupro)}
    keys = ("image_auroc", "aupro", "pixel_auroc", "ms_per_image")
    return {"seed": seed, "categories": cats, "mean": {k: (cats["board"][k] + cats["weave"][k]) / 2 for k in keys}}


def test_mean_over_runs_averages_metrics_and_keeps_counts() -> None:
    runs = [_run(0, 23 / 24, 1.0, 0.96), _run(1, 1.0, 1.0, 0.98)]
    cats, mean = _mean_over_runs(runs)
    assert cats["board"]["image_auroc"] == pytest.approx((23 / 24 + 1.0) / 2)
    assert cats["board"]["images"] == 10 and cats["board"]["defective"] == 6  # counts, not averaged
    runs[1]["categories"]["board"]["missed_at_threshold"] = 3  # a per-seed count differs: its mean
    runs[0]["categories"]["board"]["missed_at_threshold"] = 0
    assert _mean_over_runs(runs)[0]["board"]["missed_at_threshold"] == pytest.approx(1.5)
    assert mean["aupro"] == pytest.approx(0.97)


def test_the_threshold_cell_sets_the_best_thresholds_misses_beside_the_stored_ones() -> None:
    r = {"images": 10, "defective": 8, "missed_at_threshold": 4, "false_alarms_at_threshold": 1}
    assert _at_threshold(r) == "50% / 50%"  # a record from before the best threshold was kept
    assert _at_threshold({**r, "fewest_missed_at_same_false_alarms": 1}) == "50% / 50% (best 12%)"


def test_reading_judges_the_seed_mean_and_counts_each_seeds_pairs() -> None:
    # 4 good x 6 defective = 24 pairs per category. Seed 0 misorders one board pair, seed 1 none;
    # PatchCore misorders two weave pairs. Mean image AUROC: Pro-AD (23/24 + 3 * 1) / 4 = 0.98958,
    # PatchCore (1 + 22/24) / 2 = 0.95833.
    runs = [_run(0, 23 / 24, 1.0, 0.96), _run(1, 1.0, 1.0, 0.98)]
    cats, mean = _mean_over_runs(runs)
    pc_cats = {"board": _cat(1.0, 0.95), "weave": _cat(22 / 24, 0.95)}
    acc = {
        "data": "synth-test200",
        "proad": {"iterations": 2000, "shift_copies": 2, "bytes": 2**20, "seeds": [0, 1], "runs": runs,
                  "categories": cats, "mean": mean},
        "patchcore": {"bytes": 2**21, "categories": pc_cats,
                      "mean": {"image_auroc": (1 + 22 / 24) / 2, "aupro": 0.95, "pixel_auroc": 0.9,
                               "ms_per_image": 20.0}},
    }  # fmt: skip
    text = "\n".join(reading(acc, None, None, None))
    assert "image AUROC 0.98958 vs 0.95833 (at least PatchCore's)" in text
    assert "is met, on the mean of 2 training seeds; 2 of 2 seeds meet it on their own" in text
    # seed 0: -1 (board) + 2 (weave) = 1 pair for Pro-AD; seed 1: 2 pairs
    assert "(of 48), the image-AUROC difference is seed 0: 1 in Pro-AD's favour; seed 1: 2 in Pro-AD's favour" in text
    assert "board (0.97917 vs 1.00000)" in text  # the one category where PatchCore ranks better

    pc_cats["weave"] = _cat(1.0, 0.95)  # now PatchCore is perfect: Pro-AD's seed 0 is behind, the mean too
    acc["patchcore"]["mean"]["image_auroc"] = 1.0
    text = "\n".join(reading(acc, None, None, None))
    assert "**not met**" in text and "1 of 2 seeds meet it on their own" in text
    assert "seed 0: 1 in PatchCore's favour; seed 1: 0 in Pro-AD's favour" in text


def test_compare_refuses_a_missing_dataset_or_checkpoint(tiny_data: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    missing = tmp_path / "nowhere"
    monkeypatch.setattr(sys, "argv", ["accuracy.py", "--compare-patchcore", "--data", str(missing)])
    assert main() == 2
    assert str(missing) in capsys.readouterr().err
    monkeypatch.setattr(sys, "argv", ["accuracy.py", "--compare-patchcore", "--data", str(tiny_data),
                                      "--proad-checkpoint", str(tmp_path / "absent.pt")])  # fmt: skip
    assert main() == 2
    assert "absent.pt" in capsys.readouterr().err


@pytest.mark.parametrize("given, said", [("{prototypes: 128}", "not JSON"), ("[128]", "JSON object"),
                                         ('{"prototypes": 0}', "prototypes"), ('{"protoypes": 128}', "protoypes")])
def test_compare_refuses_bad_model_fields_before_training(given: str, said: str, monkeypatch, capsys) -> None:
    monkeypatch.setattr(sys, "argv", ["accuracy.py", "--compare-patchcore", "--model", given])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2
    assert said in capsys.readouterr().err


def test_compare_refuses_model_fields_for_a_given_checkpoint(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(sys, "argv", ["accuracy.py", "--compare-patchcore", "--model", '{"prototypes": 128}',
                                      "--proad-checkpoint", str(tmp_path / "given.pt")])  # fmt: skip
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2
    assert "--proad-checkpoint" in capsys.readouterr().err


def test_tta_refuses_a_missing_or_corrupt_checkpoint(tiny_data: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    from tta import main as tta_main

    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    for given in (tmp_path / "absent.pt", corrupt):
        monkeypatch.setattr(sys, "argv", ["tta.py", "--checkpoint", str(given), "--data", str(tiny_data)])
        assert tta_main() == 1
        assert given.name in capsys.readouterr().err
