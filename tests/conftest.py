"""Shared fixtures: a small generated dataset and a small, fast model config."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
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

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two categories (a texture and the board), 12 train, 3 good and 2 per defect in test."""
    root = tmp_path_factory.mktemp("synth")
    write_dataset(root, ("marble", "board"), train=12, test_good=3, test_per_defect=2, progress=False)
    return root


@pytest.fixture(scope="session")
def small_cfg() -> ModelConfig:
    """The real encoder with a narrow decoder, so tests that train stay in seconds."""
    return ModelConfig(dim=32, heads=2, layers=2, prototypes=16, mlp_ratio=1.0)
