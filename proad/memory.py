"""The memory of normal patches beside the reconstruction: choosing its bank and weighing it.

Issue 14's probes found why the decoder misses the Magnetic Tile's faint defects: a rebuild of a
grainy texture is never exact, and its cosine map cannot see a feature's length, which carries the
cracks. A lookup in a memory of real normal patches (PatchCore's reading of the very same frozen
features) sees both. A model with ``memory_size`` > 0 keeps such a bank beside its decoder
(:meth:`proad.model.ProAD.memory_map`); this module fills it after training:

- :func:`greedy_coreset` / :func:`coreset`: the bank is a k-center greedy coreset (PatchCore's
  Algorithm 1, distances on a random projection to 128 dimensions) over a uniform random subsample
  of at most 100,000 candidate patches, so it covers the rare normal patches a random draw drops and
  stays tractable on a large training set. ``bench/baselines/patchcore.py`` uses the same two.
- :func:`fill_memory`: the candidates are drawn from the cached training features, the bank written
  into the model (repeated rows pad a bank when there are fewer patches than ``memory_size``; a
  duplicate does not change any nearest distance).
- :func:`fit_fusion`: both maps' pixel mean and spread on held-out normal images (the threshold's
  images), so :meth:`proad.model.ProAD.fuse` weighs the two in comparable units.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from proad.model import ProAD

MAX_CANDIDATES = 100_000


@torch.no_grad()
def greedy_coreset(features: torch.Tensor, keep: int, projection_dim: int = 128, seed: int = 0) -> torch.Tensor:
    """Indices of ``keep`` features chosen by k-center greedy on a random projection (PatchCore, Alg. 1).

    Each step adds the feature farthest from everything chosen so far, so the coreset covers the
    set's extremes (the rare normal patches a random subsample would drop)."""
    g = torch.Generator().manual_seed(seed)
    n, c = features.shape
    if keep >= n:
        return torch.arange(n)
    proj = features
    if projection_dim < c:
        matrix = torch.randn(c, projection_dim, generator=g) / projection_dim**0.5
        proj = features @ matrix
    sq = (proj * proj).sum(1)
    chosen = torch.empty(keep, dtype=torch.long)
    chosen[0] = int(torch.randint(n, (1,), generator=g))
    min_d = torch.full((n,), float("inf"))
    for j in range(keep):
        if j:
            chosen[j] = int(min_d.argmax())
        c_vec = proj[chosen[j]]
        d = sq - 2.0 * (proj @ c_vec) + sq[chosen[j]]
        torch.minimum(min_d, d, out=min_d)
    return chosen


@torch.no_grad()
def coreset(
    features: torch.Tensor,
    keep: int,
    max_candidates: int = MAX_CANDIDATES,
    projection_dim: int = 128,
    seed: int = 0,
) -> torch.Tensor:
    """``keep`` rows of ``features [N, C]`` by :func:`greedy_coreset` over at most ``max_candidates``
    of them (a uniform random subsample when there are more); every candidate when ``keep`` is not
    smaller than their number."""
    if len(features) > max_candidates:  # the greedy pass over all of them would take too long
        g = torch.Generator().manual_seed(seed)
        features = features[torch.randperm(len(features), generator=g)[:max_candidates]]
    return features[greedy_coreset(features, keep, projection_dim, seed)].contiguous()


@torch.no_grad()
def fill_memory(model: ProAD, cache: list[torch.Tensor], seed: int = 0, batch: int = 64) -> int:
    """Fill ``model.memory_bank`` from cached training features (one tensor per level, as
    :func:`proad.train.encode` gives) and return how many training patches there were.

    The greedy pass sees at most :data:`MAX_CANDIDATES` of them, drawn uniformly from every image and
    position, so the stride-8 grid of a large training set is never held whole."""
    n_images = cache[0].shape[0]
    first = model.memory_features([lvl[:1].float() for lvl in cache])
    per_image, channels = first.shape[2] * first.shape[3], first.shape[1]
    total = n_images * per_image
    g = torch.Generator().manual_seed(seed)
    picks = torch.randperm(total, generator=g)[:MAX_CANDIDATES] if total > MAX_CANDIDATES else torch.arange(total)
    picks = picks.sort().values
    candidates = torch.empty(len(picks), channels)
    done = 0
    for start in range(0, n_images, batch):
        stop = min(start + batch, n_images)
        lo, hi = torch.searchsorted(picks, torch.tensor([start * per_image, stop * per_image])).tolist()
        if lo == hi:
            continue
        e = model.memory_features([lvl[start:stop].float() for lvl in cache])
        rows = e.permute(0, 2, 3, 1).reshape(-1, channels)
        candidates[done : done + hi - lo] = rows[picks[lo:hi] - start * per_image]
        done += hi - lo
    size = model.memory_bank.shape[0]
    bank = coreset(candidates, size, seed=seed)
    if len(bank) < size:  # fewer patches than the bank holds: repeat rows (no nearest distance changes)
        bank = bank[torch.arange(size) % len(bank)]
    model.memory_bank.copy_(bank)
    return total


@torch.no_grad()
def fit_fusion(model: ProAD, feats: list[list[torch.Tensor]], batch: int = 32) -> dict[str, float]:
    """Set ``model.memory_stats`` to the pixel mean and standard deviation of the reconstruction's map
    and of the memory's over the images of ``feats`` (held-out normal images, one list of cached level
    tensors per category), and return them."""
    sums = torch.zeros(2, 3, dtype=torch.float64)  # per map: count, sum, sum of squares
    model.eval()
    for levels in feats:
        for start in range(0, levels[0].shape[0], batch):
            f = [lvl[start : start + batch].float() for lvl in levels]
            maps = (model.anomaly_map(f, model.decode(f).reconstructions), model.memory_map(f))
            for i, m in enumerate(maps):
                m = m.double()
                sums[i] += torch.stack([torch.tensor(float(m.numel()), dtype=torch.float64), m.sum(), (m * m).sum()])
    if sums[0, 0] == 0:
        raise ValueError("no images to fit the memory's fusion on")
    mean = sums[:, 1] / sums[:, 0]
    std = (sums[:, 2] / sums[:, 0] - mean**2).clamp_min(1e-12).sqrt()
    stats = torch.stack([mean[0], std[0], mean[1], std[1]]).float()
    model.memory_stats.copy_(stats)
    return dict(zip(("rec_mean", "rec_std", "mem_mean", "mem_std"), stats.tolist(), strict=True))
