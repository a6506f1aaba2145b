"""Checkpoint format v1 (DESIGN §4): what a trained Pro-AD model is on disk.

::

    {"format": "proad-checkpoint", "version": 1,
     "model_config": {...},          # ModelConfig as JSON-able dict
     "state_dict": {...},            # decoder and prototypes only
     "threshold": float,             # OK/NG cut on the image score
     "normalisation": {...},         # what the model expects as input, and normal-score statistics
     "train_info": {...}}            # data, iterations, per-category thresholds, timings

The encoder's weights are not stored: they come from the backbone (the packaged Lite0 file or the
user's checkpoint named in the config), which keeps a checkpoint around 3 MB.
Loading checks every field and raises :class:`CheckpointError` with one line saying exactly what is
wrong (not ours, another version, truncated, incompatible weights), so CLIs can exit 2 without a
traceback. Files are written to a temporary name and renamed, so a crash never leaves half a file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from proad.artifacts import file_sha256
from proad.config import ModelConfig, format_validation_error
from proad.data.tiling import NO_TILING, Grid

FORMAT = "proad-checkpoint"
VERSION = 1
#: Model options added after checkpoints were first written, with the value those checkpoints were
#: trained under. A stored config is complete, so a missing key means the option did not exist
#: yet; the current default (``feature_pool`` 3) would run an old model with pooling it never saw.
LEGACY_MODEL_DEFAULTS: dict[str, object] = {"feature_pool": 1, "resize": "stretch", "tile_max_shrink": None}


class CheckpointError(ValueError):
    """A file that is not a usable Pro-AD checkpoint; the message says why in one line."""


@dataclass
class Checkpoint:
    """A loaded (or to-be-saved) checkpoint."""

    model_config: ModelConfig
    state_dict: dict[str, torch.Tensor]
    threshold: float
    normalisation: dict[str, Any] = field(default_factory=dict)
    train_info: dict[str, Any] = field(default_factory=dict)
    sha256: str = ""

    @property
    def category_tiles(self) -> dict[str, Grid]:
        """The tiled categories' (rows, cols) as they were trained (:mod:`proad.data.tiling`); every
        other category, and every category of a model from before tiling, is not tiled."""
        grids = ((name, (int(g[0]), int(g[1]))) for name, g in self.train_info.get("category_tiles", {}).items())
        return {name: grid for name, grid in grids if grid != NO_TILING}

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "model_config": self.model_config.model_dump(mode="json"),
            "state_dict": self.state_dict,
            "threshold": float(self.threshold),
            "normalisation": self.normalisation,
            "train_info": self.train_info,
        }


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` through a temporary file in the same folder, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_checkpoint(ckpt: Checkpoint, path: str | Path) -> None:
    atomic_save(ckpt.to_dict(), path)


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read and validate a v1 checkpoint; raise :class:`CheckpointError` with the reason."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file, not a checkpoint")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for foreign or truncated files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path}: not a readable Pro-AD checkpoint (truncated or another kind of file): {reason[:200]}"
        ) from exc
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        found = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"{path}: not a Pro-AD checkpoint (format {found!r}, expected {FORMAT!r})")
    if obj.get("version") != VERSION:
        raise CheckpointError(
            f"{path}: checkpoint version {obj.get('version')!r} is not supported (this build reads version {VERSION})"
        )
    for key in ("model_config", "state_dict", "threshold"):
        if key not in obj:
            raise CheckpointError(f"{path}: checkpoint lacks {key!r}")
    stored = obj["model_config"]
    if isinstance(stored, dict):
        stored = {**LEGACY_MODEL_DEFAULTS, **stored}
    try:
        cfg = ModelConfig.model_validate(stored)
    except ValidationError as exc:
        raise CheckpointError(f"{path}: invalid model_config: {format_validation_error(exc)}") from exc
    state = obj["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: state_dict is not a mapping of tensors")
    try:
        threshold = float(obj["threshold"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: threshold {obj['threshold']!r} is not a number") from exc
    return Checkpoint(
        model_config=cfg,
        state_dict=state,
        threshold=threshold,
        normalisation=dict(obj.get("normalisation") or {}),
        train_info=dict(obj.get("train_info") or {}),
        sha256=file_sha256(path),
    )


def build_model(ckpt: Checkpoint) -> torch.nn.Module:
    """A ``ProAD`` in eval mode with the checkpoint's weights; shapes are checked tensor by tensor."""
    from proad.backbone import BackboneError
    from proad.model import ProAD

    try:
        model = ProAD(ckpt.model_config)
    except BackboneError as exc:
        raise CheckpointError(f"cannot build the encoder this checkpoint needs: {exc}") from exc
    expected = model.trainable_state_dict()
    missing = sorted(set(expected) - set(ckpt.state_dict))
    unexpected = sorted(set(ckpt.state_dict) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint weights do not fit the model: {len(missing)} missing (e.g. {missing[:2]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:2]})"
        )
    for k, v in expected.items():
        if ckpt.state_dict[k].shape != v.shape:
            raise CheckpointError(
                f"checkpoint tensor {k} has shape {tuple(ckpt.state_dict[k].shape)}, the model needs {tuple(v.shape)}"
            )
    if ckpt.model_config.memory_size and not ckpt.state_dict["memory_bank"].any():
        raise CheckpointError("checkpoint has a memory of normal patches (memory_size > 0) that was never filled: "
                              "train it with proad-train, which fills the bank after the decoder")
    model.load_state_dict(ckpt.state_dict, strict=False)
    return model.eval()


def load_model(path: str | Path) -> tuple[torch.nn.Module, Checkpoint]:
    """Load a checkpoint file and build its model."""
    ckpt = load_checkpoint(path)
    return build_model(ckpt), ckpt
