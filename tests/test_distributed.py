"""Training on several processes (torchrun, DDP over gloo) gives the model one process gives.

The real thing runs here: ``torchrun --standalone --nproc-per-node 2 -m proad.cli train`` on the tiny
generated set (``--standalone`` rendezvous on a free port, so parallel runs do not collide), against
``train()`` in this process with the same configs; and a snapshot one process left is resumed on
two. The pieces that make the two agree are tested on their own: the hard-mining threshold over
the global batch, dropout noise drawn for the global batch, the rank helpers.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import interrupt_training_at
from proad import distributed
from proad.checkpoint import Checkpoint, load_checkpoint
from proad.cli import train_main
from proad.config import ModelConfig, TrainConfig
from proad.distributed import DistributedError, World
from proad.loss import Gather, cosine_hard_mining
from proad.model import BatchDropout, ProAD
from proad.presets import preset_configs
from proad.train import encode, train

pytestmark = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="this torch has no torch.distributed with the gloo backend",
)

#: 2-rank vs 1-process state dicts after ITERATIONS steps. They differ by float rounding only (the
#: batch's gradient summed as two half sums averaged by all-reduce instead of one sum, 1 thread
#: instead of 2), which the hard-mining weight (a step at the batch's quantile: a point whose distance
#: moves by 1e-7 across it changes weight 10x) and Adam's per-weight normalisation can carry up to a
#: learning-rate step: measured here 1.5e-6, 7.1e-6 and 2.6e-5 for seeds 0, 1, 2, and 1.5e-6 between
#: one process on 1 and on 2 threads. Undoing either correction the trainer makes moves weights
#: 10-35x the tolerance: the hard-mining threshold taken per rank 3.4e-3 to 7.0e-3, dropout masks
#: drawn per rank 2.1e-3 to 3.0e-3 (seeds 0 and 2).
STATE_ATOL = 2e-4
ITERATIONS = 30


def torchrun() -> list[str]:
    """torchrun next to this Python (the venv's), else the module it runs."""
    exe = Path(sys.executable).with_name("torchrun")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "torch.distributed.run"]


def run_two(args: list[str], timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """``torchrun --standalone --nproc-per-node 2 ARGS``, which must succeed; on a timeout torchrun
    and both ranks are killed (a rank stuck in a collective would otherwise outlive the test)."""
    cmd = [*torchrun(), "--standalone", "--nproc-per-node", "2", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # torchrun's default, said explicitly (2 ranks on 2 cores)
    t0 = time.perf_counter()
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                          start_new_session=True) as popen:  # fmt: skip
        try:
            stdout, stderr = popen.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(popen.pid, signal.SIGKILL)
            stdout, stderr = popen.communicate()
            pytest.fail(f"torchrun ran past {timeout}s\nstdout:\n{stdout}\nstderr:\n{stderr[-4000:]}")
    print(f"torchrun, 2 ranks: {time.perf_counter() - t0:.1f}s")
    assert popen.returncode == 0, f"exit {popen.returncode}\nstdout:\n{stdout}\nstderr:\n{stderr[-4000:]}"
    return subprocess.CompletedProcess(cmd, popen.returncode, stdout, stderr)


def max_state_diff(a: Checkpoint, b: Checkpoint) -> float:
    assert a.state_dict.keys() == b.state_dict.keys()
    return max((a.state_dict[k].float() - b.state_dict[k].float()).abs().max().item() for k in a.state_dict)


# ------------------------------------------------------------------------------------------------
# two ranks against one process, end to end


def cli_args(data: Path, cfg: ModelConfig) -> list[str]:
    """proad-train's arguments; --shift-copies 1 makes each category 23 pictures: shares of 12 and 11."""
    sets = [f"{k}={json.dumps(v)}" for k, v in cfg.model_dump(mode="json", exclude_defaults=True).items()]
    return ["--data", str(data), "--iterations", str(ITERATIONS), "--batch-size", "4", "--checkpoint-every", "10",
            "--shift-copies", "1", "--quiet", "--set", *sets]  # fmt: skip


def configs(cfg: ModelConfig) -> tuple[ModelConfig, TrainConfig]:
    """What cli_args gives proad-train."""
    given = {"iterations": ITERATIONS, "batch_size": 4, "checkpoint_every": 10, "shift_copies": 1}
    return preset_configs("fast", cfg.model_dump(exclude_defaults=True), given)


@pytest.fixture(scope="module")
def one_process(tiny_data: Path, small_cfg: ModelConfig, tmp_path_factory: pytest.TempPathFactory) -> Checkpoint:
    model_cfg, train_cfg = configs(small_cfg)
    out = tmp_path_factory.mktemp("one") / "m.pt"
    return train([tiny_data], out, model_cfg, train_cfg, progress=False, log=lambda s: None, preset="fast")


def test_two_ranks_train_the_model_one_process_trains(
    tiny_data: Path, small_cfg: ModelConfig, one_process: Checkpoint, tmp_path: Path
) -> None:
    out = tmp_path / "two.pt"
    proc = run_two(["-m", "proad.cli", "train", *cli_args(tiny_data, small_cfg), "--out", str(out)])
    two = load_checkpoint(out)
    diff = max_state_diff(one_process, two)
    print(f"2 ranks vs 1 process after {ITERATIONS} iterations: largest state-dict difference {diff:.3g}, "
          f"thresholds {two.threshold:.7f} vs {one_process.threshold:.7f}")  # fmt: skip
    assert diff <= STATE_ATOL
    assert two.threshold == pytest.approx(one_process.threshold, rel=1e-3)
    per_one, per_two = (c.train_info["category_thresholds"] for c in (one_process, two))
    assert per_two == pytest.approx(per_one, rel=1e-3)
    assert two.train_info["final_loss"] == pytest.approx(one_process.train_info["final_loss"], rel=1e-3)
    assert (two.train_info["world_size"], one_process.train_info["world_size"]) == (2, 1)
    assert two.train_info["categories"] == one_process.train_info["categories"]
    # written once, by rank 0: one checkpoint, its snapshots (steps 10 and 20) gone, no temporary file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["two.pt"]
    assert proc.stdout.count(f"wrote {out}") == 1 and proc.stdout.count("cached features of") == 1  # rank 0 only


def test_a_snapshot_of_one_process_resumes_on_two(
    tiny_data: Path, small_cfg: ModelConfig, one_process: Checkpoint, tmp_path: Path, monkeypatch
) -> None:
    """Every rank starts from the snapshot rank 0 read (else DDP would hang or drift), and the result
    is the straight run's: the number of processes is not part of a run's state."""
    model_cfg, train_cfg = configs(small_cfg)
    interrupt_training_at(monkeypatch, 26)  # after step 25: the snapshot of step 20 is on disk
    out = tmp_path / "m.pt"
    with pytest.raises(KeyboardInterrupt):
        train([tiny_data], out, model_cfg, train_cfg, progress=False, log=lambda s: None)
    assert torch.load(out.with_name("m.pt.resume"), weights_only=True)["step"] == 20
    proc = run_two(["-m", "proad.cli", "train", *cli_args(tiny_data, small_cfg), "--out", str(out), "--resume"])
    assert proc.stdout.count("at step 20") == 1  # said once, by rank 0
    resumed = load_checkpoint(out)
    diff = max_state_diff(one_process, resumed)
    print(f"resumed on 2 ranks at step 20 vs 1 process straight: largest state-dict difference {diff:.3g}")
    assert diff <= STATE_ATOL and resumed.threshold == pytest.approx(one_process.threshold, rel=1e-3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


# ------------------------------------------------------------------------------------------------
# the rank helpers

GLOO_CHECK = """
from pathlib import Path

import torch
from proad import distributed

world = distributed.init()
assert world.size == 2 and world.owns_group and torch.distributed.get_backend() == "gloo"
for n in (0, 1, 3, 8):  # shares 0/0, 1/0 (an empty one), 2/1, 4/4
    rows = torch.arange(n, dtype=torch.float16).repeat_interleave(6).view(n, 2, 3)
    mine = rows[world.shard(n)]
    gathered = world.all_gather_rows(mine)
    assert gathered.dtype == torch.float16 and torch.equal(gathered, rows), (n, gathered)
assert world.mean(torch.tensor([float(world.rank)], dtype=torch.float64)).item() == 0.5
assert world.broadcast_object({"rank": world.rank}) == {"rank": 0}
world.barrier()
distributed.close(world)
assert not torch.distributed.is_initialized()
Path(__file__).with_name(f"rank{world.rank}.ok").write_text("ok")  # not stdout: two ranks' prints interleave
"""


def test_rank_helpers_on_two_gloo_processes(tmp_path: Path) -> None:
    script = tmp_path / "check.py"
    script.write_text(GLOO_CHECK)
    run_two([str(script)], timeout=120)  # which asserts torchrun's exit 0
    assert [(tmp_path / f"rank{r}.ok").read_text() for r in (0, 1)] == ["ok", "ok"]


def test_shards_cover_every_item_once_in_rank_order() -> None:
    for size in (1, 2, 3, 5):
        for n in (0, 1, 4, 7, 16):
            parts = [World(size, r).shard(n) for r in range(size)]
            assert [i for p in parts for i in range(n)[p]] == list(range(n))
            lengths = [p.stop - p.start for p in parts]
            assert max(lengths) - min(lengths) <= 1 and lengths == sorted(lengths, reverse=True)


def test_one_process_is_a_no_op(monkeypatch) -> None:
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    world = distributed.init()
    assert world == World() and world.is_main and not world.owns_group
    assert not torch.distributed.is_initialized()  # no process group for one process
    t = torch.randn(5, 3)
    assert world.all_gather_rows(t) is t and world.mean(t) is t and world.broadcast_object(t) is t
    assert world.shard(7) == slice(0, 7)
    distributed.close(world)


def test_bad_torchrun_environment_is_refused() -> None:
    assert distributed.from_env({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"}) == World(4, 3, 1)
    with pytest.raises(DistributedError, match="integers"):
        distributed.from_env({"WORLD_SIZE": "two"})
    with pytest.raises(DistributedError, match="inconsistent"):
        distributed.from_env({"WORLD_SIZE": "2", "RANK": "2"})


def test_batch_size_must_divide_among_the_ranks(
    tiny_data: Path, tmp_path: Path, monkeypatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(distributed, "init", lambda backend=distributed.BACKEND: World(3, 0))
    with pytest.raises(DistributedError, match="batch_size 16 is not divisible by the 3 processes"):
        train([tiny_data], tmp_path / "m.pt", train_cfg=TrainConfig(batch_size=16), progress=False)
    assert train_main(["--data", str(tiny_data), "--out", str(tmp_path / "m.pt"), "--batch-size", "8"]) == 2
    assert "not divisible by the 3 processes" in capsys.readouterr().err
    assert not (tmp_path / "m.pt").exists()


# ------------------------------------------------------------------------------------------------
# the hard-mining threshold over the global batch


def _old_cosine_hard_mining(feats, recs, quantile, factor):  # the loss before the gather hook, verbatim
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


def replay(levels: list[torch.Tensor]) -> Gather:
    """A gather hook that hands out each level's global distances in turn, as all-gather would."""
    it = iter(levels)
    return lambda d: next(it)


def test_hard_mining_over_the_global_batch_matches_one_process() -> None:
    torch.manual_seed(0)
    shapes = [(8, 6, 4, 4), (8, 10, 2, 2)]  # two levels, batch 8
    feats = [torch.randn(s) for s in shapes]
    feats[0][4:] += 1.5  # the two halves differ: a per-half quantile is not the batch's
    recs = [torch.randn(s, requires_grad=True) for s in shapes]

    full = cosine_hard_mining(feats, recs, 0.9, 0.1)  # one process: no hook, the loss as before
    assert torch.equal(full, _old_cosine_hard_mining(feats, recs, 0.9, 0.1))
    assert torch.equal(full, cosine_hard_mining(feats, recs, 0.9, 0.1, gather=lambda d: d))
    full_grads = torch.autograd.grad(full, recs)

    def two_ranks(with_hook: bool) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """The loss of each half as a rank computes it, averaged as DDP averages the gradients."""
        global_d = [(1.0 - F.cosine_similarity(f, r, dim=1)).detach() for f, r in zip(feats, recs, strict=True)]
        losses = []
        for half in (slice(0, 4), slice(4, 8)):
            hook = replay(global_d) if with_hook else None
            losses.append(cosine_hard_mining([f[half] for f in feats], [r[half] for r in recs], 0.9, 0.1, hook))
        mean = (losses[0] + losses[1]) / 2
        return mean, torch.autograd.grad(mean, recs)

    loss, grads = two_ranks(with_hook=True)
    torch.testing.assert_close(loss, full)
    for g, ref in zip(grads, full_grads, strict=True):
        torch.testing.assert_close(g, ref)
    loss, grads = two_ranks(with_hook=False)  # a per-rank threshold weighs other points: the test can fail
    assert not torch.allclose(grads[0], full_grads[0])


# ------------------------------------------------------------------------------------------------
# dropout noise of the global batch


def test_batch_dropout_draws_what_nn_dropout_draws_and_the_global_rows() -> None:
    x = torch.randn(8, 5, 7)
    for p in (0.0, 0.2, 0.5):
        torch.manual_seed(3)
        expected = nn.Dropout(p)(x)
        torch.manual_seed(3)
        assert torch.equal(BatchDropout(p)(x), expected)  # one process trains exactly as before
    torch.manual_seed(3)
    full = BatchDropout(0.2)(x)
    for offset, rows in ((0, 4), (4, 4), (2, 3)):
        drop = BatchDropout(0.2)
        drop.rows = (offset, 8)
        torch.manual_seed(3)
        assert torch.equal(drop(x[offset : offset + rows]), full[offset : offset + rows])
    drop.rows = (6, 8)
    with pytest.raises(ValueError, match="do not lie"):
        drop(x[:3])
    assert BatchDropout(0.2).eval()(x) is x  # the identity outside training (and in the exported graph)
    assert not list(BatchDropout(0.2).parameters()) and not BatchDropout(0.2).state_dict()


def test_rows_of_the_global_batch_decode_as_in_the_whole_batch(small_cfg: ModelConfig) -> None:
    torch.manual_seed(0)
    model = ProAD(small_cfg)
    with torch.no_grad():
        feats = model.features(torch.randint(0, 256, (4, 256, 256, 3), dtype=torch.uint8))
        model.train()
        torch.manual_seed(7)
        whole = model.decode(feats).reconstructions
        with model.batch_rows(2, 4):
            torch.manual_seed(7)
            rows = model.decode([f[2:] for f in feats]).reconstructions
        assert all(m.rows is None for m in model.modules() if isinstance(m, BatchDropout))  # reset after
        torch.manual_seed(7)
        local = model.decode([f[2:] for f in feats]).reconstructions  # noise of a batch of 2: not the same
    same = max((r - w[2:]).abs().max().item() for w, r in zip(whole, rows, strict=True))
    other = max((r - w[2:]).abs().max().item() for w, r in zip(whole, local, strict=True))
    assert same <= 1e-6 and other > 100 * max(same, 1e-6), (same, other)
    empty = encode(model, [], progress=False)  # a rank's empty share of a tiny category
    assert [tuple(e.shape) for e in empty] == [(0, *f.shape[1:]) for f in feats]
    assert all(e.dtype == torch.float16 for e in empty)
