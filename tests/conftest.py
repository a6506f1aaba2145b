"""Shared fixtures: a small generated dataset and a small, fast model config."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

# Threads that wait at a barrier sleep instead of spinning: on a machine whose cores another process
# keeps busy, spinning threads burn the time slice their partner needs (the training tests ran 4x
# slower there, 2.7x with this; the same speed on an idle machine). Read when torch loads OpenMP.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch

from proad.config import ModelConfig
from proad.data.synth import write_dataset

# Without a GPU, Triton kernels run in Triton's interpreter on CPU tensors (set before any kernel
# module is imported: @triton.jit reads it when the kernel is defined; nothing above imports one).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

REPO = Path(__file__).resolve().parent.parent
BOTTLE = REPO.parent / "shared" / "data" / "mvtec_bottle_256"
MAGNETIC_TILE = REPO.parent / "shared" / "data" / "magnetic_tile"

torch.set_num_threads(2)


def interrupt_training_at(monkeypatch: pytest.MonkeyPatch, call: int):  # -> proad.loss.proad_loss
    """Make ``proad.train``'s loss raise ``KeyboardInterrupt`` at its ``call``-th call (Ctrl-C in the
    middle of a run); returns the real loss, to put back."""
    import proad.train as train_module

    real_loss, calls = train_module.proad_loss, {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            raise KeyboardInterrupt
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(train_module, "proad_loss", interrupted)
    return real_loss


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two categories (a texture and the board), 12 train, 3 good and 2 per defect in test."""
    root = tmp_path_factory.mktemp("synth")
    write_dataset(root, ("marble", "board"), train=12, test_good=3, test_per_defect=2, progress=False)
    return root


@pytest.fixture(scope="session")
def small_cfg() -> ModelConfig:
    """The real encoder with a narrow decoder, so tests that train stay in seconds. With the prototype
    constraint (the ``constrained`` preset's form), so the export, int8 and engine tests carry its
    attention too; the default form (no constraint) is the board model's below."""
    return ModelConfig(dim=32, heads=2, layers=2, prototypes=16, mlp_ratio=1.0, constraint="project")


@pytest.fixture(scope="session")
def small_export(tmp_path_factory: pytest.TempPathFactory, small_cfg: ModelConfig) -> tuple[Path, Path, dict]:
    """An untrained small model's checkpoint, and its plain fp32 graph written by ``proad-export onnx``
    (exit 0, with its ``--report``), shared by the export and int8 tests: each export takes ~15 s."""
    from proad.checkpoint import Checkpoint, save_checkpoint
    from proad.export.cli import main as export_main
    from proad.model import ProAD

    torch.manual_seed(3)
    model = ProAD(small_cfg)
    with torch.no_grad():
        model.bank.mul_(20.0)  # a bank away from its init, so the constraint does real work
    root = tmp_path_factory.mktemp("export")
    ckpt, out, report = root / "model.pt", root / "plain.onnx", root / "report.json"
    save_checkpoint(
        Checkpoint(small_cfg, model.trainable_state_dict(), 0.3, train_info={"category_thresholds": {"board": 0.31}}),
        ckpt,
    )
    assert export_main(["onnx", "--checkpoint", str(ckpt), "--out", str(out), "--report", str(report)]) == 0
    return ckpt, out, json.loads(report.read_text())


@pytest.fixture(scope="session")
def wide_export(tmp_path_factory: pytest.TempPathFactory, small_cfg: ModelConfig) -> tuple[Path, Path]:
    """An untrained small model with a rectangular input (128 high, 224 wide: a 7:4 camera) whose
    maps have structure, as checkpoint and the plain graph ``export_onnx`` wrote after its own check
    against torch."""
    from proad.checkpoint import Checkpoint, save_checkpoint
    from proad.export.onnx_export import export_onnx
    from proad.model import ProAD

    cfg = ModelConfig.model_validate({**small_cfg.model_dump(), "image_size": [128, 224]})
    torch.manual_seed(4)
    model = ProAD(cfg)
    root = tmp_path_factory.mktemp("wide")
    save_checkpoint(Checkpoint(cfg, model.trainable_state_dict(), 0.3), root / "wide.pt")
    report = export_onnx(root / "wide.pt", root / "wide.onnx", verify_count=2)
    assert report.max_abs_error_map <= 1e-4 and report.max_abs_error_score <= 1e-4
    return root / "wide.pt", root / "wide.onnx"


@pytest.fixture(scope="session")
def board_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A short-trained model of the generated board (about 30 s), as checkpoint and plain ONNX.

    Good enough to tell the synthetic camera's defects from normal boards; the edge tests use it.
    Without the default 3x3 feature pooling: pooled, 200 iterations leave the board far behind
    (image AUROC 0.74 against 0.94; at 1,000 both pass 0.98, README "Real images"), and the edge
    tests are about the daemon, not about the default's accuracy. Otherwise the default's form
    (image-adapted prototypes, no constraint), so its graph runs through every edge test.
    """
    from proad.config import TrainConfig
    from proad.export.onnx_export import export_onnx
    from proad.train import train

    root = tmp_path_factory.mktemp("board")
    write_dataset(root / "data", ("board",), train=60, test_good=2, test_per_defect=1, progress=False)
    cfg = ModelConfig(layers=2, prototypes=64, feature_pool=1)
    ckpt = root / "board.pt"
    train([root / "data"], ckpt, cfg, TrainConfig(iterations=200, batch_size=8, warmup=20, holdout_fraction=0.25),
          progress=False, log=lambda s: None)
    onnx_path = root / "board.onnx"
    export_onnx(ckpt, onnx_path, verify_count=1)
    return ckpt, onnx_path


@pytest.fixture(scope="module")
def backend(board_model: tuple[Path, Path]):  # -> proad.edge.backends.Backend
    """The board model on ONNX Runtime, as the daemon runs it."""
    from proad.edge.backends import load_backend
    from proad.edge.config import BackendConfig

    return load_backend(BackendConfig(model=str(board_model[1]), threads=2))
