"""Standardised encoder levels (``standardise_strides``): training fits each chosen level's channel
mean and spread on its training pictures, the decoder then reads, rebuilds and compares those
channels standardised, and the statistics travel in the checkpoint and the ONNX graph."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from proad.checkpoint import build_model, load_checkpoint
from proad.config import ModelConfig, TrainConfig
from proad.data.folder import MVTecFolder
from proad.model import ProAD, local_average
from proad.train import STANDARDISE_PICTURES, split_holdout, train


def _cfg(small_cfg: ModelConfig, **fields: object) -> ModelConfig:
    return ModelConfig.model_validate({**small_cfg.model_dump(), "standardise_strides": [16], **fields})


def test_a_trained_model_standardises_its_chosen_level_with_its_training_pictures_statistics(
    small_cfg: ModelConfig, tiny_data, tmp_path
) -> None:
    from proad.export.onnx_export import export_onnx

    cfg = _cfg(small_cfg)
    ckpt = train([tiny_data], tmp_path / "s.pt", cfg, TrainConfig(iterations=3, batch_size=4, warmup=1,
                 holdout_fraction=0.25), progress=False, log=lambda s: None)  # fmt: skip
    assert ckpt.train_info["standardised"] == {"strides": [16], "pictures": 18}  # 9 fitted pictures a category
    model = build_model(load_checkpoint(tmp_path / "s.pt")).eval()
    assert model.standardised_levels == [1]
    assert "feature_mean1" in ckpt.state_dict and "feature_mean0" not in ckpt.state_dict

    # the statistics are those of the fitted pictures' raw stride-16 features, over pictures and positions
    plain = ProAD(ModelConfig.model_validate({**cfg.model_dump(), "standardise_strides": []})).eval()
    train_cfg = TrainConfig.model_validate(ckpt.train_info["train_config"])
    fitted = []
    for category in ("board", "marble"):
        split = split_holdout(MVTecFolder(tiny_data, category), train_cfg.holdout_fraction, train_cfg.seed)
        fitted += [split.folder.image(split.folder.train[i]) for i in split.fit]
    with torch.no_grad():
        raw = plain.encoder(plain.input_norm(torch.from_numpy(np.stack(fitted))))[1].double()
    mean, spread = model.feature_mean1.flatten(), model.feature_spread1.flatten()
    assert torch.allclose(mean.double(), raw.mean((0, 2, 3)), atol=1e-4)
    assert torch.allclose(spread.double(), raw.std((0, 2, 3), correction=0), rtol=1e-4)

    image = torch.from_numpy(np.stack(fitted[:2]))
    with torch.no_grad():
        levels = plain.encoder(plain.input_norm(image))
        want = [local_average(levels[0], cfg.feature_pool),
                local_average((levels[1] - model.feature_mean1) / model.feature_spread1, cfg.feature_pool)]  # fmt: skip
        got = model.features(image)
    assert torch.allclose(got[0], want[0], atol=1e-5) and torch.allclose(got[1], want[1], atol=1e-4)

    report = export_onnx(tmp_path / "s.pt", tmp_path / "s.onnx", verify_count=2)
    assert report.max_abs_error_map <= 1e-4 and report.max_abs_error_score <= 1e-4


def test_the_statistics_come_from_a_bounded_number_of_pictures() -> None:
    assert 8 <= STANDARDISE_PICTURES <= 128  # enough positions for every channel, seconds of encoding


def test_a_stride_the_encoder_has_not_is_refused(small_cfg: ModelConfig) -> None:
    with pytest.raises(ValidationError, match="standardise_strides"):
        _cfg(small_cfg, standardise_strides=[32])


def test_without_standardised_levels_nothing_changes(small_cfg: ModelConfig) -> None:
    model = ProAD(small_cfg)
    assert model.standardised_levels == [] and not any(k.startswith("feature_") for k in model.state_dict())


def test_the_model_refuses_a_stride_its_encoder_has_not_even_past_the_config(small_cfg: ModelConfig) -> None:
    unchecked = small_cfg.model_copy(update={"standardise_strides": [32]})  # as a custom encoder's config would pass
    with pytest.raises(ValueError, match="none of the encoder levels' strides"):
        ProAD(unchecked)
