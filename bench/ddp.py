"""Training on one process vs on several (``torchrun``, DistributedDataParallel over gloo), same data,
same global batch, same seed (DESIGN §2, Training; ``proad/distributed.py``).

Both are ``proad-train`` at a preset (default: the default preset), each its own process tree, one
after the other on the same roots, with the machine's cores split evenly: one process with
``--threads`` threads, or ``--ranks`` ranks of ``threads / ranks`` each (what torchrun's default of
one thread per rank is on 2 cores). For each: the encode and train seconds the checkpoint's
``train_info`` records (encode: reading the pictures, building the model, encoding them and, on
several ranks, gathering the cache; train: the iterations), the command's wall time (process
start-up and the threshold included), and the extrapolation a longer run needs: encode seconds
per picture, train seconds per iteration, and each preset's projected total on these roots. The
two checkpoints are compared too (largest state-dict difference, thresholds): it must be the same
model up to float rounding, which the hard-mining weight and Adam can carry to about a learning-rate
step in some weights over a long run; ``--control`` adds a third run, one process on
``threads / ranks`` threads, whose difference from the first is rounding alone: the yardstick.

    python bench/ddp.py                                      # ~25 min on 2 cores with the shared sets
    python bench/ddp.py --data ROOT [ROOT ...] [--iterations 200] [--ranks 2] [--threads 2] [--control] [--name ddp]

Default data: every real set in ``../shared/data`` plus the generated set the accuracy benchmark uses
(``bench/.cache/synth-test60``, written if missing; training reads only its 100 training pictures a
category). Writes ``bench/results/<name>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, real_roots, write_results


def torchrun() -> list[str]:
    """torchrun next to this Python (the venv's), else the module it runs."""
    exe = Path(sys.executable).with_name("torchrun")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "torch.distributed.run"]


def pictures_encoded(info: dict[str, Any]) -> int:
    """Inputs the encoder saw: fitted pictures with their shifted copies and held-out ones, in tiles."""
    copies = int(info["train_config"].get("shift_copies", 0))
    total = 0
    for name, split in info["categories"].items():
        rows, cols = info.get("category_tiles", {}).get(name, (1, 1))
        total += (split["fit"] * (1 + copies) + split["holdout"]) * rows * cols
    return total


def run(label: str, cmd: list[str], threads: int, out: Path) -> dict[str, Any]:
    """One training command; its checkpoint's timings and the wall time."""
    from proad.checkpoint import load_checkpoint

    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the test suite runs (tests/conftest.py)
    print(f"{label}: {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{label} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    info = load_checkpoint(out).train_info
    iterations = int(info["train_config"]["iterations"])
    pictures = pictures_encoded(info)
    row = {
        "label": label,
        "command": cmd,
        "processes": int(info.get("world_size", 1)),
        "threads_per_process": threads,
        "pictures_encoded": pictures,
        "iterations": iterations,
        "encode_seconds": info["encode_seconds"],
        "train_seconds": info["train_seconds"],
        "wall_seconds": round(wall, 1),
        "encode_seconds_per_picture": info["encode_seconds"] / max(1, pictures),
        "train_seconds_per_iteration": info["train_seconds"] / max(1, iterations),
    }
    print(f"  {row['encode_seconds']:.1f}s encoding {pictures} pictures, {row['train_seconds']:.1f}s for "
          f"{iterations} iterations, {wall:.1f}s wall", flush=True)  # fmt: skip
    return row


def compare(a: Path, b: Path) -> dict[str, float]:
    """How far apart the two models are (float rounding only, if the trainer is right)."""
    from proad.checkpoint import load_checkpoint

    one, two = load_checkpoint(a), load_checkpoint(b)
    diff = max((one.state_dict[k].float() - two.state_dict[k].float()).abs().max().item() for k in one.state_dict)
    return {"max_state_dict_diff": diff, "threshold_one": one.threshold, "threshold_ddp": two.threshold}


def table(data: dict[str, Any]) -> str:
    m, rows, same = data["machine"], data["rows"], data["same_model"]
    projected = data["projected_iterations"]
    lines = [
        "# Training on one process vs torchrun (DDP, gloo)",
        "",
        f"{m['cpu']} ({m['cores']} cores), {m['date']}. proad-train --preset {data['preset']}"
        + (f" --iterations {data['iterations']}" if data["iterations"] else "")
        + f" on {', '.join(Path(r).name for r in data['data'])}; the same global batch and seed on both.",
        "",
        "| run | processes x threads | pictures encoded | encode s | s / picture | iterations | train s | "
        "s / iteration | wall s | "
        + " | ".join(f"projected {name} ({its} it) s" for name, its in projected.items())
        + " |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(projected),
    ]
    control = data.get("control")

    def line(r: dict[str, Any], label: str) -> str:
        return (
            f"| {label} | {r['processes']} x {r['threads_per_process']} | {r['pictures_encoded']} | "
            f"{r['encode_seconds']:.1f} | {r['encode_seconds_per_picture']:.4f} | {r['iterations']} | "
            f"{r['train_seconds']:.1f} | {r['train_seconds_per_iteration']:.3f} | {r['wall_seconds']:.1f} | "
            + " | ".join(f"{r['projected_seconds'][name]:.0f}" for name in projected)
            + " |"
        )

    lines += [line(r, r["label"]) for r in rows]
    one, ddp = rows

    def ratio(key: str) -> str:
        return f"{one[key] / ddp[key]:.2f}x" if ddp[key] else "-"

    lines.append(
        f"| speed-up | | | {ratio('encode_seconds')} | | | {ratio('train_seconds')} | | {ratio('wall_seconds')} | "
        + " | ".join(
            f"{one['projected_seconds'][n] / ddp['projected_seconds'][n]:.2f}x" if ddp["projected_seconds"][n] else "-"
            for n in projected
        )
        + " |"
    )
    yardstick = ""
    if control:
        lines.append(line(control["row"], f"control: {control['row']['label']}"))
        threads, alone = control["row"]["threads_per_process"], control["same"]
        yardstick = (
            f" Rounding alone (1 process on {threads} instead of {one['threads_per_process']} threads): "
            f"{alone['max_state_dict_diff']:.2g}, threshold {alone['threshold_ddp']:.6f}."
        )
    lines += [
        "",
        f"Same model: largest state-dict difference {same['max_state_dict_diff']:.2g}, threshold "
        f"{same['threshold_one']:.6f} (1 process) vs {same['threshold_ddp']:.6f} (torchrun).{yardstick}",
        "",
        "Encode seconds (from the checkpoint's train_info) include reading the pictures and building the model; "
        "on torchrun each rank encodes its share and the cache is gathered. Projected: encode seconds plus the "
        "preset's iterations at the measured seconds per iteration, scaled by the preset's batch over the runs' "
        "(an iteration's cost grows about linearly with its batch; the threshold and start-up not included).",
    ]
    return "\n".join(lines)


def main() -> int:
    from proad.presets import DEFAULT_PRESET, PRESETS, preset_configs

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, nargs="+",
                   help="dataset roots (default: every real set in ../shared/data and the generated set)")  # fmt: skip
    p.add_argument("--preset", choices=sorted(PRESETS), default=DEFAULT_PRESET)
    p.add_argument("--iterations", type=int, help="training iterations (default: the preset's)")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="ModelConfig overrides for both runs")
    p.add_argument("--ranks", type=int, default=2, help="torchrun processes (default 2)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="torch threads of the single process; each rank gets threads / ranks "
                        "(default: all cores)")  # fmt: skip
    p.add_argument("--name", default="ddp", help="results file stem under bench/results/ (default ddp)")
    p.add_argument("--keep", type=Path, help="keep the checkpoints in this folder (default: a temporary one)")
    p.add_argument("--control", action="store_true",
                   help="a third run, one process on threads / ranks threads: how far rounding alone moves "
                        "the model")  # fmt: skip
    args = p.parse_args()
    if args.ranks < 2 or args.threads < 1:
        p.error("--ranks must be >= 2 and --threads >= 1")

    if args.data is None:
        from accuracy import BENCH_DATA, BENCH_SET

        from proad.data.synth import write_dataset

        if not (BENCH_DATA / "board").is_dir():
            print(f"writing the generated set to {BENCH_DATA}", flush=True)
            write_dataset(BENCH_DATA, test_good=BENCH_SET["test_good"], test_per_defect=BENCH_SET["test_per_defect"])
        if not real_roots():
            print("note: no real sets (../shared/data absent): the generated set only")
        args.data = [*real_roots(), BENCH_DATA]
    missing = [str(r) for r in args.data if not r.is_dir()]
    if missing:
        print(f"error: dataset root not found: {', '.join(missing)}", file=sys.stderr)
        return 2

    per_rank = max(1, args.threads // args.ranks)
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        one_out, ddp_out = folder / "one.pt", folder / f"ddp{args.ranks}.pt"
        common_args = ["train", "--data", *map(str, args.data), "--preset", args.preset, "--quiet"]
        if args.iterations:
            common_args += ["--iterations", str(args.iterations)]
        if args.set:
            common_args += ["--set", *args.set]
        try:
            rows = [
                run("1 process", [sys.executable, "-m", "proad.cli", *common_args, "--threads", str(args.threads),
                                  "--out", str(one_out)], args.threads, one_out),
                run(f"torchrun {args.ranks} ranks",
                    [*torchrun(), "--standalone", "--nproc-per-node", str(args.ranks), "-m", "proad.cli",
                     *common_args, "--threads", str(per_rank), "--out", str(ddp_out)], per_rank, ddp_out),
            ]  # fmt: skip
            control: dict[str, Any] | None = None
            if args.control:
                control_out = folder / f"one_{per_rank}threads.pt"
                row = run(f"1 process, {per_rank} threads", [sys.executable, "-m", "proad.cli", *common_args,
                          "--threads", str(per_rank), "--out", str(control_out)], per_rank, control_out)  # fmt: skip
                control = {"row": row, "same": compare(one_out, control_out)}
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        same = compare(one_out, ddp_out)

    presets = {name: preset_configs(name)[1] for name in PRESETS}
    projected = {name: t.iterations for name, t in presets.items()}
    run_batch = preset_configs(args.preset)[1].batch_size  # the batch the runs above trained with
    for r in [*rows, *([control["row"]] if control else [])]:  # an iteration's cost grows ~linearly with its batch
        r["projected_seconds"] = {
            name: r["encode_seconds"] + t.iterations * r["train_seconds_per_iteration"] * t.batch_size / run_batch
            for name, t in presets.items()
        }
    data = {
        "machine": machine(),
        "data": [str(r.resolve()) for r in args.data],
        "preset": args.preset,
        "iterations": args.iterations,
        "set": args.set,
        "ranks": args.ranks,
        "threads": args.threads,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
        "projected_iterations": projected,
        "rows": rows,
        "same_model": same,
        "control": control,
    }
    write_results(args.name, data, table(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
