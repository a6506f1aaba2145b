"""Training: multi-class, calibrated threshold, resumable; the CLIs end to end on generated data."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import proad.train as train_module
from conftest import BOTTLE, interrupt_training_at
from proad.checkpoint import CheckpointError, build_model, load_checkpoint
from proad.cli import eval_main, synth_main, train_main
from proad.config import ModelConfig, TrainConfig
from proad.data.folder import DatasetError
from proad.presets import PRESETS, preset_configs
from proad.train import (
    calibrate,
    encode,
    normal_threshold,
    open_categories,
    score_cached,
    shifted_copies,
    split_holdout,
    train,
)


def test_train_calibrates_on_held_out_normals(tiny_data: Path, tmp_path: Path, small_cfg: ModelConfig) -> None:
    cfg = TrainConfig(iterations=15, batch_size=4, warmup=3, holdout_fraction=0.25, target_false_alarm=0.1)
    ckpt = train([tiny_data], tmp_path / "m.pt", small_cfg, cfg, progress=False, log=lambda s: None)
    assert (tmp_path / "m.pt").is_file() and not (tmp_path / "m.pt.resume").exists()
    info = ckpt.train_info
    assert info["categories"] == {"board": {"fit": 9, "holdout": 3}, "marble": {"fit": 9, "holdout": 3}}
    # recompute the threshold from the held-out images with the saved model
    model = build_model(load_checkpoint(tmp_path / "m.pt"))
    scores = {}
    for folder in open_categories([tiny_data], None, 256):
        split = split_holdout(folder, 0.25, 0)
        feats = encode(model, [folder.image(folder.train[i]) for i in split.holdout], progress=False)
        scores[folder.category] = score_cached(model, feats)[1]
    threshold, per_cat = calibrate(scores, 0.1)
    assert ckpt.threshold == pytest.approx(threshold, rel=1e-5)
    everything = np.concatenate(list(scores.values()))
    t90 = 1.4758840488244815  # Student's t 0.9 quantile, 5 degrees of freedom (six held-out images)
    assert len(everything) == 6
    by_hand = max(np.quantile(everything, 0.9), everything.mean() + t90 * everything.std(ddof=1) * (7 / 6) ** 0.5)
    assert ckpt.threshold == pytest.approx(by_hand, rel=1e-5)
    assert info["category_thresholds"] == pytest.approx(per_cat, rel=1e-5)
    assert ckpt.threshold > min(s.min() for s in scores.values())  # never the minimum score


def test_threshold_rejects_the_target_share_of_normal_parts() -> None:
    rng = np.random.default_rng(0)
    many = rng.gamma(4.0, 0.05, 200_000)  # normal scores with a right-skewed tail, as anomaly scores have
    for target in (0.01, 0.05):
        t = normal_threshold(many[:100_000], target)
        rejected = float((many[100_000:] >= t).mean())  # on parts the threshold never saw
        assert target * 0.85 <= rejected <= target * 1.15 + 0.002
    few = many[:12]  # a dozen held-out images: the prediction bound extrapolates past their maximum
    t99 = 2.7180791838138623  # Student's t 0.99 quantile, 11 degrees of freedom
    assert normal_threshold(few, 0.01) == pytest.approx(few.mean() + t99 * few.std(ddof=1) * (13 / 12) ** 0.5)
    assert normal_threshold(few, 0.01) > few.max() and normal_threshold(few, 0.2) > np.median(few)
    # per category: one category's normal scores far above another's get their own threshold
    low, high = rng.normal(0.1, 0.01, 50), rng.normal(0.5, 0.01, 50)
    overall, per = calibrate({"low": low, "high": high}, 0.01)
    assert per["low"] < 0.2 < per["high"] and overall >= per["high"]


def test_threshold_from_ten_images_keeps_the_target_on_average() -> None:
    """Ten held-out images estimate the normal scores' mean and spread only roughly; a bound that takes
    them as known rejects far more than the target. The prediction bound keeps the target on
    average over many such draws (exactly, for Gaussian scores): the share of normal parts each
    threshold rejects is read from the true distribution, not sampled."""
    from scipy.stats import norm

    rng = np.random.default_rng(1)
    mean, std, target = 0.1, 0.01, 0.01
    draws = rng.normal(mean, std, (4000, 10))
    rejected = np.array([norm.sf(normal_threshold(d, target), mean, std) for d in draws])
    plug_in = np.array([norm.sf(d.mean() + norm.ppf(1 - target) * d.std(), mean, std) for d in draws])
    assert 0.8 * target <= rejected.mean() <= 1.2 * target  # 1.10 % over these 4,000 draws
    assert plug_in.mean() > 2 * target  # the former rule, mean + z * std: about 3 % instead of 1 %


def test_resume_continues_exactly(tiny_data: Path, tmp_path: Path, small_cfg: ModelConfig, monkeypatch) -> None:
    cfg = TrainConfig(iterations=12, batch_size=4, warmup=2, checkpoint_every=5, holdout_fraction=0.25)
    straight = train([tiny_data], tmp_path / "a.pt", small_cfg, cfg, progress=False, log=lambda s: None)

    real_loss = interrupt_training_at(monkeypatch, 8)
    with pytest.raises(KeyboardInterrupt):
        train([tiny_data], tmp_path / "b.pt", small_cfg, cfg, progress=False, log=lambda s: None)
    assert (tmp_path / "b.pt.resume").is_file() and not (tmp_path / "b.pt").exists()
    monkeypatch.setattr(train_module, "proad_loss", real_loss)
    messages: list[str] = []
    resumed = train([tiny_data], tmp_path / "b.pt", small_cfg, cfg, resume=True, progress=False, log=messages.append)
    assert any("at step 5" in m for m in messages)
    for k, v in straight.state_dict.items():
        torch.testing.assert_close(resumed.state_dict[k], v, msg=k)
    with pytest.raises(CheckpointError, match="another model config"):
        torch.save({"format": "proad-train-state", "model_config": {}}, tmp_path / "c.pt.resume")
        train([tiny_data], tmp_path / "c.pt", small_cfg, cfg, resume=True, progress=False, log=lambda s: None)


def test_shifted_copies_translate_within_bounds() -> None:
    img = np.zeros((64, 64, 3), np.uint8)
    img[30, 40] = (10, 200, 30)  # one marked pixel far from the border: where it lands is the shift
    copies = shifted_copies([img, img], copies=5, pixels=3, seed=0)
    assert len(copies) == 10 and all(c.shape == img.shape and c.dtype == np.uint8 for c in copies)
    shifts = set()
    for c in copies:
        ys, xs = np.nonzero(c[..., 1] == 200)
        assert len(ys) == 1 and tuple(c[ys[0], xs[0]]) == (10, 200, 30) and c.sum() == img.sum()
        dy, dx = int(ys[0]) - 30, int(xs[0]) - 40
        assert max(abs(dx), abs(dy)) <= 3
        shifts.add((dx, dy))
    assert len(shifts) > 1  # not one translation for all
    again = shifted_copies([img, img], copies=5, pixels=3, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(copies, again, strict=True))  # reproducible per seed


def test_shift_copies_add_fitted_images_not_held_out_ones(
    tiny_data: Path, tmp_path: Path, small_cfg: ModelConfig
) -> None:
    cfg = TrainConfig(iterations=2, batch_size=4, warmup=1, holdout_fraction=0.25, shift_copies=2)
    messages: list[str] = []
    ckpt = train([tiny_data], tmp_path / "m.pt", small_cfg, cfg, progress=False, log=messages.append)
    assert any("features of 54 training images" in m for m in messages)  # (1 + 2) x 9 fitted, x 2 categories
    assert ckpt.train_info["categories"]["board"] == {"fit": 9, "holdout": 3}  # the threshold's images untouched
    assert ckpt.train_info["train_config"]["shift_copies"] == 2


def test_categories_must_exist_and_be_unique(tiny_data: Path) -> None:
    with pytest.raises(DatasetError, match=r"not found .*: carpet"):
        open_categories([tiny_data], ["carpet"], 256)
    with pytest.raises(DatasetError, match="exists in both"):
        open_categories([tiny_data, tiny_data], None, 256)


def test_presets_are_valid_configs_and_explicit_settings_win() -> None:
    assert PRESETS["fast"].model == {} and PRESETS["fast"].train == {}  # fast is the defaults
    for name, preset in PRESETS.items():
        model, train_cfg = preset_configs(name)
        assert all(getattr(model, k) == v for k, v in preset.model.items()), name
        assert all(getattr(train_cfg, k) == v for k, v in preset.train.items()), name
    model, train_cfg = preset_configs("constrained", {"dim": 64}, {"iterations": 5})
    assert model.dim == 64 and train_cfg.iterations == 5 and model.prototypes == 256
    # accurate is fast's model and training on the bigger encoder the registry ships (issue 14)
    model, train_cfg = preset_configs("accurate")
    assert model.backbone == "tf_efficientnet_lite2" and model.prototypes == ModelConfig().prototypes
    assert train_cfg == TrainConfig()
    with pytest.raises(KeyError, match="unknown preset"):
        preset_configs("best")


def test_clis_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, ckpt, out = tmp_path / "data", tmp_path / "m.pt", tmp_path / "eval.json"
    assert synth_main(["--out", str(data), "--categories", "weave", "--train", "8", "--test-good", "2",
                       "--test-per-defect", "1", "--quiet"]) == 0
    assert train_main(["--data", str(data), "--out", str(ckpt), "--iterations", "6", "--batch-size", "4", "--quiet",
                       "--preset", "constrained", "--set", "dim=32", "heads=2", "layers=2", "prototypes=8",
                       "--holdout-fraction", "0.25"]) == 0
    # the preset set what it names, the explicit flags and --set won over it, and its name was kept
    saved = load_checkpoint(ckpt)
    constrained = PRESETS["constrained"]
    assert all(getattr(saved.model_config, k) == v for k, v in constrained.model.items()
               if k not in ("dim", "heads", "layers", "prototypes"))
    explicit = ("iterations", "batch_size")
    assert all(saved.train_info["train_config"][k] == v for k, v in constrained.train.items() if k not in explicit)
    assert saved.train_info["train_config"]["batch_size"] == 4
    assert (saved.model_config.dim, saved.model_config.layers) == (32, 2)
    assert saved.train_info["train_config"]["iterations"] == 6 and saved.train_info["preset"] == "constrained"
    assert saved.train_info["categories"]["weave"] == {"fit": 6, "holdout": 2}  # a quarter of 8 held out
    assert eval_main(["--data", str(data), "--checkpoint", str(ckpt), "--json", str(out), "--viz",
                      str(tmp_path / "viz"), "--quiet"]) == 0
    result = json.loads(out.read_text())
    weave = result["categories"]["weave"]
    for key in ("image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "pixel_ap", "pixel_f1_max", "aupro"):
        assert 0.0 <= weave[key] <= 1.0
        assert result["mean"][key] == weave[key]
    assert weave["images"] == 6 and weave["defective"] == 4
    assert len(list((tmp_path / "viz" / "weave").glob("*.png"))) >= 3
    assert "| weave |" in capsys.readouterr().out


def test_a_rectangular_input_trains_and_evaluates_through_the_clis(tmp_path: Path, tiny_data: Path) -> None:
    """``proad-train --set image_size=[128,224]``: the pictures are fitted to 128 x 224 for training,
    the threshold's calibration and ``proad-eval`` (maps and masks of that shape, overlays written);
    a side that is not a multiple of 32 is a usage error naming the field."""
    from proad.data.folder import MVTecFolder

    ckpt, out = tmp_path / "wide.pt", tmp_path / "eval.json"
    assert train_main(["--data", str(tiny_data), "--out", str(ckpt), "--iterations", "4", "--batch-size", "4",
                       "--quiet", "--set", "image_size=[128,224]", "dim=32", "heads=2", "layers=2"]) == 0
    saved = load_checkpoint(ckpt)
    assert saved.model_config.input_hw == (128, 224) and "128x224 (height x width)" in saved.normalisation["input"]
    assert saved.category_tiles == {}  # 256-pixel pictures are shrunk at most 2x: not tiled
    image, mask = MVTecFolder(tiny_data, "board", saved.model_config.image_size).load(
        MVTecFolder(tiny_data, "board").test[-1])
    assert image.shape == (128, 224, 3) and mask.shape == (128, 224) and mask.any()
    assert eval_main(["--data", str(tiny_data), "--checkpoint", str(ckpt), "--json", str(out), "--viz",
                      str(tmp_path / "viz"), "--quiet"]) == 0
    board = json.loads(out.read_text())["categories"]["board"]
    assert board["images"] == 3 + 2 * len({i.kind for i in MVTecFolder(tiny_data, "board").test} - {"good"})
    assert 0.0 <= board["pixel_auroc"] <= 1.0 and 0.0 <= board["aupro"] <= 1.0
    overlay = next((tmp_path / "viz" / "board").glob("*.png"))
    assert cv2.imread(str(overlay)).shape == (128, 448, 3)  # the picture beside its overlay
    assert train_main(["--data", str(tiny_data), "--out", str(tmp_path / "x.pt"), "--quiet",
                       "--set", "image_size=[128,200]"]) == 2


def test_cli_bad_input_exit_codes(tmp_path: Path, tiny_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert train_main(["--data", str(tmp_path / "none"), "--out", str(tmp_path / "m.pt")]) == 2
    assert "dataset root not found" in capsys.readouterr().err
    assert train_main(["--data", str(tiny_data), "--out", str(tmp_path / "m.pt"), "--set", "dim=30"]) == 2
    assert "divisible by heads" in capsys.readouterr().err
    (tmp_path / "cfg.yaml").write_text("prototypes: [1, 2\n")
    assert train_main(["--data", str(tiny_data), "--out", str(tmp_path / "m.pt"), "--model-config",
                       str(tmp_path / "cfg.yaml")]) == 2
    assert "cannot read --model-config" in capsys.readouterr().err
    assert train_main(["--data", str(tiny_data), "--out", str(tmp_path / "m.pt"), "--shift-copies", "-1"]) == 2
    assert "shift_copies" in capsys.readouterr().err and not (tmp_path / "m.pt").exists()
    assert train_main(["--data", str(tiny_data), "--out", str(tmp_path / "m.pt"), "--target-false-alarm", "0.7"]) == 2
    assert train_main(["--data", str(tiny_data), "--out", str(tmp_path / "m.pt"), "--holdout-fraction", "1.5"]) == 2
    err = capsys.readouterr().err
    assert "target_false_alarm" in err and "holdout_fraction" in err and not (tmp_path / "m.pt").exists()
    assert synth_main(["--out", str(tmp_path / "s"), "--categories", "carpet"]) == 2
    with pytest.raises(SystemExit) as exc:
        train_main(["--help"])
    assert exc.value.code == 0


@pytest.mark.skipif(not BOTTLE.is_dir(), reason=f"real MVTec AD bottle set not present at {BOTTLE}")
def test_short_training_detects_real_bottle_defects(tmp_path: Path) -> None:
    """What works on generated data works on real camera images: a short run already separates them."""
    from proad.evaluate import evaluate

    # 40 steps of fast's batch of 8 (the same readings as 40 of 16 to the third decimal, in half the time)
    ckpt = train([BOTTLE], tmp_path / "bottle.pt", ModelConfig(), TrainConfig(iterations=40, batch_size=8, warmup=10),
                 progress=False, log=lambda s: None)
    result = evaluate(build_model(ckpt), open_categories([BOTTLE], None, 256), ckpt.threshold, progress=False)
    bottle = result["categories"]["bottle"]
    assert bottle["image_auroc"] >= 0.95
    assert bottle["pixel_auroc"] >= 0.9
