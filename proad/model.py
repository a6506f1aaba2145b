"""Pro-AD: prototype-based reconstruction for unsupervised anomaly detection (DESIGN §2).

This file is the pure ``nn.Module`` (no training loop), so that export and the torch backend load
the model without the trainer. Read it top to bottom:

1. ``InputNorm`` turns what a camera gives (uint8, NHWC, BGR) into the encoder's input, so the
   exported graph needs no pre-processing beyond a resize.
2. The frozen ``Encoder`` gives multi-level features (stride 8 and 16 by default), optionally
   averaged over a small neighbourhood (``feature_pool``, PatchCore's local aggregation).
3. Each level is brought onto one token grid (16x16 at 256 px, 16x28 at a 256 x 448 input) and
   projected to D channels; their sum passes a noisy MLP bottleneck (dropout while training) so the
   decoder cannot learn identity.
4. The Dynamic Bidirectional Decoder keeps an expanded bank ``B`` of M learned prototypes. In layer
   l the prototypes first *aggregate* the tokens of the level that layer serves (cross-attention,
   prototypes as queries), which makes them image-adaptive; then the *Prototype-based Constraint*
   re-expresses each adapted prototype through the image-independent bank,
   ``C(P) = softmax(sim(P, B) / tau) B``, so what the tokens read stays inside the convex hull of
   learned normal prototypes; then the tokens are *reconstructed* by attending to ``C(P)`` only
   (no residual from the tokens themselves), so an anomaly is not copied through attention.
5. Layers are grouped over the levels; each group's mean output is mapped back to that level's
   encoder channels and resolution. ``1 - cos(f_enc, f_rec)`` per level, upsampled, averaged and
   smoothed is the anomaly map (those three linear steps run as two matrix products per level);
   the mean of its top 1 % is the image score. Both live inside
   ``forward`` so every exported backend returns ``(anomaly_map, score)``.
6. Optionally (``memory_size`` > 0, off by default) a memory of normal patches beside the
   reconstruction: each patch's distance to its nearest feature in a bank of training patches
   (PatchCore's reading of the same features) is fused into the map, both maps weighed by their
   spread on held-out normal images (:mod:`proad.memory` fills the bank; README, "A memory of normal
   patches"). It sees what a rebuild blurs: a texture's exact grain and a feature's length.

Every attention goes through :func:`proad.kernels.proto_attention`, the op the fused kernel and the
TensorRT plugin implement.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from proad.backbone import Encoder
from proad.config import ModelConfig
from proad.kernels import proto_attention


class InputNorm(nn.Module):
    """uint8 ``[B, H, W, 3]`` BGR (what OpenCV gives) -> normalised float ``[B, 3, H, W]`` RGB."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = image.permute(0, 3, 1, 2).flip(1).to(self.mean.dtype)  # NHWC BGR -> NCHW RGB, model dtype
        return (x - self.mean) / self.std


class BatchDropout(nn.Module):
    """Dropout whose mask is drawn for the whole *global* batch, of which this input is some rows.

    Training on several processes (:mod:`proad.distributed`), each holds rows ``offset ..
    offset + b`` of a batch of ``total``; ``nn.Dropout`` would draw a mask for ``b`` rows only, so
    rank 1 would not get the noise one process gives those rows. This module draws the mask for
    ``total`` rows from torch's default generator (for a contiguous input, the same draws
    ``nn.Dropout`` makes on the CPU, bit for bit: ``empty.bernoulli_(1 - p) / (1 - p)``) and keeps
    this input's rows. ``rows`` is set per step by :meth:`ProAD.batch_rows`; unset, the input is
    the whole batch. No parameters (a checkpoint does not see it); in eval mode it is the identity
    (the exported graph has no trace of it).
    """

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability must be in [0, 1], got {p}")
        self.p = p
        self.rows: tuple[int, int] | None = None  # (offset, total) of this input in the global batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0 or x.numel() == 0:
            return x
        offset, total = self.rows if self.rows is not None else (0, x.shape[0])
        if offset < 0 or offset + x.shape[0] > total:
            raise ValueError(f"rows {offset}..{offset + x.shape[0]} do not lie in a batch of {total}")
        if self.p == 1.0:
            return x * torch.zeros((), dtype=x.dtype, device=x.device)
        noise = torch.empty((total, *x.shape[1:]), dtype=x.dtype, device=x.device).bernoulli_(1.0 - self.p)
        noise.div_(1.0 - self.p)
        return x * noise[offset : offset + x.shape[0]]

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, out: int | None = None, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, out or dim)
        self.drop = BatchDropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(F.gelu(self.fc1(x))))


class CrossAttention(nn.Module):
    """Multi-head attention of ``x`` over a separate key/value set, through ``proto_attention``."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        return x.reshape(b, n, self.heads, d // self.heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        k, v = self.kv(context).chunk(2, dim=-1)
        o = proto_attention(self._split(self.q(x)), self._split(k), self._split(v), self.scale)
        b, h, n, d = o.shape
        return self.proj(o.transpose(1, 2).reshape(b, n, h * d))


def prototype_constraint(
    p: torch.Tensor, bank: torch.Tensor, tau: float, similarity: str = "cosine"
) -> torch.Tensor:
    """``C(P) = softmax(sim(P, B) / tau) B``: every row of the result is a convex combination of
    the bank's rows, so an adapted prototype cannot leave the hull of the learned normal ones.

    p: ``[B, M, D]``; bank: ``[M_b, D]``. Cosine similarity makes tau mean the same thing at any
    prototype norm; the dot product with tau = sqrt(D) is the form first written in DESIGN §2.
    """
    if similarity == "cosine":
        q, k = F.normalize(p, dim=-1), F.normalize(bank, dim=-1)
    else:
        q, k = p, bank
    out = proto_attention(q.unsqueeze(1), k[None, None], bank[None, None], 1.0 / tau)
    return out.squeeze(1)


class DecoderLayer(nn.Module):
    """One layer of the Dynamic Bidirectional Decoder: aggregate, constrain, reconstruct."""

    def __init__(self, cfg: ModelConfig, constrained: bool) -> None:
        super().__init__()
        d, hidden = cfg.dim, int(cfg.dim * cfg.mlp_ratio)
        self.cfg = cfg
        self.constrained = constrained
        # forward: prototypes gather the level's tokens
        self.agg_norm_p = nn.LayerNorm(d)
        self.agg_norm_t = nn.LayerNorm(d)
        self.agg_attn = CrossAttention(d, cfg.heads)
        self.agg_norm_mlp = nn.LayerNorm(d)
        self.agg_mlp = Mlp(d, hidden)
        # backward: tokens are rebuilt from the (constrained) prototypes only
        self.rec_norm_t = nn.LayerNorm(d)
        self.rec_norm_p = nn.LayerNorm(d)
        self.context = nn.Conv2d(d, d, 3, padding=1, groups=d) if cfg.context else None
        self.rec_attn = CrossAttention(d, cfg.heads)
        self.rec_norm_mlp = nn.LayerNorm(d)
        self.rec_mlp = Mlp(d, hidden)

    def forward(
        self, tokens: torch.Tensor, protos: torch.Tensor, level_tokens: torch.Tensor, bank: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (reconstructed tokens, adapted prototypes, constraint gap for the loss form)."""
        cfg = self.cfg
        protos = protos + self.agg_attn(self.agg_norm_p(protos), self.agg_norm_t(level_tokens))
        protos = protos + self.agg_mlp(self.agg_norm_mlp(protos))

        kv = protos
        gap = protos.new_zeros(())
        if self.constrained:
            projected = prototype_constraint(protos, bank, cfg.tau, cfg.constraint_similarity)
            if cfg.constraint == "project":
                kv = cfg.constraint_mix * projected + (1.0 - cfg.constraint_mix) * protos
            else:  # "loss": reconstruct from P, but pull P towards the bank's hull
                gap = (1.0 - F.cosine_similarity(protos, projected, dim=-1)).mean()

        q = self.rec_norm_t(tokens)
        if self.context is not None:
            b, _, d = q.shape
            rows, cols = cfg.grid_hw
            q = q + self.context(q.transpose(1, 2).reshape(b, d, rows, cols)).flatten(2).transpose(1, 2)
        x = self.rec_attn(q, self.rec_norm_p(kv))
        x = x + self.rec_mlp(self.rec_norm_mlp(x))
        return x, protos, gap


def local_average(f: torch.Tensor, k: int) -> torch.Tensor:
    """Each position of ``f [B, C, H, W]`` averaged over its centred ``k`` x ``k`` neighbourhood
    (edges over the part inside; PatchCore's local aggregation). ``k`` = 1 returns ``f``."""
    if k <= 1:
        return f
    return F.avg_pool2d(f, k, stride=1, padding=k // 2, count_include_pad=False)


def gaussian_kernel1d(sigma: float) -> torch.Tensor:
    """Normalised 1-d Gaussian, radius 4 sigma (the smoothing anomalib applies to its maps)."""
    radius = int(4.0 * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def upsample_blur_operator(n: int, size: int, kernel: torch.Tensor) -> torch.Tensor:
    """``[size, n]``: bilinear upsampling from ``n`` to ``size`` points (``align_corners=False``),
    then reflect padding and the 1-d smoothing ``kernel`` (a one-element kernel: none), as a matrix.

    Both steps are linear and separable, so a level's map ``m [h, w]``, upsampled to ``size`` x
    ``size`` and smoothed, is ``R @ m @ C.T`` with ``R`` of ``n = h`` and ``C`` of ``n = w``. Built
    by running those very steps on the ``n`` unit impulses, so it is their definition, not a copy."""
    impulses = torch.eye(n, dtype=torch.float32).view(n, 1, n, 1)
    up = F.interpolate(impulses, size=(size, 1), mode="bilinear", align_corners=False)
    k = kernel.float()
    if k.numel() > 1:
        pad = k.numel() // 2
        up = F.conv2d(F.pad(up, (0, 0, pad, pad), mode="reflect"), k.view(1, 1, -1, 1))
    return up.view(n, size).t().contiguous()


@dataclass
class DecoderOutput:
    """What the decoder gives: per-level reconstructions plus the terms the training loss needs."""

    reconstructions: list[torch.Tensor]
    tokens: torch.Tensor  # fused encoder tokens before the bottleneck, [B, N, D]
    constraint_gap: torch.Tensor  # mean gap between P and C(P) (loss form only, else 0)


class ProAD(nn.Module):
    """The whole model: ``forward(uint8 NHWC BGR) -> (anomaly_map [B, H, W], score [B])``."""

    def __init__(self, cfg: ModelConfig, encoder: Encoder | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder if encoder is not None else Encoder(cfg)
        pcfg = self.encoder.body.pretrained_cfg
        self.input_norm = InputNorm(tuple(pcfg["mean"]), tuple(pcfg["std"]))
        d, g = cfg.dim, cfg.grid_stride
        self.level_strides = self.encoder.strides
        self.level_channels = self.encoder.channels

        self.project = nn.ModuleList()
        self.heads = nn.ModuleList()
        for c, s in zip(self.level_channels, self.level_strides, strict=True):
            ratio = g // s if s < g else 1  # finer levels: space-to-depth onto the grid
            self.project.append(nn.Linear(c * ratio * ratio, d))
            self.heads.append(nn.Linear(d, c * ratio * ratio))
        self.bottleneck = Mlp(d, int(d * cfg.mlp_ratio * 2), drop=cfg.bottleneck_dropout)
        self.bottleneck_in_drop = BatchDropout(cfg.bottleneck_dropout)
        self.bank = nn.Parameter(torch.randn(cfg.prototypes, d) * 0.02)
        self.layers = nn.ModuleList(
            DecoderLayer(cfg, cfg.constraint != "none" and i >= cfg.constraint_from_layer) for i in range(cfg.layers)
        )
        # which layers serve which level: contiguous, as even as possible, finest level first
        self.groups = [list(map(int, part)) for part in np.array_split(np.arange(cfg.layers), len(self.level_strides))]
        self.register_buffer("blur", gaussian_kernel1d(cfg.map_sigma) if cfg.map_sigma > 0 else torch.ones(1))
        # The map tail as matrices, one pair per level (rows: level l's map is ceil(height / stride) high,
        # to the input's height; columns likewise): derived from the config, so not saved (``anomaly_map``).
        height, width = cfg.input_hw
        for level, stride in enumerate(self.level_strides):
            rows = upsample_blur_operator(math.ceil(height / stride), height, self.blur)
            cols = rows if width == height else upsample_blur_operator(math.ceil(width / stride), width, self.blur)
            self.register_buffer(f"map_rows{level}", rows, persistent=False)
            self.register_buffer(f"map_cols{level}", cols, persistent=False)
        # Standardised levels (``standardise_strides``): each channel's mean and spread over the training
        # pictures, fitted by training (:func:`proad.train.fit_standardisation`) and saved; (0, 1) until then.
        missing = sorted(set(cfg.standardise_strides) - set(self.level_strides))
        if missing:  # the config checks the built-in encoders; this, one loaded from a checkpoint file
            raise ValueError(
                f"standardise_strides {missing} are none of the encoder levels' strides {self.level_strides}"
            )
        self.standardised_levels = [i for i, s in enumerate(self.level_strides) if s in cfg.standardise_strides]
        for i in self.standardised_levels:
            self.register_buffer(f"feature_mean{i}", torch.zeros(1, self.level_channels[i], 1, 1))
            self.register_buffer(f"feature_spread{i}", torch.ones(1, self.level_channels[i], 1, 1))
        # The optional memory of normal patches (``memory_size`` > 0): its bank and the spreads that
        # weigh it against the reconstruction are filled by training (:mod:`proad.memory`) and saved.
        self.memory_levels: list[int] = []
        if cfg.memory_size:
            if cfg.memory_stride not in self.level_strides:
                raise ValueError(
                    f"memory_stride {cfg.memory_stride} is none of the encoder levels' strides {self.level_strides}"
                )
            self.memory_levels = [i for i, s in enumerate(self.level_strides) if s >= cfg.memory_stride]
            channels = sum(self.level_channels[i] for i in self.memory_levels)
            self.register_buffer("memory_bank", torch.zeros(cfg.memory_size, channels))
            # mean and spread of the reconstruction's map, then of the memory's, on held-out normal images
            self.register_buffer("memory_stats", torch.tensor([0.0, 1.0, 0.0, 1.0]))
            k = cfg.feature_pool
            for i in self.memory_levels:  # inside-only averages -> averages with the zero padding counted
                stride = self.level_strides[i]
                ones = torch.ones(1, 1, math.ceil(height / stride), math.ceil(width / stride))
                weight = F.avg_pool2d(ones, k, stride=1, padding=k // 2, count_include_pad=True)
                self.register_buffer(f"memory_border{i}", weight, persistent=False)

    # -- token grid --------------------------------------------------------------------------
    def _to_grid(self, f: torch.Tensor, stride: int) -> torch.Tensor:
        """A level's feature map onto the token grid, ``[B, N, C']``."""
        g = self.cfg.grid_stride
        if stride < g:
            f = F.pixel_unshuffle(f, g // stride)
        elif stride > g:
            f = F.interpolate(f, scale_factor=stride // g, mode="bilinear", align_corners=False)
        return f.flatten(2).transpose(1, 2)

    def _from_grid(self, t: torch.Tensor, stride: int, channels: int) -> torch.Tensor:
        """Decoder tokens back to a level's resolution and channels, ``[B, C, h, w]``."""
        g, (rows, cols) = self.cfg.grid_stride, self.cfg.grid_hw
        b = t.shape[0]
        f = t.transpose(1, 2).reshape(b, -1, rows, cols)
        if stride < g:
            f = F.pixel_shuffle(f, g // stride)
        elif stride > g:
            f = F.avg_pool2d(f, stride // g)
        return f

    @contextmanager
    def batch_rows(self, offset: int, total: int) -> Iterator[None]:
        """Inside: the batches given are rows ``offset ..`` of a global batch of ``total`` rows, so
        every :class:`BatchDropout` draws the global batch's noise and keeps these rows (training on
        several processes; one process is ``(0, batch)``, the default)."""
        drops = [m for m in self.modules() if isinstance(m, BatchDropout)]
        for m in drops:
            m.rows = (offset, total)
        try:
            yield
        finally:
            for m in drops:
                m.rows = None

    # -- stages ------------------------------------------------------------------------------
    def features(self, image: torch.Tensor) -> list[torch.Tensor]:
        """Frozen encoder features of a uint8 NHWC BGR batch, finest level first, the ``standardise_strides``
        levels standardised, each averaged over a ``feature_pool`` neighbourhood (what the decoder
        rebuilds and the map compares)."""
        levels = list(self.encoder(self.input_norm(image)))
        for i in self.standardised_levels:
            levels[i] = (levels[i] - getattr(self, f"feature_mean{i}")) / getattr(self, f"feature_spread{i}")
        return [local_average(f, self.cfg.feature_pool) for f in levels]

    def decode(self, feats: list[torch.Tensor]) -> DecoderOutput:
        """Reconstruct every level from the prototypes (training runs this on cached features)."""
        levels = zip(feats, self.level_strides, self.project, strict=True)
        dtype = self.bank.dtype  # cached fp16 features train an fp32 decoder; an fp16 export stays fp16
        level_tokens = [proj(self._to_grid(f.to(dtype), s)) for f, s, proj in levels]
        fused = torch.stack(level_tokens).sum(0)
        tokens = self.bottleneck(self.bottleneck_in_drop(fused))
        protos = self.bank.unsqueeze(0).expand(fused.shape[0], -1, -1)
        outputs: list[torch.Tensor] = []
        gaps: list[torch.Tensor] = []
        for level, layer_ids in enumerate(self.groups):
            for i in layer_ids:
                tokens, protos, gap = self.layers[i](tokens, protos, level_tokens[level], self.bank)
                outputs.append(tokens)
                gaps.append(gap)
        recs = []
        for level, layer_ids in enumerate(self.groups):
            mean = torch.stack([outputs[i] for i in layer_ids]).mean(0)
            t = self.heads[level](mean)
            recs.append(self._from_grid(t, self.level_strides[level], self.level_channels[level]))
        return DecoderOutput(recs, fused, torch.stack(gaps).mean())

    def anomaly_map(self, feats: list[torch.Tensor], recs: list[torch.Tensor]) -> torch.Tensor:
        """``1 - cos`` per level (optionally of ``map_pool``-averaged features), bilinear to the input
        size, mean over levels, Gaussian smoothing (DESIGN §2).

        The upsampling, the mean and the smoothing are linear and separable, so they run as two small
        matrix products per level (:func:`upsample_blur_operator`): the same map to float rounding
        (tests compare it with the three steps run one by one), at a tenth of their cost on a CPU,
        where the three steps on 256 x 256 took about a tenth of the whole model's time.

        Always computed in fp32, also in an fp16 model: the map's small differences are the signal.
        """
        k, m = self.cfg.map_pool, None
        for level, (f, r) in enumerate(zip(feats, recs, strict=True)):
            f, r = f.float(), r.float()
            f, r = local_average(f, k), local_average(r, k)  # each position stands for its neighbourhood
            d = 1.0 - F.cosine_similarity(f, r, dim=1)  # [B, h, w]
            rows, cols = getattr(self, f"map_rows{level}").float(), getattr(self, f"map_cols{level}").float()
            part = rows @ d @ cols.t()  # [H, h] @ [B, h, w] @ [w, W]
            m = part if m is None else m + part
        assert m is not None
        return m / len(feats)

    def anomaly_map_steps(self, feats: list[torch.Tensor], recs: list[torch.Tensor]) -> torch.Tensor:
        """The same map as :meth:`anomaly_map`, DESIGN's steps run one by one (bilinear upsampling of
        each level, their mean, the Gaussian with reflected edges): the reference the matrix form is
        tested against (tests, ``bench/map_tail.py``). The model itself never runs it."""
        size, k = self.cfg.input_hw, self.cfg.map_pool
        maps = []
        for f, r in zip(feats, recs, strict=True):
            f, r = local_average(f.float(), k), local_average(r.float(), k)
            d = 1.0 - F.cosine_similarity(f, r, dim=1).unsqueeze(1)
            maps.append(F.interpolate(d, size=size, mode="bilinear", align_corners=False))
        m = torch.stack(maps).mean(0)
        if self.cfg.map_sigma > 0:
            g = self.blur.float()
            pad = g.numel() // 2
            m = F.conv2d(F.conv2d(F.pad(m, (pad,) * 4, mode="reflect"), g.view(1, 1, 1, -1)), g.view(1, 1, -1, 1))
        return m.squeeze(1)

    def memory_features(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """The memory's patch features ``[B, C, h, w]`` on the ``memory_stride`` grid: every level at
        least that coarse, as the decoder sees it (``feature_pool``-averaged) but with the averaging's
        zero padding counted at the border (PatchCore's form: border patches shrink towards zero, so
        the crop's edge does not read as a rare patch), coarser levels upsampled bilinearly."""
        if not self.memory_levels:
            raise ValueError("this model has no memory of normal patches (memory_size is 0)")
        first = self.memory_levels[0]
        size = feats[first].shape[-2:]
        parts = []
        for i in self.memory_levels:
            f = feats[i].float() * getattr(self, f"memory_border{i}")
            if f.shape[-2:] != size:
                f = F.interpolate(f, size=size, mode="bilinear", align_corners=False)
            parts.append(f)
        return torch.cat(parts, 1)

    def memory_distance(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """L2 distance ``[B, h, w]`` of every memory patch to its nearest bank feature, in fp32:
        ``|q|^2 + min_b (|b|^2 - 2 q.b)``. The bank's rows scaled by -2 and extended by ``|b|^2``,
        the queries extended by a 1, make ``|b|^2 - 2 q.b`` one matrix product, read once by the
        ReduceMin; ``|q|^2`` is added to the minima (README, "The memory's search")."""
        e = self.memory_features(feats)
        b, _, h, w = e.shape
        q = e.flatten(2).transpose(1, 2)  # [B, hw, C]
        bank = self.memory_bank.float()
        keys = torch.cat([-2.0 * bank, (bank * bank).sum(1, keepdim=True)], 1)  # [K, C + 1]; runtimes fold it on load
        nearest = torch.amin(torch.cat([q, torch.ones_like(q[..., :1])], -1) @ keys.t(), dim=-1)
        return (nearest + (q * q).sum(-1)).clamp_min(0.0).sqrt().view(b, h, w)

    def memory_map(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """:meth:`memory_distance` through the map's tail (bilinear to the input, Gaussian)."""
        distance = self.memory_distance(feats)
        level = self.memory_levels[0]
        rows, cols = getattr(self, f"map_rows{level}").float(), getattr(self, f"map_cols{level}").float()
        return rows @ distance @ cols.t()

    def fuse(self, rec_map: torch.Tensor, mem_map: torch.Tensor) -> torch.Tensor:
        """The reconstruction's map and the memory's, each in units of its spread on held-out normal
        images, weighted 1 : ``memory_weight``, expressed back in the reconstruction's units (so a map
        still reads as a reconstruction error and the wire's uint8 scale still fits)."""
        rec_mean, rec_std, mem_mean, mem_std = self.memory_stats.float()
        w = self.cfg.memory_weight
        return (rec_map + w * (rec_mean + rec_std * (mem_map - mem_mean) / mem_std)) / (1.0 + w)

    def inspect(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """The anomaly map of encoder features: the reconstruction's, fused with the memory's when the
        model has one (what :meth:`forward` and the threshold calibration both read)."""
        amap = self.anomaly_map(feats, self.decode(feats).reconstructions)
        return self.fuse(amap, self.memory_map(feats)) if self.memory_levels else amap

    def score(self, amap: torch.Tensor) -> torch.Tensor:
        """Image score: mean of the top ``score_top_fraction`` of the map's values."""
        flat = amap.flatten(1)
        height, width = self.cfg.input_hw
        k = max(1, round(height * width * self.cfg.score_top_fraction))  # static for export
        return flat.topk(k, dim=1).values.mean(1)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 ``[B, H, W, 3]`` BGR -> (anomaly map ``[B, H, W]`` float32, score ``[B]``)."""
        amap = self.inspect(self.features(image))
        return amap, self.score(amap)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Decoder and prototypes only: the encoder's weights come from the backbone (DESIGN §4)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith(("encoder.", "input_norm.", "blur"))}
