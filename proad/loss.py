"""Training objective of Pro-AD (DESIGN §2, Loss).

- Reconstruction: per level, the cosine distance between the frozen encoder's features and their
  reconstruction at every point, with hard-point mining as in Dinomaly's ``global_cosine_hm``:
  points already reconstructed well (below the batch's distance quantile) keep only a small share
  of their gradient, so the decoder spends its capacity on what it gets wrong instead of
  perfecting the easy background, which would also make it better at reconstructing anomalies.
- Gather: every encoder token should lie near some prototype of the bank (INP-Former's gather
  term). The tokens are detached so the term moves the bank towards the normal tokens, never the
  projection towards a collapsed constant.
- Constraint (``constraint="loss"`` form only): the gap between adapted prototypes and their
  projection onto the bank's hull.

On several processes (:mod:`proad.distributed`) each rank computes this loss on its equal share of
the global batch. Every term is a mean over batch items (points, tokens, adapted prototypes of each
image), so DistributedDataParallel's averaging of the ranks' gradients gives the gradient of the
global batch's mean. The one quantity that is not such a mean is the hard-mining threshold, a
quantile over the whole batch: :func:`cosine_hard_mining` takes a ``gather`` hook that hands it the
global batch's distances.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from proad.config import ModelConfig
from proad.model import DecoderOutput

#: Turns this process's (detached) per-point distances ``[b, h, w]`` into the global batch's ``[B, h, w]``
#: (any row order): :meth:`proad.distributed.World.all_gather_rows`.
Gather = Callable[[torch.Tensor], torch.Tensor]


def cosine_hard_mining(
    feats: list[torch.Tensor],
    recs: list[torch.Tensor],
    quantile: float,
    factor: float,
    gather: Gather | None = None,
) -> torch.Tensor:
    """Mean point-wise cosine distance; points below the ``quantile`` get ``factor`` of the weight.

    ``gather``: on one of several processes, the quantile is taken over the global batch's distances
    it returns, so every rank weighs its points as one process would; the mean stays over this
    process's points (DDP averages it over the ranks). ``None``: this batch is the whole batch."""
    total = feats[0].new_zeros((), dtype=torch.float32)
    for f, r in zip(feats, recs, strict=True):
        d = 1.0 - F.cosine_similarity(f.float(), r, dim=1)
        with torch.no_grad():
            flat = (d.detach() if gather is None else gather(d.detach())).flatten()
            k = max(1, int(quantile * flat.numel()))
            thresh = flat.kthvalue(k).values
            weight = torch.where(d.detach() >= thresh, torch.ones_like(d), torch.full_like(d, factor))
        total = total + (d * weight).mean()
    return total / len(feats)


def gather_loss(tokens: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of ``1 - max_m cos(token, B_m)``; gradients reach the bank only."""
    sim = F.normalize(tokens.detach(), dim=-1) @ F.normalize(bank, dim=-1).t()
    return (1.0 - sim.max(dim=-1).values).mean()


def proad_loss(
    feats: list[torch.Tensor],
    out: DecoderOutput,
    bank: torch.Tensor,
    cfg: ModelConfig,
    gather: Gather | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Total loss and its parts (for the progress bar), over this batch (``gather``: see
    :func:`cosine_hard_mining`; the other terms are per-item means and need none)."""
    rec = cosine_hard_mining(feats, out.reconstructions, cfg.hard_mining_quantile, cfg.hard_mining_factor, gather)
    pull = gather_loss(out.tokens, bank)
    total = rec + cfg.gather_weight * pull
    parts = {"rec": rec.item(), "gather": pull.item()}
    if cfg.constraint == "loss":
        total = total + cfg.constraint_loss_weight * out.constraint_gap
        parts["gap"] = out.constraint_gap.item()
    return total, parts
