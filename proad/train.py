"""Training of one multi-class Pro-AD model, with threshold calibration (DESIGN §2, Training).

The encoder is frozen, so its features are computed once per image and cached (fp16, in memory);
every iteration then runs only the decoder. One model learns every category given (multi-class):
batches are drawn from all of them together.

Each iteration's batch and dropout noise are a pure function of ``(seed, step)``, so a run resumed
from its periodic snapshot (``<out>.resume``) continues exactly where it stopped.

Under ``torchrun`` (``torchrun --standalone --nproc-per-node R -m proad.cli train ...``) the same
training runs on R processes with DistributedDataParallel and gives the same model as one process,
for the same global batch and seed, within float rounding (:mod:`proad.distributed`): each rank
encodes a contiguous share of every category's images and all ranks then hold the whole cache; each
takes its rows of the same global batch, draws the global batch's dropout noise and keeps its rows
(:class:`proad.model.BatchDropout`), and takes the hard-mining quantile over the global batch; DDP
averages the gradients. Rank 0 alone logs, shows progress and writes the snapshots and the
checkpoint; a snapshot resumes on any number of processes. The rounding is that of a different
thread count (the batch's gradient is two half sums, averaged): one step agrees to about 1e-6, but
over many steps the hard-mining weight (a step at the quantile) and Adam's per-weight normalisation
can carry it to about a learning-rate step in a few weights, as changing ``threads`` does.

After training, the OK/NG threshold is calibrated on normal images held out of training: a high
quantile of their scores, per category and over all. Labelled defects are not needed, and the
threshold is never the minimum score of anything (the failure anomalib is known for when no
defects are given).
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from pydantic import ValidationError
from torch import nn

from proad import distributed
from proad.checkpoint import Checkpoint, CheckpointError, atomic_save, save_checkpoint
from proad.config import ModelConfig, TrainConfig
from proad.data.folder import DatasetError, MVTecFolder, list_categories
from proad.data.geometry import Size, size_text
from proad.data.tiling import NO_TILING, Grid, auto_grid, tiles_of
from proad.distributed import DistributedError, World
from proad.loss import Gather, proad_loss
from proad.memory import MAX_CANDIDATES, fill_memory, fit_fusion
from proad.model import ProAD

RESUME_FORMAT = "proad-train-state"


@dataclass
class Split:
    """The training images of one category, split into fitted and held-out (for the threshold)."""

    folder: MVTecFolder
    fit: list[int]
    holdout: list[int]


def open_categories(
    roots: Sequence[str | Path],
    categories: Sequence[str] | None,
    image_size: Size,
    resize: str = "stretch",
    grids: Mapping[str, Grid] | None = None,
) -> list[MVTecFolder]:
    """Every requested category across the dataset roots (names must be unique across roots).

    ``grids``: the tiled categories' (rows, cols), as :attr:`Checkpoint.category_tiles` gives them;
    categories not in it are not tiled."""
    found: dict[str, MVTecFolder] = {}
    for root in roots:
        for name in list_categories(root):
            if categories and name not in categories:
                continue
            if name in found:
                raise DatasetError(f"category {name!r} exists in both {found[name].root} and {root}")
            found[name] = MVTecFolder(root, name, image_size, resize, (grids or {}).get(name, NO_TILING))
    if categories:
        missing = [c for c in categories if c not in found]
        if missing:
            raise DatasetError(f"categories not found under {', '.join(map(str, roots))}: {', '.join(missing)}")
    if not found:
        raise DatasetError(f"no categories found under {', '.join(map(str, roots))}")
    return list(found.values())


def choose_grids(folders: Sequence[MVTecFolder], cfg: ModelConfig) -> dict[str, Grid]:
    """Each category's tiling from the native size of its training pictures
    (:func:`proad.data.tiling.auto_grid`), set on its folder and returned as the checkpoint keeps it."""
    for folder in folders:
        height, width = folder.native_size()
        folder.grid = auto_grid(height, width, cfg.image_size, cfg.tile_max_shrink, cfg.tile_max_grid)
    return {f.category: f.grid for f in folders}


def split_holdout(folder: MVTecFolder, fraction: float, seed: int) -> Split:
    n = len(folder.train)
    order = np.random.default_rng([seed, n]).permutation(n).tolist()
    k = max(1, round(fraction * n)) if fraction > 0 and n >= 4 else 0
    return Split(folder, sorted(order[k:]), sorted(order[:k]))


@torch.no_grad()
def encode(
    model: ProAD, images: Sequence[np.ndarray], batch: int = 32, desc: str = "encode", progress: bool = True
) -> list[torch.Tensor]:
    """Encoder features of uint8 BGR images, one fp16 tensor per level (with no rows for no images)."""
    from tqdm import tqdm

    if not len(images):  # a rank's share of a tiny category can be empty
        height, width = model.cfg.input_hw
        return [f.half() for f in model.features(torch.zeros((0, height, width, 3), dtype=torch.uint8))]
    chunks: list[list[torch.Tensor]] = []
    for start in tqdm(range(0, len(images), batch), desc=desc, unit="batch", disable=not progress, leave=False):
        x = torch.from_numpy(np.stack(images[start : start + batch]))
        chunks.append([f.half() for f in model.features(x)])
    return [torch.cat(level) for level in zip(*chunks, strict=True)]


def shifted_copies(images: Sequence[np.ndarray], copies: int, pixels: int, seed: int) -> list[np.ndarray]:
    """``copies`` translations of every image by up to ``pixels`` in x and y (edges mirrored).

    A part on a line never sits twice at the same place; a few hundred training images cover the
    jitter of its placement only sparsely, so a rare placement can read as an anomaly. Translated copies
    fill that in at the cost of encoding them once.
    """
    rng = np.random.default_rng([seed, 0x5A1F7])
    out = []
    for img in images:
        for _ in range(copies):
            dx, dy = (float(v) for v in rng.integers(-pixels, pixels + 1, 2))
            m = np.float32([[1, 0, dx], [0, 1, dy]])
            out.append(cv2.warpAffine(img, m, (img.shape[1], img.shape[0]), borderMode=cv2.BORDER_REFLECT_101))
    return out


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to 1 % of the peak."""
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.iterations - cfg.warmup)
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


@torch.no_grad()
def score_cached(model: ProAD, feats: list[torch.Tensor], batch: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """(maps, scores) of cached features with the model in eval mode."""
    model.eval()
    maps, scores = [], []
    for start in range(0, feats[0].shape[0], batch):
        f = [lvl[start : start + batch].float() for lvl in feats]
        amap = model.inspect(f)
        maps.append(amap.numpy())
        scores.append(model.score(amap).numpy())
    return np.concatenate(maps), np.concatenate(scores)


def normal_threshold(scores: np.ndarray, target_false_alarm: float) -> float:
    """The threshold that rejects about ``target_false_alarm`` of normal parts, from normal scores.

    The larger of the empirical ``1 - target`` quantile and the Gaussian *prediction* bound for the
    next normal part, ``mean + t * s * sqrt(1 + 1/n)`` (``s`` the sample standard deviation of the
    ``n`` scores, ``t`` Student's ``1 - target`` quantile with ``n - 1`` degrees of freedom: 2.82 at
    1 % for ten images, 2.33 for many). With ten held-out images the quantile is about their maximum
    and says nothing of a tail a line meets thousands of times a day: the bound extrapolates it, and
    because the mean and spread are themselves estimated from those ten, it is wider than the bound
    with them taken as known (``mean + z * std``, the rule until 2026-12-05, which rejected about 5 %
    of normal parts at a 1 % target from ten images; README, "Thresholds from few held-out
    images"). It is never the minimum score of anything.
    """
    from scipy.stats import t as student_t

    n = len(scores)
    bound = float(scores.mean())
    if n >= 2:
        k = float(student_t.ppf(1.0 - target_false_alarm, n - 1)) * math.sqrt(1.0 + 1.0 / n)
        bound += k * float(scores.std(ddof=1))
    return float(max(np.quantile(scores, 1.0 - target_false_alarm), bound))


def calibrate(scores_by_category: dict[str, np.ndarray], target_false_alarm: float) -> tuple[float, dict[str, float]]:
    """Global and per-category thresholds from held-out normal scores (:func:`normal_threshold`).

    In a multi-class model one category's normal scores can sit above another's defects, so the
    daemon uses the threshold of each camera's category; the global one is for cameras without one."""
    per = {c: normal_threshold(s, target_false_alarm) for c, s in scores_by_category.items() if len(s)}
    all_scores = np.concatenate([s for s in scores_by_category.values() if len(s)])
    return normal_threshold(all_scores, target_false_alarm), per


#: fitted pictures per category whose encoder features give the standardised levels' statistics
STANDARDISE_PICTURES = 32


@torch.no_grad()
def fit_standardisation(model: ProAD, splits: Sequence[Split], progress: bool = True) -> dict[str, Any] | None:
    """Each ``standardise_strides`` level's channel mean and spread (over pictures and positions) from
    up to :data:`STANDARDISE_PICTURES` fitted pictures of every category (tiled as trained), set into
    the model before its training features are cached, and a summary for ``train_info``; ``None``
    when the model standardises no level. Categories weigh alike (as many pictures each), so in a
    multi-class model a channel's spread includes the differences between categories (README:
    "Standardised feature channels"). Every rank computes the same (the same pictures)."""
    from tqdm import tqdm

    levels = model.standardised_levels
    if not levels:
        return None
    sums: dict[int, torch.Tensor] = {}
    squares: dict[int, torch.Tensor] = {}
    count = dict.fromkeys(levels, 0)
    pictures = 0
    for s in tqdm(splits, desc="standardise", unit="cat", disable=not progress):
        imgs = [s.folder.image(s.folder.train[i]) for i in s.fit[:STANDARDISE_PICTURES]]
        pictures += len(imgs)
        tiles = tiles_of(imgs, s.folder.grid)
        for start in range(0, len(tiles), 16):
            feats = model.encoder(model.input_norm(torch.from_numpy(np.stack(tiles[start : start + 16]))))
            for i in levels:
                f = feats[i].double()
                sums[i] = sums.get(i, 0) + f.sum((0, 2, 3))
                squares[i] = squares.get(i, 0) + (f * f).sum((0, 2, 3))
                count[i] += f.numel() // f.shape[1]
    for i in levels:
        mean = sums[i] / count[i]
        spread = (squares[i] / count[i] - mean * mean).clamp_min(0).sqrt() + 1e-6
        getattr(model, f"feature_mean{i}").copy_(mean.view(1, -1, 1, 1))
        getattr(model, f"feature_spread{i}").copy_(spread.view(1, -1, 1, 1))
    return {"strides": [model.level_strides[i] for i in levels], "pictures": pictures}


def encode_splits(
    model: ProAD, splits: Sequence[Split], train_cfg: TrainConfig, world: World | None = None, progress: bool = True
) -> tuple[list[torch.Tensor], dict[str, list[torch.Tensor]]]:
    """Every category's training pictures through the frozen encoder, once: the fitted pictures' features
    (with their shifted copies, ``train_cfg.shift_copies``) concatenated over categories, one tensor per
    level, and each category's held-out pictures' features. A tiled category's rows are its tiles.

    Under torchrun each rank encodes its share of every category and all then hold every row, in order."""
    from tqdm import tqdm

    world = world or World()
    fit_feats: list[list[torch.Tensor]] = []
    holdout_feats: dict[str, list[torch.Tensor]] = {}
    for s in tqdm(splits, desc="encode categories", unit="cat", disable=not progress):
        name, grid = s.folder.category, s.folder.grid
        imgs = [s.folder.image(s.folder.train[i]) for i in s.fit + s.holdout]
        if train_cfg.shift_copies:
            imgs += shifted_copies(imgs[: len(s.fit)], train_cfg.shift_copies, train_cfg.shift_pixels, train_cfg.seed)
        tiles = tiles_of(imgs, grid)
        feats = [world.all_gather_rows(f) for f in encode(model, tiles[world.shard(len(tiles))], desc=name,
                                                          progress=progress)]  # fmt: skip
        # rows: fitted images' tiles, held-out images' tiles, then the fitted images' shifted copies'
        n = grid[0] * grid[1]
        fit_end, holdout_end = len(s.fit) * n, (len(s.fit) + len(s.holdout)) * n
        fit_feats.append([torch.cat([f[:fit_end], f[holdout_end:]]) for f in feats])
        holdout_feats[name] = [f[fit_end:holdout_end] for f in feats]
    return [torch.cat(level) for level in zip(*fit_feats, strict=True)], holdout_feats


@dataclass
class NormalReading:
    """What a trained decoder's maps read on normal pictures: the thresholds, and the memory filled."""

    threshold: float
    category_thresholds: dict[str, float]
    source: str  # where the thresholds come from, in words
    memory: dict[str, Any] | None  # the memory's fill (train_info["memory"]); None without one
    normal_scores: np.ndarray  # the held-out pictures' scores, every category

    def normalisation(self) -> dict[str, float | None]:
        """The normal-score statistics a checkpoint's ``normalisation`` carries."""
        n = self.normal_scores
        return {"normal_score_mean": float(n.mean()) if n.size else None,
                "normal_score_std": float(n.std()) if n.size else None}  # fmt: skip


def read_normal(
    model: ProAD,
    cache: list[torch.Tensor],
    holdout_feats: Mapping[str, list[torch.Tensor]],
    grids: Mapping[str, Grid],
    train_cfg: TrainConfig,
    log: Callable[[str], None] = print,
) -> NormalReading:
    """After the decoder: fill the memory of normal patches (if the model has one) from the fitted
    pictures ``cache`` and weigh it on the held-out ones, then calibrate the thresholds on the held-out
    pictures' scores (:func:`calibrate`; a tiled picture scores its largest tile's score, as in
    evaluation and on the line). Without held-out pictures both fall back to the fitted ones, said so.
    A refit (:mod:`proad.refit`, ``proad-train --from``) runs this same step on a trained decoder."""
    memory: dict[str, Any] | None = None
    if model.memory_levels:  # the memory of normal patches: its bank, then both maps' spreads
        t0 = time.perf_counter()
        patches = fill_memory(model, cache, train_cfg.seed)
        fusion_feats = [f for f in holdout_feats.values() if f[0].shape[0]]
        fusion_source = "held-out normal images"
        if not fusion_feats:  # no held-out images: the fitted ones (their memory distances run low)
            fusion_feats, fusion_source = [cache], "training images (no hold-out: memory distances biased low)"
            log("warning: no held-out images, the memory's fusion fitted on training images")
        size = model.cfg.memory_size
        memory = {"patches": patches, "bank": size, "fusion_source": fusion_source,
                  **fit_fusion(model, fusion_feats), "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
        log(f"memory of {size} patches chosen from {min(patches, MAX_CANDIDATES)} of {patches} "
            f"training patches in {memory['seconds']}s")

    holdout_scores = {
        name: score_cached(model, f)[1].reshape(-1, grids[name][0] * grids[name][1]).max(1)
        for name, f in holdout_feats.items() if f[0].shape[0]
    }  # fmt: skip
    if holdout_scores:
        threshold, per_cat = calibrate(holdout_scores, train_cfg.target_false_alarm)
        n_holdout = sum(map(len, holdout_scores.values()))
        source = (f"{train_cfg.target_false_alarm:.2%} target false alarms on {n_holdout} held-out normal images "
                  "(max of quantile and Gaussian prediction bound)")
    else:  # no held-out images: fall back to the training images (biased low, said so)
        train_scores = score_cached(model, cache)[1]
        threshold = normal_threshold(train_scores, train_cfg.target_false_alarm)
        per_cat = {}
        source = "training images (no hold-out: biased low)"
        log("warning: no held-out images, threshold calibrated on training images")
    scores = np.concatenate(list(holdout_scores.values())) if holdout_scores else np.zeros(0)
    return NormalReading(threshold, per_cat, source, memory, scores)


class TrainStep(nn.Module):
    """The differentiable part of one iteration: decode a batch of cached features, return the loss
    and its parts. Under torchrun it runs inside DistributedDataParallel, which averages the ranks'
    gradients; one process calls it as it is.

    ``forward(feats, offset, total)``: ``feats`` are rows ``offset ..`` of a global batch of
    ``total`` (dropout noise is drawn for the global batch, :meth:`ProAD.batch_rows`); ``gather``
    hands the hard-mining threshold the global batch's distances (:func:`proad.loss.cosine_hard_mining`).
    """

    def __init__(self, model: ProAD, gather: Gather | None = None) -> None:
        super().__init__()
        self.model = model
        self.gather = gather

    def forward(
        self, feats: list[torch.Tensor], offset: int = 0, total: int | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        with self.model.batch_rows(offset, feats[0].shape[0] if total is None else total):
            output = self.model.decode(feats)
        return proad_loss(feats, output, self.model.bank, self.model.cfg, self.gather)


def train(
    roots: Sequence[str | Path],
    out: str | Path,
    model_cfg: ModelConfig | None = None,
    train_cfg: TrainConfig | None = None,
    categories: Sequence[str] | None = None,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
    preset: str | None = None,
) -> Checkpoint:
    """Train one model on every category under ``roots`` and write its checkpoint to ``out``.

    Under ``torchrun`` every rank runs this with the same arguments (module docstring): each returns
    the same checkpoint, which rank 0 alone writes (all have returned once it is written), and only
    rank 0 logs and shows progress. ``batch_size`` must then be divisible by the number of ranks.

    ``preset``: the name of the :mod:`proad.presets` entry the configs came from, recorded only."""
    world = distributed.init()
    try:
        return _train(world, roots, out, model_cfg, train_cfg, categories, resume, progress, log, preset)
    finally:
        distributed.close(world)


def _quiet(message: str) -> None:
    """The log of ranks other than 0."""


def _train(
    world: World,
    roots: Sequence[str | Path],
    out: str | Path,
    model_cfg: ModelConfig | None,
    train_cfg: TrainConfig | None,
    categories: Sequence[str] | None,
    resume: bool,
    progress: bool,
    log: Callable[[str], None],
    preset: str | None,
) -> Checkpoint:
    from tqdm import tqdm

    model_cfg = model_cfg or ModelConfig()
    train_cfg = train_cfg or TrainConfig()
    if train_cfg.batch_size % world.size:
        raise DistributedError(
            f"batch_size {train_cfg.batch_size} is not divisible by the {world.size} processes torchrun started"
        )
    if not world.is_main:
        progress, log = False, _quiet
    out = Path(out)
    resume_path = out.with_name(out.name + ".resume")
    if train_cfg.threads:
        torch.set_num_threads(train_cfg.threads)

    state: dict[str, Any] | None = None
    if resume:  # rank 0 reads the snapshot and hands it to the others, so all start from the same one
        error: CheckpointError | None = None
        if world.is_main and resume_path.is_file():
            try:
                state = _load_resume(resume_path, model_cfg, train_cfg)
            except CheckpointError as exc:
                error = exc
        state, error = world.broadcast_object((state, error))
        if error is not None:
            raise error
        if state is not None:
            log(f"resuming from {resume_path} at step {state['step']}")

    t0 = time.perf_counter()
    folders = open_categories(roots, categories, model_cfg.image_size, model_cfg.resize)
    grids = choose_grids(folders, model_cfg)
    for name, (rows, cols) in grids.items():
        if (rows, cols) != NO_TILING:
            tile = size_text(model_cfg.image_size)
            log(f"{name}: pictures cut into {rows}x{cols} tiles of {tile} px (tile_max_shrink)")
    splits = [split_holdout(f, train_cfg.holdout_fraction, train_cfg.seed) for f in folders]
    torch.manual_seed(train_cfg.seed)
    model = ProAD(model_cfg)
    standardised = fit_standardisation(model, splits, progress)
    if standardised:
        log(f"levels of stride {standardised['strides']} standardised on {standardised['pictures']} training pictures")

    cache, holdout_feats = encode_splits(model, splits, train_cfg, world, progress)
    n_fit = cache[0].shape[0]
    t_encode = time.perf_counter() - t0
    log(f"cached features of {n_fit} training images from {len(splits)} categories in {t_encode:.1f}s")

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, train_cfg))
    start = 0
    if state is not None:
        model.load_state_dict(state["model_state"], strict=False)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start = int(state["step"])

    model.train()
    step_fn: nn.Module = TrainStep(model)
    if world.size > 1:
        from torch.nn.parallel import DistributedDataParallel

        # No buffer changes while training (the encoder is not run, the decoder has no batch norm), so
        # none is synced per step; every trainable parameter takes part in every loss (no search for
        # unused ones).
        step_fn = DistributedDataParallel(TrainStep(model, world.all_gather_rows), forward_sync_buffers=False)
        # A depthwise conv's [D, 1, 3, 3] weight has stride 9 on its size-1 dim, its gradient stride 1:
        # the same layout, which DDP's literal stride check reports once per process as a slowdown.
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    mine = world.shard(train_cfg.batch_size)  # this rank's rows of every global batch
    t1 = time.perf_counter()
    bar = tqdm(range(start, train_cfg.iterations), desc="train", unit="it", disable=not progress, initial=start,
               total=train_cfg.iterations)
    loss_ema = None
    for step in bar:
        idx = np.random.default_rng([train_cfg.seed, step]).integers(0, n_fit, train_cfg.batch_size)[mine]
        torch.manual_seed(train_cfg.seed * 1_000_003 + step)
        feats = [level[torch.from_numpy(idx)].float() for level in cache]
        loss, parts = step_fn(feats, mine.start, train_cfg.batch_size)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        value = loss.item()
        if world.size > 1:  # the global batch's loss and parts: the mean of the ranks' equal shares
            both = world.mean(torch.tensor([value, *parts.values()], dtype=torch.float64)).tolist()
            value, parts = both[0], dict(zip(parts, both[1:], strict=True))
        loss_ema = value if loss_ema is None else 0.95 * loss_ema + 0.05 * value
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss_ema:.4f}", **{k: f"{v:.3f}" for k, v in parts.items()})
        if world.is_main and (step + 1) % train_cfg.checkpoint_every == 0 and step + 1 < train_cfg.iterations:
            atomic_save(
                {
                    "format": RESUME_FORMAT,
                    "step": step + 1,
                    "model_config": model_cfg.model_dump(mode="json"),
                    "train_config": train_cfg.model_dump(mode="json"),
                    "model_state": model.trainable_state_dict(),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                },
                resume_path,
            )
    bar.close()
    t_train = time.perf_counter() - t1

    normal = read_normal(model, cache, holdout_feats, grids, train_cfg, log)
    ckpt = Checkpoint(
        model_config=model_cfg,
        state_dict=model.trainable_state_dict(),
        threshold=normal.threshold,
        normalisation={
            "input": f"uint8 NHWC BGR, any camera image fitted to {size_text(model_cfg.image_size)} "
                     f"by {model_cfg.resize}",
            "mean_rgb": list(model.encoder.body.pretrained_cfg["mean"]),
            "std_rgb": list(model.encoder.body.pretrained_cfg["std"]),
            **normal.normalisation(),
        },
        train_info={
            "data": [str(Path(r).resolve()) for r in roots],
            "preset": preset,
            "categories": {s.folder.category: {"fit": len(s.fit), "holdout": len(s.holdout)} for s in splits},
            "train_files": {s.folder.category: s.folder.train_digest() for s in splits},
            "category_thresholds": normal.category_thresholds,
            "category_tiles": {name: list(grid) for name, grid in grids.items()},
            "threshold_source": normal.source,
            "train_config": train_cfg.model_dump(mode="json"),
            "encode_seconds": round(t_encode, 1),
            "train_seconds": round(t_train, 1),
            "final_loss": loss_ema,
            "memory": normal.memory,
            "standardised": standardised,
            "world_size": world.size,
            "torch": str(torch.__version__),
        },
    )
    if world.is_main:
        save_checkpoint(ckpt, out)
        if resume_path.exists():
            os.remove(resume_path)
    world.barrier()  # on every rank, train() returns once the checkpoint is written
    log(f"trained {train_cfg.iterations - start} iterations in {t_train:.0f}s; "
        f"threshold {normal.threshold:.4f} ({normal.source})")
    return ckpt


def _load_resume(path: Path, model_cfg: ModelConfig, train_cfg: TrainConfig) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"{path}: unreadable training snapshot ({type(exc).__name__}); delete it to start over"
        ) from exc
    if not isinstance(state, dict) or state.get("format") != RESUME_FORMAT:
        raise CheckpointError(f"{path}: not a training snapshot")
    try:  # validated, so a snapshot written before a field existed reads with that field's default
        then_cfg = ModelConfig.model_validate(state.get("model_config") or {}).model_dump(mode="json")
    except ValidationError:
        then_cfg = None
    if then_cfg != model_cfg.model_dump(mode="json"):
        raise CheckpointError(f"{path}: snapshot was taken with another model config; delete it to start over")
    saved = dict(state.get("train_config") or {})
    now = train_cfg.model_dump(mode="json")
    for key in ("batch_size", "seed", "lr", "warmup", "iterations", "holdout_fraction", "shift_copies", "shift_pixels"):
        then = saved.get(key, TrainConfig.model_fields[key].default)  # older snapshots lack newer fields
        if then != now.get(key):
            raise CheckpointError(
                f"{path}: snapshot used {key}={then!r}, now {now.get(key)!r}; delete it to start over"
            )
    return state
