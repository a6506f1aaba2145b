"""Torch backend: runs the checkpoint itself (CPU or CUDA; on CUDA the fused attention kernel).

The only backend that needs torch; it loads the pure model module, never the training code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from proad.edge.backends.base import Backend, ModelInfo, ModelLoadError
from proad.edge.config import BackendConfig


class TorchBackend(Backend):
    def __init__(self, cfg: BackendConfig) -> None:
        try:
            import torch

            from proad.checkpoint import CheckpointError, load_model
        except ImportError as exc:
            raise ModelLoadError("the torch backend needs torch: pip install 'proad-edge[train]'") from exc
        path = Path(cfg.model)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if cfg.device == "cuda" and not torch.cuda.is_available():
            raise ModelLoadError("device 'cuda' asked for, but torch sees no CUDA device")
        self.device = "cuda" if cfg.device in ("cuda", "auto") and torch.cuda.is_available() else "cpu"
        try:
            model, ckpt = load_model(path)
        except CheckpointError as exc:
            raise ModelLoadError(str(exc)) from exc
        self.model = model.to(self.device).eval()
        self.torch = torch
        self.max_batch = cfg.max_batch
        self.info = ModelInfo(
            model_id=ckpt.sha256[:12],
            image_size=ckpt.model_config.image_size,
            threshold=ckpt.threshold,
            category_thresholds=ckpt.train_info.get("category_thresholds") or {},
            path=str(path),
            backend="torch",
            device=self.device,
            resize=ckpt.model_config.resize,
            preset=ckpt.train_info.get("preset") or "",
            category_tiles=ckpt.category_tiles,
        )

    def infer(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with self.torch.inference_mode():
            x = self.torch.from_numpy(images).to(self.device, non_blocking=True)
            amap, score = self.model(x)
            return amap.float().cpu().numpy(), score.float().cpu().numpy()
