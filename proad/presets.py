"""Named starting points for ``proad-train --preset``: ``fast`` and ``accurate`` (issue 14).

A line picks one word instead of a dozen fields. A preset is only a set of :class:`ModelConfig`
and :class:`TrainConfig` values: what it sets travels in the checkpoint's model config like any
other field, so export, the TensorRT build and the daemon run the model the preset trained without
knowing presets exist. Its name is recorded too (checkpoint ``train_info``, ONNX metadata), so the
daemon's log and telemetry say which one a camera runs.

How each preset was chosen, on which data, with every candidate measured, is in the README
("Presets"); change a value here only with a measurement there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from proad.config import ModelConfig, TrainConfig


@dataclass(frozen=True)
class Preset:
    """One named choice of model and training settings."""

    name: str
    summary: str
    model: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "fast",
            "the defaults: Lite0 at 256 px, 16x16 tokens, M = 6 image-adapted prototypes without the constraint, "
            "5,000 iterations of 8 images: Magnetic Tile image AUROC 0.90, about 12 minutes of training",
        ),
        Preset(
            "accurate",
            "DESIGN's expanded bank (M = 256) with the prototype constraint, 6,000 iterations of 8 images: "
            "Magnetic Tile image AUROC 0.93, 0.6x fast's frame rate, about 4.5x its training time (README, Presets)",
            model={"prototypes": 256, "constraint": "project"},
            train={"iterations": 6000, "batch_size": 8},
        ),
    )
}
DEFAULT_PRESET = "fast"


def preset_configs(
    name: str, model_overrides: dict[str, Any] | None = None, train_overrides: dict[str, Any] | None = None
) -> tuple[ModelConfig, TrainConfig]:
    """The preset's configs with explicit settings on top (what the user gives wins).

    Raises ``KeyError`` for an unknown preset and pydantic's ``ValidationError`` for a bad value."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r} (known: {', '.join(PRESETS)})")
    p = PRESETS[name]
    model = ModelConfig.model_validate({**p.model, **(model_overrides or {})})
    train = TrainConfig.model_validate({**p.train, **(train_overrides or {})})
    return model, train
