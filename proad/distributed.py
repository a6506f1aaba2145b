"""Training on several processes: ``torchrun`` and DistributedDataParallel (DESIGN §2, Training).

Why a module of its own: the trainer must give the *same* model whether it runs as one process or
as ``torchrun --nproc-per-node R``, for the same global batch and seed, so every place where ranks
differ goes through the few helpers here, and a world of one (no ``torchrun``) passes through them
without touching ``torch.distributed`` at all (no process group, no collective, no copy).

- :func:`init` reads torchrun's environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``) and, for more
  than one process, starts the process group; :func:`close` ends the group it started.
- :meth:`World.shard` is this rank's contiguous share of ``n`` items (the feature cache's images to
  encode, the rows of the global batch), :meth:`World.all_gather_rows` puts every rank's rows back
  together in the original order; :meth:`World.mean` and :meth:`World.broadcast_object` are for
  the logged loss and the resume snapshot.

The backend is **gloo**: the trainer runs on the CPU (the decoder trains on cached encoder
features, DESIGN §2). A GPU trainer would use NCCL with one device per ``LOCAL_RANK``; that is not
wired: nothing here moves tensors to a device or selects one.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

#: The process-group backend of the CPU trainer (NCCL would be the one for a GPU trainer; not wired).
BACKEND = "gloo"


class DistributedError(ValueError):
    """A setting that cannot work on this many processes (bad torchrun environment, batch size)."""


@dataclass(frozen=True)
class World:
    """Which process this is among how many. ``World()`` is the single process: every helper is then
    the identity and ``torch.distributed`` is never used."""

    size: int = 1
    rank: int = 0
    local_rank: int = 0
    owns_group: bool = field(default=False, compare=False)  # init() started the process group

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that logs, shows progress and writes files."""
        return self.rank == 0

    def shard(self, n: int, rank: int | None = None) -> slice:
        """The contiguous share of ``n`` items of ``rank`` (default: this one). Shares differ by at
        most one item, the first ``n % size`` ranks holding the larger ones; together they cover
        ``range(n)`` in rank order."""
        r = self.rank if rank is None else rank
        base, extra = divmod(n, self.size)
        start = r * base + min(r, extra)
        return slice(start, start + base + (1 if r < extra else 0))

    def all_gather_rows(self, t: torch.Tensor) -> torch.Tensor:
        """Every rank's rows of ``t`` (dim 0; the other dims equal on every rank) concatenated in rank
        order: with :meth:`shard`, the rows of all ``n`` items in their original order. Ranks may
        hold different numbers of rows (even none): each is padded to the largest for the collective
        and trimmed after it. Not differentiable."""
        if self.size == 1:
            return t
        import torch.distributed as dist

        t = t.detach().contiguous()
        counts_t = [torch.zeros(1, dtype=torch.int64) for _ in range(self.size)]
        dist.all_gather(counts_t, torch.tensor([t.shape[0]], dtype=torch.int64))
        counts = [int(c.item()) for c in counts_t]
        most = max(counts)
        if most == 0:
            return t
        padded = t if t.shape[0] == most else torch.cat([t, t.new_zeros((most - t.shape[0], *t.shape[1:]))])
        parts = [torch.empty_like(padded) for _ in range(self.size)]
        dist.all_gather(parts, padded)
        return torch.cat([p[:c] for p, c in zip(parts, counts, strict=True)])

    def mean(self, t: torch.Tensor) -> torch.Tensor:
        """The mean of ``t`` over the ranks (a new tensor; ``t`` itself on one process)."""
        if self.size == 1:
            return t
        import torch.distributed as dist

        total = t.detach().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total / self.size

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (pickled; others pass anything, e.g. ``None``)."""
        if self.size == 1:
            return obj
        import torch.distributed as dist

        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        """Wait until every rank got here (nothing on one process)."""
        if self.size > 1:
            import torch.distributed as dist

            dist.barrier()


def from_env(environ: Mapping[str, str] | None = None) -> World:
    """The world torchrun describes in the environment; ``World()`` where it describes none."""
    env = os.environ if environ is None else environ
    try:
        size = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local_rank = int(env.get("LOCAL_RANK", "0"))
    except ValueError as exc:
        raise DistributedError(f"WORLD_SIZE, RANK and LOCAL_RANK must be integers: {exc}") from exc
    if size < 1 or not 0 <= rank < size or local_rank < 0:
        raise DistributedError(f"inconsistent torchrun environment: WORLD_SIZE={size}, RANK={rank}, "
                               f"LOCAL_RANK={local_rank}")  # fmt: skip
    return World(size, rank, local_rank)


def init(backend: str = BACKEND) -> World:
    """This process's :class:`World`, with the process group started for more than one process.

    A group the caller already started is used as it is (and :func:`close` leaves it to the
    caller). One process: nothing is started or imported."""
    world = from_env()
    if world.size == 1:
        return world
    import torch.distributed as dist

    if not dist.is_available():
        raise DistributedError(f"WORLD_SIZE={world.size} but this torch has no torch.distributed")
    if dist.is_initialized():
        return World(dist.get_world_size(), dist.get_rank(), world.local_rank)
    dist.init_process_group(backend)
    return World(dist.get_world_size(), dist.get_rank(), world.local_rank, owns_group=True)


def close(world: World) -> None:
    """End the process group :func:`init` started (nothing otherwise)."""
    if world.owns_group:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
