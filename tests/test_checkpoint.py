"""Checkpoint v1: round trip, and one clear error line for every kind of bad file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from proad.checkpoint import Checkpoint, CheckpointError, build_model, load_checkpoint, load_model, save_checkpoint
from proad.config import ModelConfig
from proad.data.synth import render
from proad.model import ProAD


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory, small_cfg: ModelConfig) -> tuple[Path, ProAD]:
    torch.manual_seed(1)
    model = ProAD(small_cfg).eval()
    with torch.no_grad():  # make the weights differ from a fresh init
        model.bank.mul_(3.0)
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save_checkpoint(Checkpoint(small_cfg, model.trainable_state_dict(), 0.25, {"input": "uint8 NHWC BGR"}), path)
    return path, model


def test_round_trip(saved: tuple[Path, ProAD]) -> None:
    path, model = saved
    loaded, ckpt = load_model(path)
    assert ckpt.threshold == 0.25 and ckpt.model_config == model.cfg and len(ckpt.sha256) == 64
    assert not any(k.startswith("encoder.") for k in ckpt.state_dict)  # the encoder comes from the backbone
    x = torch.from_numpy(render("board", "spot", index=1).image[None])
    with torch.no_grad():
        a, sa = model(x)
        b, sb = loaded(x)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(sa, sb)
    assert path.stat().st_size < 5_000_000


def _bad(tmp_path: Path, obj: object, name: str = "bad.pt") -> Path:
    path = tmp_path / name
    torch.save(obj, path)
    return path


def test_refuses_foreign_files(tmp_path: Path, saved: tuple[Path, ProAD]) -> None:
    good = torch.load(saved[0], weights_only=True)
    cases = {
        "not a Pro-AD checkpoint": _bad(tmp_path, {"state_dict": {}}, "a.pt"),
        "format 'other'": _bad(tmp_path, {**good, "format": "other"}, "b.pt"),
        "version 2 is not supported": _bad(tmp_path, {**good, "version": 2}, "c.pt"),
        "lacks 'threshold'": _bad(tmp_path, {k: v for k, v in good.items() if k != "threshold"}, "d.pt"),
        "invalid model_config: dim": _bad(
            tmp_path, {**good, "model_config": {**good["model_config"], "dim": "x"}}, "e.pt"
        ),
        "is not a number": _bad(tmp_path, {**good, "threshold": "high"}, "f.pt"),
    }
    (tmp_path / "text.pt").write_text("hello")
    cases["not a readable Pro-AD checkpoint"] = tmp_path / "text.pt"
    (tmp_path / "empty.pt").write_bytes(b"")
    cases["empty file"] = tmp_path / "empty.pt"
    data = saved[0].read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    cases["truncated"] = tmp_path / "truncated.pt"
    cases["no such checkpoint"] = tmp_path / "absent.pt"
    for message, path in cases.items():
        with pytest.raises(CheckpointError, match=message):
            load_checkpoint(path)


def test_refuses_weights_of_another_shape(tmp_path: Path, saved: tuple[Path, ProAD]) -> None:
    ckpt = load_checkpoint(saved[0])
    wider = Checkpoint(ckpt.model_config.model_copy(update={"prototypes": 32}), ckpt.state_dict, 0.2)
    with pytest.raises(CheckpointError, match=r"bank has shape \(16, 32\), the model needs \(32, 32\)"):
        build_model(wider)
    fewer = Checkpoint(ckpt.model_config, {k: v for k, v in ckpt.state_dict.items() if k != "bank"}, 0.2)
    with pytest.raises(CheckpointError, match="1 missing"):
        build_model(fewer)


@pytest.mark.parametrize("content", [b"", b"garbage" * 100, None])
def test_eval_cli_exits_2_with_one_line(tmp_path: Path, tiny_data: Path, saved: tuple[Path, ProAD], content) -> None:
    path = tmp_path / "model.pt"
    if content is None:  # truncated real checkpoint
        data = saved[0].read_bytes()
        content = data[: len(data) - 100]
    path.write_bytes(content)
    proc = subprocess.run(
        [sys.executable, "-c", "from proad.cli import eval_main; raise SystemExit(eval_main())",
         "--data", str(tiny_data), "--checkpoint", str(path)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("proad-eval: error:") and "Traceback" not in proc.stderr


def test_threshold_and_config_survive_as_json_types(saved: tuple[Path, ProAD]) -> None:
    raw = torch.load(saved[0], weights_only=True)
    assert raw["format"] == "proad-checkpoint" and raw["version"] == 1
    assert isinstance(raw["model_config"], dict) and isinstance(raw["threshold"], float)
    assert np.isfinite(raw["threshold"])


def test_a_checkpoint_from_before_feature_pooling_keeps_running_as_trained(tmp_path: Path, saved) -> None:
    """New models average their features over 3x3 by default; a checkpoint written before the
    option existed was trained without it (and stretched its input), and is run that way."""
    path, _ = saved
    obj = torch.load(path, weights_only=False)
    for key in ("feature_pool", "resize"):
        del obj["model_config"][key]
    old = tmp_path / "old.pt"
    torch.save(obj, old)
    cfg = load_checkpoint(old).model_config
    assert cfg.feature_pool == 1 and cfg.resize == "stretch"
    assert ModelConfig().feature_pool == 3
