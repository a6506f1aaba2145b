"""Command-line tools: ``proad-synth``, ``proad-train``, ``proad-eval``.

Exit codes mean the same in every tool:

- 0  done;
- 1  failed while working (a bug or an environment problem; the traceback is printed);
- 2  bad input: arguments, config, dataset layout, image or checkpoint files (one line says what);
- 130 interrupted (Ctrl-C).

``python -m proad.cli synth|train|eval ARGS`` runs the same tools; training on several processes
is ``torchrun --standalone --nproc-per-node R -m proad.cli train ARGS`` (or ``torchrun ...
$(which proad-train) ARGS``; :mod:`proad.distributed`). There each rank exits with these codes and
torchrun itself with 1 when any rank failed.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from proad.clikit import Failure, run_command, say
from proad.config import READING_FIELDS
from proad.presets import DEFAULT_PRESET, PRESETS

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(ValueError):
    """Bad command-line input found after parsing (exit 2)."""


def _failures() -> list[Failure]:
    from proad.backbone import BackboneError
    from proad.checkpoint import CheckpointError
    from proad.config import format_validation_error
    from proad.data.folder import DatasetError
    from proad.distributed import DistributedError
    from proad.refit import RefitError

    bad = say("error: ")
    return [
        (ValidationError, EXIT_BAD_INPUT, lambda e: f"error: invalid config: {format_validation_error(e)}"),
        *[
            (kind, EXIT_BAD_INPUT, bad)
            for kind in (DatasetError, CheckpointError, BackboneError, UsageError, DistributedError, RefitError)
        ],
    ]


def _run(prog: str, body: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    return run_command(prog, body, args, _failures())


def _parse_sets(pairs: Sequence[str]) -> dict[str, Any]:
    """``key=value`` pairs; values are JSON when they parse as JSON (numbers, lists, null)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--set expects key=value, got {pair!r}")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


# ------------------------------------------------------------------------------------------------
# proad-synth


def synth_parser() -> argparse.ArgumentParser:
    from proad.data.synth import CATEGORIES

    p = argparse.ArgumentParser(
        prog="proad-synth",
        description="Write a synthetic inspection dataset (MVTec-AD layout) with exact defect masks.",
    )
    p.add_argument("--out", required=True, type=Path, help="output folder (created)")
    p.add_argument("--categories", nargs="+", default=list(CATEGORIES), help=f"default: {' '.join(CATEGORIES)}")
    p.add_argument("--train", type=int, default=100, help="normal training images per category (default 100)")
    p.add_argument("--test-good", type=int, default=20, help="normal test images per category (default 20)")
    p.add_argument("--test-per-defect", type=int, default=8, help="test images per defect kind (default 8)")
    p.add_argument("--seed", type=int, default=0, help="dataset seed; the same seed writes the same files")
    p.add_argument("--hard", action="store_true",
                   help="small, faint defects on large grayscale non-square images (a set that still ranks methods)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _synth(args: argparse.Namespace) -> int:
    from proad.data.synth import CATEGORIES, write_dataset

    unknown = [c for c in args.categories if c not in CATEGORIES]
    if unknown:
        raise UsageError(f"unknown categories {unknown}; known: {', '.join(CATEGORIES)}")
    if min(args.train, args.test_good, args.test_per_defect) < 0 or args.train < 1:
        raise UsageError("--train must be >= 1 and the test counts >= 0")
    root = write_dataset(args.out, args.categories, args.train, args.test_good, args.test_per_defect, args.seed,
                         progress=not args.quiet, hard=args.hard)
    print(f"wrote {len(args.categories)} categories to {root}")
    return EXIT_OK


def synth_main(argv: Sequence[str] | None = None) -> int:
    args = synth_parser().parse_args(argv)
    return _run("proad-synth", _synth, args)


def _add_common(p: argparse.ArgumentParser, data_help: str | None = None) -> None:
    """Arguments proad-train and proad-eval share: the data, and how to run (``data_help``: the data is
    optional, and this says what stands in for it)."""
    p.add_argument("--data", required=data_help is None, nargs="+", type=Path,
                   help="dataset root(s) in the MVTec-AD layout" + (f" ({data_help})" if data_help else ""))
    p.add_argument("--categories", nargs="+", help="only these categories (default: all found)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


# ------------------------------------------------------------------------------------------------
# proad-train


def train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="proad-train",
        description="Train one Pro-AD model on every category of one or more MVTec-AD-layout roots "
        "(multi-class), calibrate its OK/NG threshold on held-out normal images, write a checkpoint.",
    )
    _add_common(p, data_help="required, except with --from: the roots its checkpoint records")
    p.add_argument("--out", required=True, type=Path, help="checkpoint to write (.pt)")
    p.add_argument("--from", dest="refit_from", type=Path, metavar="CHECKPOINT",
                   help="refit instead of training: keep this checkpoint's decoder, change only how its map is read "
                        f"(--set {', '.join(READING_FIELDS)}; e.g. add a memory) and recalibrate its thresholds "
                        "(--target-false-alarm): minutes instead of a training run; the training pictures are "
                        "encoded again and split as training split them (README, Command-line tools)")
    p.add_argument("--preset", choices=sorted(PRESETS),
                   help="starting point: " + "; ".join(f"{x.name}: {x.summary}" for x in PRESETS.values())
                   + f" (default {DEFAULT_PRESET}); --model-config, --set and the flags below override it")
    p.add_argument("--model-config", type=Path, help="ModelConfig as JSON or YAML")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="override ModelConfig fields")
    p.add_argument("--iterations", type=int, help="training iterations (default: the preset's, 5000 or 6000)")
    p.add_argument("--batch-size", type=int, help="images per iteration (default: the preset's, 8)")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--seed", type=int, help="seed (batches, dropout, hold-out split)")
    p.add_argument("--checkpoint-every", type=int, help="iterations between resumable snapshots")
    p.add_argument("--shift-copies", type=int, help="translated copies of each training image (default 0)")
    p.add_argument("--target-false-alarm", type=float,
                   help="share of normal parts each category's threshold may reject (default 0.01)")
    p.add_argument("--holdout-fraction", type=float,
                   help="share of each category's train/good held out to set its threshold (default 0.1; more "
                        "images estimate a 1 %% tail better, README: Thresholds from few held-out images)")
    p.add_argument("--resume", action="store_true", help="continue from OUT.resume if it exists")
    return p


#: proad-train options that set how a decoder is trained, which a refit (``--from``) keeps as it was.
TRAINING_OPTIONS = ("preset", "model_config", "iterations", "batch_size", "lr", "seed", "checkpoint_every",
                    "shift_copies", "holdout_fraction", "resume", "categories")  # fmt: skip


def _refit(args: argparse.Namespace) -> int:
    from proad.distributed import from_env
    from proad.refit import refit

    given = [f"--{name.replace('_', '-')}" for name in TRAINING_OPTIONS
             if getattr(args, name) is not None and getattr(args, name) is not False]  # fmt: skip
    if given:
        raise UsageError(f"--from keeps the trained decoder, so {', '.join(given)} cannot apply; "
                         "train a new model instead")  # fmt: skip
    if from_env().size > 1:
        raise UsageError("--from runs in one process, not under torchrun")
    refit(args.refit_from, args.out, _parse_sets(args.set), args.target_false_alarm, args.data, args.threads,
          progress=not args.quiet)  # fmt: skip
    print(f"wrote {args.out}")
    return EXIT_OK


def _train(args: argparse.Namespace) -> int:
    from proad.config import load_config_file
    from proad.distributed import from_env
    from proad.presets import preset_configs
    from proad.train import train

    if args.refit_from is not None:
        return _refit(args)
    if not args.data:
        raise UsageError("--data is required (the dataset roots to train on)")
    model_fields: dict[str, Any] = {}
    if args.model_config:
        try:
            model_fields = load_config_file(args.model_config)
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot read --model-config {args.model_config}: {exc}") from exc
    model_fields.update(_parse_sets(args.set))
    names = ("iterations", "batch_size", "lr", "seed", "threads", "checkpoint_every", "shift_copies",
             "target_false_alarm", "holdout_fraction")
    given = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    preset = args.preset or DEFAULT_PRESET
    model_cfg, train_cfg = preset_configs(preset, model_fields, given)
    train(args.data, args.out, model_cfg, train_cfg, args.categories, resume=args.resume, progress=not args.quiet,
          preset=preset)
    if from_env().is_main:  # under torchrun, rank 0 wrote it
        print(f"wrote {args.out}")
    return EXIT_OK


def train_main(argv: Sequence[str] | None = None) -> int:
    args = train_parser().parse_args(argv)
    return _run("proad-train", _train, args)


# ------------------------------------------------------------------------------------------------
# proad-eval


def eval_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="proad-eval",
        description="Evaluate a Pro-AD checkpoint on MVTec-AD-layout test sets: image and pixel AUROC/AP/F1-max "
        "and AUPRO per category and mean; prints a table, writes JSON and optional overlays.",
    )
    _add_common(p)
    p.add_argument("--checkpoint", required=True, type=Path, help="checkpoint written by proad-train")
    p.add_argument("--json", type=Path, help="write the metrics here as JSON")
    p.add_argument("--table", type=Path, help="write the Markdown table here")
    p.add_argument("--viz", type=Path, help="write anomaly-map overlay PNGs per category here")
    p.add_argument("--threshold", type=float, help="OK/NG threshold instead of the calibrated ones")
    return p


def _eval(args: argparse.Namespace) -> int:
    import torch

    from proad.checkpoint import load_model
    from proad.evaluate import at_threshold_lines, evaluate, format_table
    from proad.train import open_categories

    if args.threads:
        torch.set_num_threads(args.threads)
    model, ckpt = load_model(args.checkpoint)
    cfg = ckpt.model_config
    folders = open_categories(args.data, args.categories, cfg.image_size, cfg.resize, ckpt.category_tiles)
    per_cat = None if args.threshold is not None else ckpt.train_info.get("category_thresholds")
    threshold = args.threshold if args.threshold is not None else ckpt.threshold
    result = evaluate(model, folders, threshold, per_cat, args.viz, progress=not args.quiet)
    result["checkpoint"] = {"path": str(args.checkpoint), "sha256": ckpt.sha256, "threshold": threshold}
    table = format_table(result)
    print(table)
    print(at_threshold_lines(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    if args.table:
        args.table.parent.mkdir(parents=True, exist_ok=True)
        args.table.write_text(table + "\n")
    return EXIT_OK


def eval_main(argv: Sequence[str] | None = None) -> int:
    args = eval_parser().parse_args(argv)
    return _run("proad-eval", _eval, args)


# ------------------------------------------------------------------------------------------------
# python -m proad.cli TOOL ARGS (what torchrun -m runs)

TOOLS: dict[str, Callable[[Sequence[str] | None], int]] = {"synth": synth_main, "train": train_main, "eval": eval_main}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m proad.cli synth|train|eval ARGS``: the tool's ``*_main`` with the rest."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in TOOLS:
        asked = args[:1] in (["-h"], ["--help"])
        print(f"usage: python -m proad.cli {{{','.join(TOOLS)}}} ARGS (each tool has --help)",
              file=sys.stdout if asked else sys.stderr)  # fmt: skip
        return EXIT_OK if asked else EXIT_BAD_INPUT
    return TOOLS[args[0]](args[1:])


if __name__ == "__main__":
    sys.exit(main())
