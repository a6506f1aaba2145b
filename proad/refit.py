"""Refit: a trained decoder read another way, without training it again (``proad-train --from``).

Some of a model's settings change only how its maps are read, not what its decoder learnt: the
memory of normal patches beside the reconstruction (add one, change its bank or grid, take it out),
the map's smoothing and pooling, the image score's top fraction, and the false-alarm rate its
thresholds are set for. Trying one of them used to cost a training run (about ten minutes for the
shared real sets, and another seed's worth of noise in any comparison); a refit keeps the decoder bit
for bit and redoes only what follows training: the training pictures are encoded again from the
roots the checkpoint records (or others given), split exactly as training split them (its seed and
hold-out fraction), the memory is filled and weighed, and the thresholds are calibrated on the
held-out pictures (:func:`proad.train.read_normal`, the very code ``proad-train`` runs after its
last step). So what a refit writes is what ``proad-train`` would have written with those settings
and the same decoder; with nothing changed, the same checkpoint.

A refit refuses a data set that no longer matches the checkpoint's record (other categories, other
numbers of training pictures, other files, another tiling) instead of calibrating a threshold on
pictures the decoder was trained on. (Files are checked by name and size, for checkpoints written
since refits exist; older ones by their counts.)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from proad.checkpoint import Checkpoint, build_model, load_checkpoint, save_checkpoint
from proad.config import READING_FIELDS, ModelConfig, TrainConfig, format_validation_error
from proad.data.tiling import NO_TILING
from proad.model import ProAD
from proad.train import choose_grids, encode_splits, open_categories, read_normal, split_holdout


class RefitError(ValueError):
    """A refit that cannot be done as asked; the message says why and what to do instead."""


def refit(
    source: str | Path,
    out: str | Path,
    reading: Mapping[str, Any] | None = None,
    target_false_alarm: float | None = None,
    roots: Sequence[str | Path] | None = None,
    threads: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> Checkpoint:
    """Write to ``out`` the checkpoint at ``source`` with its decoder kept, ``reading`` (fields of
    :data:`~proad.config.READING_FIELDS`) changed, its memory refilled and its thresholds recalibrated
    (for ``target_false_alarm`` if given, else the rate it was trained for). ``roots``: where the
    training pictures are now (default: the roots the checkpoint records).

    Raises :class:`RefitError` for a field that needs training, a checkpoint that does not record its
    training, or data that no longer match that record; pydantic's ``ValidationError`` for a bad
    value; :class:`~proad.checkpoint.CheckpointError` for an unreadable checkpoint."""
    t0 = time.perf_counter()
    reading = dict(reading or {})
    other = sorted(set(reading) - set(READING_FIELDS))
    if other:
        raise RefitError(f"a refit keeps the trained decoder, so it changes only how the map is read "
                         f"({', '.join(READING_FIELDS)}); {', '.join(other)} need training")  # fmt: skip
    if Path(out).resolve() == Path(source).resolve():
        raise RefitError(f"{out}: write the refit to another file; its source stays as it was")
    src = load_checkpoint(source)
    info = src.train_info
    recorded = info.get("categories")
    if not isinstance(recorded, dict) or "train_config" not in info or not (roots or info.get("data")):
        raise RefitError(f"{source}: does not record its training data and split (not written by proad-train, "
                         "or by an older one): train it again instead")  # fmt: skip
    try:
        train_cfg = TrainConfig.model_validate(info["train_config"])
    except ValidationError as exc:
        why = format_validation_error(exc)
        raise RefitError(f"{source}: its recorded train_config is invalid: {why}") from exc
    trained_rate = train_cfg.target_false_alarm
    if target_false_alarm is not None:
        train_cfg = TrainConfig.model_validate({**train_cfg.model_dump(), "target_false_alarm": target_false_alarm})
    if threads is not None:  # validated as training validates it; the recorded training threads stay
        TrainConfig(threads=threads)
        torch.set_num_threads(threads)
    cfg = ModelConfig.model_validate({**src.model_config.model_dump(), **reading})

    data = [str(r) for r in (roots or info["data"])]
    order = list(recorded)
    folders = open_categories(data, order, cfg.image_size, cfg.resize)
    folders.sort(key=lambda f: order.index(f.category))  # training's order, whatever the roots' order now
    grids = choose_grids(folders, cfg)
    splits = [split_holdout(f, train_cfg.holdout_fraction, train_cfg.seed) for f in folders]
    trained_grids = {name: tuple(g) for name, g in info.get("category_tiles", {}).items()}
    digests = info.get("train_files", {})
    for s in splits:
        name, was = s.folder.category, recorded[s.folder.category]
        now = {"fit": len(s.fit), "holdout": len(s.holdout)}
        if now != {"fit": was.get("fit"), "holdout": was.get("holdout")}:
            raise RefitError(f"{name}: {now['fit']} fitted + {now['holdout']} held-out training pictures under "
                             f"{', '.join(data)}, the checkpoint was trained on {was.get('fit')} + "
                             f"{was.get('holdout')}: the data changed, train again")  # fmt: skip
        if name in digests and digests[name] != s.folder.train_digest():
            raise RefitError(f"{name}: its training pictures under {', '.join(data)} are not the ones the checkpoint "
                             "was trained on (other file names or sizes): the data changed, train again")  # fmt: skip
        if trained_grids.get(name, NO_TILING) != grids[name]:
            raise RefitError(f"{name}: its pictures would now be cut into {grids[name]} tiles, the checkpoint "
                             f"was trained on {trained_grids.get(name, NO_TILING)}: the data changed")  # fmt: skip

    trained = build_model(src)  # the checkpoint's own checks: every weight present, shaped to its config
    model = ProAD(cfg).eval()  # a reading changes no decoder shape, so the trained decoder loads as it is
    model.load_state_dict({k: v for k, v in trained.trainable_state_dict().items() if not k.startswith("memory_")},
                          strict=False)  # fmt: skip

    t1 = time.perf_counter()
    cache, holdout_feats = encode_splits(model, splits, train_cfg, progress=progress)
    encode_s = time.perf_counter() - t1
    normal = read_normal(model, cache, holdout_feats, grids, train_cfg, log)
    changed: dict[str, Any] = {k: getattr(cfg, k) for k in reading if getattr(cfg, k) != getattr(src.model_config, k)}
    if train_cfg.target_false_alarm != trained_rate:
        changed["target_false_alarm"] = train_cfg.target_false_alarm
    ckpt = Checkpoint(
        model_config=cfg,
        state_dict=model.trainable_state_dict(),
        threshold=normal.threshold,
        normalisation={**src.normalisation, **normal.normalisation()},
        train_info={  # the decoder's training as it was; what the refit redid, and how, under "refit"
            **info,
            "data": [str(Path(r).resolve()) for r in data],
            "train_config": train_cfg.model_dump(mode="json"),
            "category_thresholds": normal.category_thresholds,
            "threshold_source": normal.source,
            "memory": normal.memory,
            "refit": {
                "from": str(Path(source).resolve()),
                "from_sha256": src.sha256,
                "changed": changed,
                "encode_seconds": round(encode_s, 1),
                "seconds": round(time.perf_counter() - t0, 1),
                "threads": torch.get_num_threads(),
                "torch": str(torch.__version__),
            },
        },
    )
    save_checkpoint(ckpt, out)
    log(f"refitted {source}: {changed or 'nothing changed'}; threshold {normal.threshold:.4f} ({normal.source})")
    return ckpt
