"""Does keeping the texture's scale help? A scout for scale-keeping preprocessing (issue 14).

``resize: stretch`` squashes every picture to the input's square, so on a category whose pictures
vary in size (Magnetic Tile: 222-388 x 109-617 px) the texture reaches the encoder at a different
scale and shape in every picture, and the normal error level moves with the picture's native size
(README: "It is the picture's size"). ``letterbox`` keeps the aspect but still scales every picture
by its own factor. This probe keeps *one* scale per category instead:

- the category's scale ``s`` maps its median training picture's area onto the input's area
  (256 x 256: ``s = 256 / sqrt(h * w)``; 1 for MVTec AD bottle, whose pictures are 256 x 256);
- every picture is resized by ``s`` (aspect kept), mirrored at its right and bottom edges up to at
  least 256 px and a multiple of 16 (the encoder's coarsest stride), and encoded whole;
- training takes random 256 x 256 windows of those feature maps (a 16 x 16 token crop), eight
  pictures a step, exactly ``bench/probe_real.py``'s loop otherwise;
- evaluation runs the decoder over each test picture whole (the model has no positions: its token
  grid is whatever the picture gives), crops the mirrored margin off the map, and stretches the
  map to 256 x 256, where the masks, the score (top 1 %) and the 400,000 sampled pixels are those
  of ``bench/probe_real.py`` (so its rows compare with this one's).

On a camera, whose frames all have one size, this is ``stretch`` or a rectangular input; it only
differs where pictures of one category vary in size. Results go to ``bench/results/probe_scale.*``::

    python bench/probe_scale.py --iterations 5000 --train '{"batch_size": 8}'
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import model_fields
from probe_real import CACHE, earlier_runs, encode_raw, pooled, readings, reconstruction_error, table, train_decoder

from common import machine, real_roots, write_results
from proad.config import ModelConfig, TrainConfig
from proad.data.folder import MVTecFolder, _read_raw
from proad.model import ProAD
from proad.train import open_categories

STRIDE = 16  # the coarsest level's stride: padded sizes are multiples of it, crops start on it


def category_scale(shapes: list[tuple[int, ...]], side: int | None) -> float:
    """The one scale of a category: its median training picture's area (``shapes``: each training
    picture's ``(height, width, ...)``) onto ``side`` squared (``None``: the native scale, 1)."""
    if side is None:
        return 1.0
    hw = np.array([shape[:2] for shape in shapes])
    h, w = np.median(hw[:, 0]), np.median(hw[:, 1])
    return side / math.sqrt(float(h) * float(w))


def scaled_padded(img: np.ndarray, scale: float, side: int) -> tuple[np.ndarray, tuple[int, int]]:
    """``img`` resized by ``scale`` and mirrored right and down to >= ``side`` and a multiple of 16;
    with the scaled picture's (height, width) (the part of the result that is the picture)."""
    h, w = max(1, round(img.shape[0] * scale)), max(1, round(img.shape[1] * scale))
    if (h, w) != img.shape[:2]:
        img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    out_h = max(side, math.ceil(h / STRIDE) * STRIDE)
    out_w = max(side, math.ceil(w / STRIDE) * STRIDE)
    padded = np.pad(img, ((0, out_h - h), (0, out_w - w), (0, 0)), mode="symmetric")
    return np.ascontiguousarray(padded), (h, w)


def encode_each(model: ProAD, images: list[np.ndarray]) -> list[list[torch.Tensor]]:
    """Raw (unpooled) features of each picture alone (their sizes differ), fp16, ``[1, C, h, w]`` per level."""
    return [encode_raw(model, [img]) for img in tqdm(images, desc="encode", unit="img", leave=False)]


def cached_scaled(model: ProAD, cfg: ModelConfig, folder: MVTecFolder, area_side: int | None) -> dict[str, Any]:
    side = min(cfg.input_hw)
    levels = "_".join(map(str, cfg.feature_levels))
    key = f"scale_{cfg.backbone}_{levels}_{side}_{area_side or 'native'}_{folder.category}"
    path = CACHE / f"{key}.pt"
    if path.is_file():
        return torch.load(path, weights_only=False)
    raw_train = [_read_raw(item.path) for item in folder.train]  # read once: for the scale and to encode
    scale = category_scale([img.shape for img in raw_train], area_side)
    train = [scaled_padded(img, scale, side)[0] for img in raw_train]
    test, hw = [], []
    masks = []
    for item in folder.test:
        img, h_w = scaled_padded(_read_raw(item.path), scale, side)
        test.append(img)
        hw.append(h_w)
        masks.append(folder.load(item)[1])  # the stretched 256 x 256 mask, as bench/probe_real.py scores
    data = {
        "scale": scale,
        "train": encode_each(model, train),
        "test": encode_each(model, test),
        "test_hw": hw,
        "masks": torch.from_numpy(np.stack(masks)),
        "labels": np.array([item.label for item in folder.test]),
        "kinds": [item.kind for item in folder.test],
    }
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.save(data, path)
    return data


def random_window(
    levels: list[torch.Tensor], strides: list[int], side: int, rng: np.random.Generator
) -> list[torch.Tensor]:
    """One ``side`` x ``side`` window (in input pixels) of a picture's feature levels, on the 16 px grid."""
    rows, cols = levels[-1].shape[-2] * strides[-1] // STRIDE, levels[-1].shape[-1] * strides[-1] // STRIDE
    n = side // STRIDE
    r, c = int(rng.integers(0, rows - n + 1)), int(rng.integers(0, cols - n + 1))
    out = []
    for f, s in zip(levels, strides, strict=True):
        k = STRIDE // s
        out.append(f[..., r * k : (r + n) * k, c * k : (c + n) * k])
    return out


def window_error(model: ProAD, pictures: list[list[torch.Tensor]], strides: list[int], side: int) -> list[float]:
    """Mean reconstruction error per level over one fixed window of each picture (picture i's from seed i)."""
    windows = [random_window(p, strides, side, np.random.default_rng(i)) for i, p in enumerate(pictures)]
    return reconstruction_error(model, [torch.cat(level) for level in zip(*windows, strict=True)])


def run(cfg: ModelConfig, iterations: int, seed: int, train: dict[str, Any], area_side: int | None) -> dict[str, Any]:
    torch.manual_seed(seed)
    model = ProAD(cfg)
    side = min(cfg.input_hw)
    folders = open_categories(real_roots(), None, cfg.image_size, cfg.resize)
    data = {}
    for folder in folders:
        d = cached_scaled(model, cfg, folder, area_side)
        d["train"] = [pooled(levels, cfg.feature_pool) for levels in d["train"]]
        d["test"] = [pooled(levels, cfg.feature_pool) for levels in d["test"]]
        data[folder.category] = d
    pictures = [levels for d in data.values() for levels in d["train"]]
    strides = list(model.level_strides)

    def batch(rng: np.random.Generator, size: int) -> list[torch.Tensor]:
        windows = [random_window(pictures[i], strides, side, rng) for i in rng.integers(0, len(pictures), size)]
        return [torch.cat(level).float() for level in zip(*windows, strict=True)]

    seconds = train_decoder(model, cfg, iterations, seed, train, batch, "keep-scale")
    result: dict[str, Any] = {
        "variant": f"keep-scale, median area onto {area_side}²" if area_side else "keep-scale, native size",
        "model_config": cfg.model_dump(mode="json"),
        "train_config": train,
        "iterations": iterations,
        "seed": seed,
        "train_seconds": seconds,
        "categories": {},
    }
    model.eval()
    state = model.trainable_state_dict()
    sized: dict[tuple[int, int], ProAD] = {}
    with torch.no_grad():
        for cat, d in data.items():
            maps = []
            for levels, (h, w) in zip(d["test"], d["test_hw"], strict=True):
                size = (levels[-1].shape[-2] * strides[-1], levels[-1].shape[-1] * strides[-1])
                if size not in sized:
                    sized[size] = ProAD(cfg.model_copy(update={"image_size": size}), encoder=model.encoder)
                    keys = sized[size].load_state_dict(state, strict=False)
                    assert not keys.unexpected_keys and all(
                        k.startswith(("encoder.", "input_norm.", "blur")) for k in keys.missing_keys
                    ), keys
                    sized[size].eval()
                net = sized[size]
                f = [lvl.float() for lvl in levels]
                m = net.anomaly_map(f, net.decode(f).reconstructions)[:, :h, :w]
                maps.append(F.interpolate(m[None], size=(side, side), mode="bilinear", align_corners=False)[0])
            good_test = [p for p, k in zip(d["test"], d["kinds"], strict=True) if k == "good"]
            result["categories"][cat] = {
                "scale": round(d["scale"], 4),
                **readings(torch.cat(maps), d, cfg.score_top_fraction),
                "train_error": window_error(model, d["train"][:96], strides, side),
                "test_error": window_error(model, good_test[:96], strides, side),
            }
    return result


def train_fields(text: str) -> dict[str, Any]:
    """``--train``: a JSON object of TrainConfig fields, validated before any encoding."""
    try:
        return TrainConfig.model_validate(json.loads(text)).model_dump(exclude_unset=True)
    except (json.JSONDecodeError, ValidationError) as exc:
        raise argparse.ArgumentTypeError(f"want a JSON object of TrainConfig fields ({exc})") from None


def area_side_arg(text: str) -> int | None:
    """``--area-side``: a side in pixels, or ``native`` (``None``: scale 1)."""
    if text == "native":
        return None
    if not text.isdigit() or int(text) < STRIDE:
        raise argparse.ArgumentTypeError(f"must be 'native' or a side of at least {STRIDE} px, got {text!r}")
    return int(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", type=model_fields, default={}, help="JSON ModelConfig overrides")
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--train", type=train_fields, default={}, help="JSON TrainConfig overrides, e.g. '{\"batch_size\": 8}'"
    )
    ap.add_argument(
        "--area-side",
        type=area_side_arg,
        default=256,
        help="the side whose square each category's median training picture is scaled onto, or 'native' (scale 1)",
    )
    ap.add_argument("--name", default="probe_scale", help="results file stem under bench/results")
    args = ap.parse_args(argv)
    cfg = ModelConfig(**args.model)
    if len(set(cfg.input_hw)) != 1:
        ap.error("--model: a square image_size only (the maps are compared with the probe's square masks)")
    runs = earlier_runs(args.name)
    if runs is None:
        return 2
    runs.append(run(cfg, args.iterations, args.seed, args.train, args.area_side))
    write_results(args.name, {"machine": machine(), "runs": runs}, table(runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
