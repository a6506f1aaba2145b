"""The optional memory of normal patches (``memory_size`` > 0): it reads PatchCore's patch features of
the model's own encoder, finds each patch's nearest bank feature, is filled from training patches
by the greedy coreset, and travels through training, the checkpoint and the ONNX graph."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from proad.artifacts import OnnxMetadata
from proad.checkpoint import Checkpoint, CheckpointError, build_model, load_checkpoint
from proad.config import ModelConfig, TrainConfig
from proad.data.folder import MVTecFolder
from proad.export.onnx_export import ExportError
from proad.export.quantize import quantize
from proad.memory import fill_memory
from proad.model import ProAD
from proad.train import RESUME_FORMAT, _load_resume, encode, train


def _memory_cfg(small_cfg: ModelConfig, **fields: object) -> ModelConfig:
    return ModelConfig.model_validate({**small_cfg.model_dump(), "memory_size": 48, **fields})


def _images(folder: MVTecFolder, n: int) -> torch.Tensor:
    return torch.from_numpy(np.stack([folder.image(p) for p in folder.train[:n]]))


def _rows_of(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """For each row of ``a``: is it exactly one of ``b``'s rows?"""
    return (a[:, None, :] == b[None, :, :]).all(-1).any(1)


@pytest.mark.parametrize("stride", [8, 16])
def test_memory_features_are_patchcores_and_the_distance_is_the_nearest_bank_features(
    small_cfg: ModelConfig, tiny_data, stride: int
) -> None:
    torch.manual_seed(0)
    model = ProAD(_memory_cfg(small_cfg, memory_stride=stride)).eval()
    images = _images(MVTecFolder(tiny_data, "marble"), 3)
    with torch.no_grad():
        raw = model.encoder(model.input_norm(images))  # the levels before any averaging
        want = [F.avg_pool2d(f.float(), 3, stride=1, padding=1, count_include_pad=True) for f in raw]
        want = want[1:] if stride == 16 else [want[0], F.interpolate(want[1], size=want[0].shape[-2:], mode="bilinear")]
        want = torch.cat(want, 1)  # PatchCore's features: zero padding counted, coarser level upsampled
        feats = model.features(images)
        got = model.memory_features(feats)
        assert got.shape == want.shape and torch.allclose(got, want, atol=1e-4)

        rows = got.permute(0, 2, 3, 1).reshape(-1, got.shape[1])
        model.memory_bank.copy_(rows[torch.randperm(len(rows))[:48]])
        dist = model.memory_distance(feats)
        nearest = torch.cdist(rows, model.memory_bank).min(1).values.view(dist.shape)
        assert torch.allclose(dist, nearest, atol=1e-2 * float(nearest.mean()))
        assert int((dist < 1e-2 * float(nearest.mean())).sum()) >= 40  # the bank's own patches lie at 0


def test_fill_memory_keeps_training_patches_and_pads_a_bank_larger_than_them(
    small_cfg: ModelConfig, tiny_data
) -> None:
    folder = MVTecFolder(tiny_data, "marble")
    images = [folder.image(p) for p in folder.train[:2]]  # 2 x 16 x 16 = 512 stride-16 patches
    torch.manual_seed(0)
    small = ProAD(_memory_cfg(small_cfg, memory_size=100)).eval()
    cache = encode(small, images, progress=False)
    with torch.no_grad():
        patches = small.memory_features([f.float() for f in cache])
        rows = patches.permute(0, 2, 3, 1).reshape(-1, patches.shape[1])
        assert fill_memory(small, cache) == len(rows) == 512
        assert _rows_of(small.memory_bank, rows).all()  # every bank row is a training patch,
        assert len(torch.unique(small.memory_bank, dim=0)) == 100  # 100 distinct ones by the greedy pass

        big = ProAD(_memory_cfg(small_cfg, memory_size=600)).eval()
        assert fill_memory(big, cache) == 512
        assert _rows_of(big.memory_bank, rows).all() and _rows_of(rows, big.memory_bank).all()  # all, some twice
        scale = float(rows.norm(dim=1).mean())
        assert big.memory_distance([f.float() for f in cache]).max() < 1e-2 * scale  # training patches lie at 0
        # the smaller bank covers the rest: every training patch is nearer to it than a random one
        assert small.memory_distance([f.float() for f in cache]).mean() < torch.cdist(rows, rows[:1]).mean()


def test_a_model_with_memory_trains_saves_loads_and_exports(small_cfg: ModelConfig, tiny_data, tmp_path) -> None:
    from proad.export.onnx_export import export_onnx

    cfg = _memory_cfg(small_cfg)
    ckpt = train([tiny_data], tmp_path / "m.pt", cfg, TrainConfig(iterations=3, batch_size=4, warmup=1,
                 holdout_fraction=0.25), progress=False, log=lambda s: None)  # fmt: skip
    info = ckpt.train_info["memory"]
    assert info["bank"] == 48 and info["patches"] == 18 * 256  # 9 fitted images of each category, 16x16 patches
    assert info["fusion_source"] == "held-out normal images" and info["rec_std"] > 0 and info["mem_std"] > 0
    saved = load_checkpoint(tmp_path / "m.pt")
    assert saved.model_config.memory_size == 48
    assert torch.equal(saved.state_dict["memory_bank"], ckpt.state_dict["memory_bank"])
    assert saved.state_dict["memory_bank"].abs().sum() > 0
    model = build_model(saved)
    stats = model.memory_stats.tolist()
    assert stats == pytest.approx([info["rec_mean"], info["rec_std"], info["mem_mean"], info["mem_std"]])

    image = _images(MVTecFolder(tiny_data, "board"), 2)
    with torch.no_grad():
        feats = model.features(image)
        rec = model.anomaly_map(feats, model.decode(feats).reconstructions)
        mem = model.memory_map(feats)
        amap, score = model(image)
    w = cfg.memory_weight
    by_hand = (rec + w * (stats[0] + stats[1] * (mem - stats[2]) / stats[3])) / (1 + w)
    assert torch.allclose(amap, by_hand, atol=1e-5) and not torch.allclose(amap, rec, atol=1e-3)
    assert torch.allclose(score, model.score(amap))

    report = export_onnx(tmp_path / "m.pt", tmp_path / "m.onnx", verify_count=2)
    assert report.max_abs_error_map <= 1e-4 and report.max_abs_error_score <= 1e-4
    half = export_onnx(tmp_path / "m.pt", tmp_path / "m16.onnx", precision="fp16", verify_count=2)  # TensorRT's form
    assert half.tolerance is not None and half.max_abs_error_map <= half.tolerance
    with pytest.raises(ExportError, match="int8 is not supported for a model with a memory"):
        quantize(tmp_path / "m.onnx", tmp_path / "m8.onnx", [tiny_data], first_level_block=1)
    assert not (tmp_path / "m8.onnx").exists()
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert json.loads(OnnxMetadata.from_props(props).model_config_json)["memory_size"] == 48  # the edge reads it


def test_a_memory_on_a_grid_no_level_has_is_refused(small_cfg: ModelConfig, tiny_data, tmp_path, capsys) -> None:
    from proad.cli import train_main

    args = ["--data", str(tiny_data), "--out", str(tmp_path / "m.pt"), "--quiet", "--set", "memory_size=64"]
    assert train_main([*args, "memory_stride=32"]) == 2  # before anything is encoded or trained
    assert "memory_stride 32 is none of the feature levels' strides [8, 16]" in capsys.readouterr().err
    assert not (tmp_path / "m.pt").exists()
    with pytest.raises(ValidationError, match=r"memory_stride 32 is none of the feature levels' strides \[8, 16\]"):
        _memory_cfg(small_cfg, memory_stride=32)
    assert ProAD(_memory_cfg(small_cfg, memory_stride=32, feature_levels=(2, 3, 4), layers=3)).memory_levels == [2]
    with pytest.raises(ValidationError, match="memory_stride must be 4, 8, 16 or 32"):
        _memory_cfg(small_cfg, memory_stride=12)
    with pytest.raises(ValidationError, match="memory_size"):
        _memory_cfg(small_cfg, memory_size=-1)


def test_without_memory_nothing_changes_and_an_unfilled_memory_is_refused(small_cfg: ModelConfig, tmp_path) -> None:
    plain = ProAD(small_cfg)
    assert plain.memory_levels == [] and not any("memory" in k for k in plain.trainable_state_dict())
    with pytest.raises(ValueError, match="no memory of normal patches"):
        plain.memory_map(plain.features(torch.zeros(1, 256, 256, 3, dtype=torch.uint8)))
    cfg = _memory_cfg(small_cfg)
    unfilled = Checkpoint(cfg, ProAD(cfg).trainable_state_dict(), 0.3)  # a bank of zeros
    with pytest.raises(CheckpointError, match=r"memory of normal patches .* that was never filled"):
        build_model(unfilled)


def test_a_snapshot_from_before_the_memory_fields_still_resumes(small_cfg: ModelConfig, tmp_path) -> None:
    older = {k: v for k, v in small_cfg.model_dump(mode="json").items() if not k.startswith("memory_")}
    train_cfg = TrainConfig(iterations=10)
    snapshot = {"format": RESUME_FORMAT, "step": 5, "model_config": older,
                "train_config": train_cfg.model_dump(mode="json")}  # fmt: skip
    torch.save(snapshot, tmp_path / "m.pt.resume")
    assert _load_resume(tmp_path / "m.pt.resume", small_cfg, train_cfg)["step"] == 5
    with pytest.raises(CheckpointError, match="another model config"):
        _load_resume(tmp_path / "m.pt.resume", _memory_cfg(small_cfg), train_cfg)
