"""How long ``make demo`` trains its model, and what a new user then sees.

``make demo`` is the first thing a user runs: it generates a small dataset, trains the demo model,
evaluates and exports it, and runs the daemon on a synthetic circuit-board camera. A model trained
too briefly shows that user a detector that misses defects and rejects good boards. This script
runs the demo's own commands (``proad-synth``, ``proad-train``, ``proad-eval``, ``proad-export onnx``,
``proad-edge demo``) for each candidate recipe and reports, per candidate: the training time, the
evaluation on the generated test set (image AUROC, AUPRO, and defects missed / good pictures
rejected at the stored thresholds, summed over the categories), and the demo camera's summary
(injected defects found, false alarms on normal frames).

The camera cycles a pool of 48 rendered frames (``SyntheticSource.pool``), so its counts come from
about 48 distinct frames, each seen about a dozen times in 20 s: one misjudged frame is 2-3 %.

    python bench/demo_training.py [--candidate ITERATIONS:BATCH:TRAIN_PICTURES:SEED ...] [--name demo_training]

Writes ``bench/results/NAME.json`` and ``NAME.md``. Exit codes: 0 done, 1 a step failed (its log is
named), 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, write_results

BIN = Path(sys.executable).parent
#: the recipes measured on 2026-12-06; the first was the demo's until then, the fifth replaced it
CANDIDATES = ["400:16:60:0", "1200:8:60:0", "800:16:60:0", "2000:8:60:0", "2000:8:100:0", "2000:8:100:1",
              "2000:8:60:1"]  # fmt: skip
SUMMARY = {
    "found": re.compile(r"defects injected: (\d+); found \(NG\): (\d+)"),
    "false_alarms": re.compile(r"normal frames: (\d+); false alarms \(NG\): (\d+)"),
}


class StepFailed(RuntimeError):
    """One of the demo's commands exited non-zero."""


def parse_candidate(text: str) -> dict[str, int]:
    """``ITERATIONS:BATCH:TRAIN_PICTURES:SEED`` as a dict; ValueError when malformed."""
    parts = text.split(":")
    if len(parts) != 4 or not all(p.isdigit() for p in parts) or 0 in map(int, parts[:3]):
        raise ValueError(f"--candidate expects ITERATIONS:BATCH:TRAIN_PICTURES:SEED (integers, the first three "
                         f"positive), got {text!r}")
    iterations, batch, train, seed = map(int, parts)
    return {"iterations": iterations, "batch_size": batch, "train_pictures": train, "seed": seed}


def step(args: list[str], log: Path) -> str:
    """Run one of the demo's commands, its output into ``log``; StepFailed names the log."""
    with open(log, "w") as out:
        code = subprocess.call(args, stdout=out, stderr=subprocess.STDOUT)
    if code:
        raise StepFailed(f"{Path(args[0]).name} exited {code}; see {log}")
    return log.read_text()


def demo_summary(text: str) -> dict[str, int]:
    """The counts of ``proad-edge demo``'s summary."""
    out: dict[str, int] = {}
    for key, pattern in SUMMARY.items():
        match = pattern.search(text)
        if not match:
            raise StepFailed(f"no '{key}' line in the demo's summary")
        total, hits = map(int, match.groups())
        out.update({f"{key}_of": total, key: hits})
    return out


def measure(candidate: dict[str, int], data: Path, work: Path, seconds: float) -> dict[str, Any]:
    """Train, evaluate, export and run the demo for one candidate in ``work``."""
    work.mkdir(parents=True)
    (work / "data").symlink_to(data)
    model = work / "model.pt"
    t0 = time.perf_counter()
    step([str(BIN / "proad-train"), "--data", str(data), "--out", str(model), "--quiet",
          "--iterations", str(candidate["iterations"]), "--batch-size", str(candidate["batch_size"]),
          "--seed", str(candidate["seed"])], work / "train.log")  # fmt: skip
    train_s = time.perf_counter() - t0
    step([str(BIN / "proad-eval"), "--data", str(data), "--checkpoint", str(model), "--json", str(work / "eval.json"),
          "--quiet"], work / "eval.log")  # fmt: skip
    step([str(BIN / "proad-export"), "onnx", "--checkpoint", str(model), "--out", str(work / "model.onnx")],
         work / "export.log")  # fmt: skip
    camera = demo_summary(step([str(BIN / "proad-edge"), "demo", "--workdir", str(work), "--seconds", str(seconds)],
                               work / "demo.log"))  # fmt: skip
    result = json.loads((work / "eval.json").read_text())
    cats = result["categories"]
    return {**candidate, "train_seconds": round(train_s, 1),
            "image_auroc": result["mean"]["image_auroc"], "aupro": result["mean"]["aupro"],
            "board_image_auroc": cats["board"]["image_auroc"],
            "missed_at_threshold": sum(c["missed_at_threshold"] for c in cats.values()),
            "defective": sum(c["defective"] for c in cats.values()),
            "rejected_at_threshold": sum(c["false_alarms_at_threshold"] for c in cats.values()),
            "good": sum(c["images"] - c["defective"] for c in cats.values()), "camera": camera}  # fmt: skip


def table(data: dict[str, Any]) -> str:
    m = data["machine"]
    lines = [
        "# The demo model's training recipe",
        "",
        f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores; `python bench/demo_training.py`. Each row: `make demo`'s "
        "commands with that recipe (iterations of a batch, generated training pictures per category, seed). "
        "Evaluation on the generated test set (5 categories, 10 good + 20-30 defective each); camera: 20 s of the "
        "demo's synthetic board camera (a pool of 48 frames cycled).",
        "",
        "| iterations x batch | pictures | seed | training s | img AUROC (board) | AUPRO | test: missed / rejected "
        "at threshold | camera: defects found | camera: false alarms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in data["runs"]:
        c = r["camera"]
        lines.append(
            f"| {r['iterations']} x {r['batch_size']} | {r['train_pictures']} | {r['seed']} | "
            f"{r['train_seconds']:.0f} | "
            f"{r['image_auroc']:.3f} ({r['board_image_auroc']:.3f}) | {r['aupro']:.3f} | "
            f"{r['missed_at_threshold']} of {r['defective']} / {r['rejected_at_threshold']} of {r['good']} | "
            f"{c['found']} of {c['found_of']} | {c['false_alarms']} of {c['false_alarms_of']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--candidate", nargs="+", default=CANDIDATES,
                   help="ITERATIONS:BATCH:TRAIN_PICTURES:SEED recipes (default: the seven measured)")
    p.add_argument("--seconds", type=float, default=20.0, help="the demo camera's run (default 20, as make demo)")
    p.add_argument("--name", default="demo_training", help="results file stem under bench/results")
    args = p.parse_args(argv)
    try:
        candidates = [parse_candidate(c) for c in args.candidate]
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    runs = []
    root = Path(tempfile.mkdtemp(prefix="demo_training_"))  # kept when a step fails: its logs are there
    try:
        for i, cand in enumerate(candidates):
            data = root / f"data{cand['train_pictures']}"
            if not data.is_dir():  # the demo's dataset, with this many training pictures
                step([str(BIN / "proad-synth"), "--out", str(data), "--train", str(cand["train_pictures"]),
                      "--test-good", "10", "--test-per-defect", "5", "--quiet"], root / "synth.log")  # fmt: skip
            print(f"candidate {i + 1}/{len(candidates)}: {cand}", flush=True)
            runs.append(measure(cand, data, root / f"run{i}", args.seconds))
    except StepFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    shutil.rmtree(root)
    data = {"machine": machine(), "runs": runs}
    write_results(args.name, data, table(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
