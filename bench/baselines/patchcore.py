"""PatchCore (Roth et al., CVPR 2022), the baseline Pro-AD has to beat, on the *same* frozen encoder.

Faithful to the paper and to anomalib's implementation, on Pro-AD's encoder, levels and input size
so that only the method differs:

1. **Locally aware patch features**: each level's feature map is averaged over a 3x3 neighbourhood
   (stride 1), the coarser level is upsampled bilinearly to the finest level's grid, and the levels
   are concatenated: one feature per patch of the finest grid (stride 8: 32x32 patches at 256x256).
2. **Memory bank with greedy coreset subsampling**: every patch feature of the training images;
   then the k-center greedy coreset (``coreset_ratio`` of them, 10 % as anomalib's default), the
   distances for the greedy choice computed after a random projection to 128 dimensions, as the
   paper does (Johnson–Lindenstrauss). Each greedy step reads every candidate, so on a large
   training set (762 Magnetic Tile images: 780,000 patches) the exact pass runs for tens of minutes.
   So the greedy choice runs over a uniform random subsample of at most ``max_candidates`` patches
   (100,000 by default; all of them below that): at a 1 % ratio it still picks 7,800 centres from
   100,000 candidates in about a minute. The bank holds ``coreset_ratio`` of *all* patches, at most
   the candidates (at 10 % of 780,000 that is the 100,000 candidates themselves: a random subsample,
   not a greedy one; the report says which ratio and candidate count ran).
3. **Nearest-neighbour scoring**: a patch's score is the distance to its nearest bank feature; the
   image score is the largest patch score, reweighted by how isolated that patch's nearest bank
   feature is among its ``num_neighbors`` = 9 neighbours (the paper's Eq. 7, as in anomalib).
4. **The same map smoothing** as Pro-AD and anomalib: bilinear upsampling to the image size, then a
   Gaussian blur with sigma 4.

``forward(uint8 NHWC BGR) -> (anomaly map, score)`` is Pro-AD's interface, so
``proad.evaluate`` measures both exactly alike. One PatchCore per category: its memory bank is of
one kind of normal; that is what the method needs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from proad.backbone import Encoder
from proad.config import ModelConfig
from proad.memory import MAX_CANDIDATES, coreset
from proad.model import InputNorm, gaussian_kernel1d


class PatchCore(nn.Module):
    max_candidates_default = MAX_CANDIDATES

    def __init__(
        self,
        cfg: ModelConfig,
        coreset_ratio: float = 0.1,
        num_neighbors: int = 9,
        projection_dim: int = 128,
        max_candidates: int = max_candidates_default,
        sigma: float = 4.0,
        encoder: Encoder | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder if encoder is not None else Encoder(cfg)
        pcfg = self.encoder.body.pretrained_cfg
        self.input_norm = InputNorm(tuple(pcfg["mean"]), tuple(pcfg["std"]))
        self.coreset_ratio, self.num_neighbors, self.projection_dim = coreset_ratio, num_neighbors, projection_dim
        self.max_candidates = max_candidates
        self.seed = seed
        self.register_buffer("blur", gaussian_kernel1d(sigma))
        self.register_buffer("bank", torch.empty(0, sum(self.encoder.channels)))

    # -- features ------------------------------------------------------------------------------
    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Locally aware patch features ``[B, C, h, w]`` on the finest level's grid."""
        feats = self.encoder(self.input_norm(images))
        size = feats[0].shape[-2:]
        pooled = [F.avg_pool2d(f.float(), 3, stride=1, padding=1) for f in feats]
        pooled = [p if p.shape[-2:] == size else F.interpolate(p, size=size, mode="bilinear", align_corners=False)
                  for p in pooled]  # fmt: skip
        return torch.cat(pooled, dim=1)

    @torch.no_grad()
    def fit(self, images: Sequence[np.ndarray], batch: int = 16) -> None:
        """Memory bank of the training images' patch features, subsampled by the greedy coreset."""
        chunks = []
        for start in range(0, len(images), batch):
            x = torch.from_numpy(np.stack(images[start : start + batch]))
            e = self.embed(x)
            chunks.append(e.permute(0, 2, 3, 1).reshape(-1, e.shape[1]))
        features = torch.cat(chunks)
        keep = max(1, int(len(features) * self.coreset_ratio))
        self.bank = coreset(features, keep, self.max_candidates, self.projection_dim, self.seed)

    # -- scoring -------------------------------------------------------------------------------
    def _nearest(self, queries: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Distances and indices of the ``k`` nearest bank features, in chunks to bound memory."""
        dists, idx = [], []
        for q in queries.split(4096):
            d = torch.cdist(q, self.bank)
            v, i = d.topk(k, dim=1, largest=False)
            dists.append(v)
            idx.append(i)
        return torch.cat(dists), torch.cat(idx)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.bank.numel() == 0:
            raise RuntimeError("PatchCore is not fitted: call fit() with normal images first")
        e = self.embed(images)
        b, c, h, w = e.shape
        flat = e.permute(0, 2, 3, 1).reshape(-1, c)
        dist, nn_idx = self._nearest(flat)
        patch = dist[:, 0].view(b, h * w)
        nn_idx = nn_idx[:, 0].view(b, h * w)
        # image score: the most anomalous patch, reweighted by the density around its nearest bank feature
        top = patch.argmax(dim=1)
        scores = []
        for i in range(b):
            star = patch[i, top[i]]
            test_feature = e[i].permute(1, 2, 0).reshape(-1, c)[top[i]]
            anchor = self.bank[nn_idx[i, top[i]]]
            k = min(self.num_neighbors, len(self.bank))
            _, support = torch.cdist(anchor[None], self.bank).topk(k, largest=False)
            d_support = torch.cdist(test_feature[None], self.bank[support[0]])[0]
            weight = 1.0 - torch.softmax(d_support, dim=0)[0]  # the nearest one's share of exp-distances
            scores.append(weight * star)
        amap = F.interpolate(patch.view(b, 1, h, w), size=self.cfg.input_hw, mode="bilinear",
                             align_corners=False)  # fmt: skip
        k1 = self.blur
        pad = k1.numel() // 2
        amap = F.pad(amap, (pad, pad, pad, pad), mode="reflect")
        amap = F.conv2d(F.conv2d(amap, k1.view(1, 1, 1, -1)), k1.view(1, 1, -1, 1))
        return amap.squeeze(1), torch.stack(scores)
