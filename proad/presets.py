"""Named starting points for ``proad-train --preset``: ``fast``, ``accurate`` (issue 14) and ``constrained``.

A line picks one word instead of a dozen fields. A preset is only a set of :class:`ModelConfig`
and :class:`TrainConfig` values: what it sets travels in the checkpoint's model config like any
other field, so export, the TensorRT build and the daemon run the model the preset trained without
knowing presets exist. Its name is recorded too (checkpoint ``train_info``, ONNX metadata), so the
daemon's log and telemetry say which one a camera runs.

``accurate`` is ``fast`` on a bigger encoder, as issue 14 asks ("bigger input/backbone").
``constrained`` is DESIGN §2's own form, the expanded bank with the prototype constraint, kept one
flag away for a line that wants the constraint's guarantee; it was ``accurate`` until 2026-12-06,
when the real sets trained together with the generated ones showed it no more accurate than
``fast`` in one seed, and a second seed repeated it (README, "Which model `accurate` is").

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
            "fast's model and training on the bigger Lite2 encoder: Magnetic Tile image AUROC 0.92 and pixel "
            "AUROC 0.77 (fast: 0.90 / 0.72), 0.72-0.80x fast's frame rate, about the same training time "
            "(README, Presets)",
            model={"backbone": "tf_efficientnet_lite2"},
        ),
        Preset(
            "constrained",
            "DESIGN's expanded bank (M = 256) with the prototype constraint, 6,000 iterations of 8 images: no "
            "adapted prototype leaves the hull of the learned normal ones; about 0.6x fast's frame rate and 2.5x "
            "its training time; no more accurate than fast on the real + generated sets, two seeds (README, Presets)",
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
