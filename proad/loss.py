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
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from proad.config import ModelConfig
from proad.model import DecoderOutput


def cosine_hard_mining(
    feats: list[torch.Tensor], recs: list[torch.Tensor], quantile: float, factor: float
) -> torch.Tensor:
    """Mean point-wise cosine distance; points below the ``quantile`` get ``factor`` of the weight."""
    total = feats[0].new_zeros((), dtype=torch.float32)
    for f, r in zip(feats, recs, strict=True):
        d = 1.0 - F.cosine_similarity(f.float(), r, dim=1)
        with torch.no_grad():
            flat = d.detach().flatten()
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
    feats: list[torch.Tensor], out: DecoderOutput, bank: torch.Tensor, cfg: ModelConfig
) -> tuple[torch.Tensor, dict[str, float]]:
    """Total loss and its parts (for the progress bar)."""
    rec = cosine_hard_mining(feats, out.reconstructions, cfg.hard_mining_quantile, cfg.hard_mining_factor)
    gather = gather_loss(out.tokens, bank)
    total = rec + cfg.gather_weight * gather
    parts = {"rec": rec.item(), "gather": gather.item()}
    if cfg.constraint == "loss":
        total = total + cfg.constraint_loss_weight * out.constraint_gap
        parts["gap"] = out.constraint_gap.item()
    return total, parts
