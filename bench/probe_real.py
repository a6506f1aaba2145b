"""Quick screening of Pro-AD variants on the real sets (issue 14): short trainings on cached features.

``bench/accuracy.py`` is the full ablation (every real and generated category, the stored
threshold, AUPRO; about 12 minutes per variant on 2 cores). This is its scout: the real categories
only (tile and bottle from ``../shared/data``), one short training per variant (300 iterations by
default, about 3 minutes), and the readings that say *why* a variant wins or loses:

- image AUROC with the shipped score (mean of the top 1 % of the map) and with the map's maximum,
  per defect type, and pixel AUROC (on a fixed random 400,000 of the test pixels);
- each level's reconstruction error (mean ``1 - cos``) on training images and on good test images
  (``test_error``; until 2026-12-05 it was the last 96 test images, defective ones on the tiles): a
  decoder that cannot rebuild normal texture scores normal parts high, and no score rule then helps;
  one that rebuilds its training images much better than new good ones has learnt them, not the texture.

Encoder features are cached per (backbone, levels, size, resize, photometric) under
``bench/.cache/probe`` so the next variant trains at once. Variants are ``accuracy.VARIANTS`` names
or JSON ``ModelConfig`` overrides; ``--photometric`` standardises each picture's intensities first
(a preprocessing candidate, not a model option); ``--center`` subtracts the mean training feature
of every level (all categories together) before the decoder sees, rebuilds and compares it (a
loss-and-map candidate: the cosine then measures the deviation from the common mean);
``--standardise [LEVEL ...]`` also divides each channel by its spread over the training pictures,
so that no channel rules the cosine (every level, or only those given by index; README:
"Standardised feature channels"). Besides image and pixel AUROC,
each category's AUPRO over every pixel of its masks::

    python bench/probe_real.py --variants default pool3 no-constraint letterbox
    python bench/probe_real.py --variants '{"feature_pool": 5}' --iterations 1000

Results are appended to ``bench/results/probe_real.json`` (with ``.md``); rankings from 300
iterations are a scout's, the shipped numbers come from ``bench/accuracy.py`` and ``proad-eval``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import VARIANTS

from common import RESULTS, machine, real_roots, write_results
from proad.config import ModelConfig, TrainConfig
from proad.loss import proad_loss
from proad.metrics import aupro
from proad.model import ProAD, local_average
from proad.train import encode, lr_factor, open_categories

CACHE = Path(__file__).resolve().parent / ".cache" / "probe"
MODELS = CACHE / "models"  # each variant's trained decoder, to read other scores from it later


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)[:80]


def standardise(img: np.ndarray) -> np.ndarray:
    """Per-picture intensity standardisation (mean 128, std 48): equalises exposure between shots."""
    x = img.astype(np.float32)
    return np.clip((x - x.mean()) / (x.std() + 1e-3) * 48.0 + 128.0, 0, 255).astype(np.uint8)


def cached_features(model: ProAD, cfg: ModelConfig, folder: Any, photometric: bool) -> dict[str, Any]:
    """Raw (unpooled) encoder features of a category's train and test images, with masks and labels."""
    key = "_".join(
        map(
            str,
            (
                cfg.backbone,
                *cfg.feature_levels,
                "x".join(map(str, cfg.input_hw)),
                cfg.resize,
                folder.category,
                "std" if photometric else "raw",
            ),
        )
    )
    path = CACHE / f"{key}.pt"
    if path.is_file():
        return torch.load(path, weights_only=False)
    prep = standardise if photometric else (lambda x: x)
    loaded = [folder.load(item) for item in folder.test]
    data = {
        "train": encode_raw(model, [prep(folder.image(item)) for item in folder.train]),
        "test": encode_raw(model, [prep(img) for img, _ in loaded]),
        "masks": torch.from_numpy(np.stack([m for _, m in loaded])),
        "labels": np.array([item.label for item in folder.test]),
        "kinds": [item.kind for item in folder.test],
    }
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.save(data, path)
    return data


@torch.no_grad()
def encode_raw(model: ProAD, images: list[np.ndarray]) -> list[torch.Tensor]:
    """Encoder features without ``feature_pool`` (pooling is applied per variant)."""
    pool, model.cfg = model.cfg.feature_pool, model.cfg.model_copy(update={"feature_pool": 1})
    try:
        return encode(model, images, progress=False)
    finally:
        model.cfg = model.cfg.model_copy(update={"feature_pool": pool})


def pooled(levels: list[torch.Tensor], k: int) -> list[torch.Tensor]:
    return levels if k <= 1 else [local_average(f.float(), k).half() for f in levels]


def reconstruction_error(model: ProAD, feats: list[torch.Tensor]) -> list[float]:
    f = [lvl.float() for lvl in feats]
    recs = model.decode(f).reconstructions
    return [round(float((1 - F.cosine_similarity(a, b, dim=1)).mean()), 4) for a, b in zip(f, recs, strict=True)]


def centred(
    raw: dict[str, dict[str, Any]], scaled: bool = False, levels: Sequence[int] | None = None
) -> dict[str, dict[str, Any]]:
    """Every level of every category minus that level's mean training feature over all categories
    (with ``scaled`` also divided by each channel's spread over them: standardised channels); with
    ``levels`` only those levels (by index), the others as they are."""
    stats = []
    for level in range(len(next(iter(raw.values()))["train"])):
        if levels is not None and level not in levels:
            stats.append((torch.zeros(1), torch.ones(1)))
            continue
        f = torch.cat([d["train"][level] for d in raw.values()]).float()
        spread = f.std((0, 2, 3), keepdim=True) + 1e-6 if scaled else torch.ones(1)
        stats.append((f.mean((0, 2, 3), keepdim=True), spread))
    return {
        cat: {
            **d,
            **{
                part: [((f.float() - m) / s).half() for f, (m, s) in zip(d[part], stats, strict=True)]
                for part in ("train", "test")
            },
        }
        for cat, d in raw.items()
    }


def training_batches(categories: list[list[torch.Tensor]]) -> Callable[[np.random.Generator, int], list[torch.Tensor]]:
    """The training pictures' features of every category (each a list of levels) in one cache, and
    the draw ``batch(rng, size)`` of ``size`` random pictures from it, each level in fp32."""
    cache = [torch.cat(level) for level in zip(*categories, strict=True)]
    n = cache[0].shape[0]

    def batch(rng: np.random.Generator, size: int) -> list[torch.Tensor]:
        idx = torch.from_numpy(rng.integers(0, n, size))
        return [level[idx].float() for level in cache]

    return batch


def train_decoder(
    model: ProAD,
    cfg: ModelConfig,
    iterations: int,
    seed: int,
    train: dict[str, Any] | None,
    batch: Callable[[np.random.Generator, int], list[torch.Tensor]],
    desc: str,
    loss: Callable[..., tuple[torch.Tensor, dict[str, float]]] = proad_loss,
) -> float:
    """``proad-train``'s optimiser, schedule and loss over the batches ``batch(rng, size)`` draws
    (cached features of each level, fp32); the seconds it took. ``loss`` takes ``proad_loss``'s
    place (a candidate objective; same arguments)."""
    tcfg = TrainConfig(
        **{"warmup": min(100, iterations // 10), **(train or {}), "iterations": iterations, "seed": seed}
    )
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, tcfg))
    model.train()
    t0 = time.perf_counter()
    for step in tqdm(range(iterations), desc=desc, unit="it", leave=False):
        feats = batch(np.random.default_rng([seed, step]), tcfg.batch_size)
        value, _ = loss(feats, model.decode(feats), model.bank, cfg)
        opt.zero_grad(set_to_none=True)
        value.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
    return round(time.perf_counter() - t0, 1)


def decoder_file(
    name: str,
    iterations: int,
    seed: int,
    photometric: bool = False,
    center: bool = False,
    standardise: bool | list[int] = False,
) -> str:
    """Where a run keeps its decoder under :data:`MODELS`: one file per variant, length, seed and
    feature transform (a transformed run never overwrites the plain one that ``probe_memory`` reads)."""
    levels = "" if standardise is True else "".join(map(str, standardise or []))
    transform = "_photometric" * photometric + (f"_standardised{levels}" if standardise else "_centred" * center)
    return f"{_slug(name)}_{iterations}{f'_seed{seed}' if seed else ''}{transform}.pt"


def run_variant(
    name: str,
    cfg: ModelConfig,
    iterations: int,
    photometric: bool,
    seed: int,
    train: dict[str, Any] | None = None,
    center: bool = False,
    standardise: bool | list[int] = False,
) -> dict[str, Any]:
    torch.manual_seed(seed)
    model = ProAD(cfg)
    folders = open_categories(real_roots(), None, cfg.image_size, cfg.resize)
    raw = {f.category: cached_features(model, cfg, f, photometric) for f in folders}
    if center or standardise:
        raw = centred(raw, scaled=bool(standardise), levels=None if standardise in (True, False) else standardise)
    data = {}
    for category, d in raw.items():
        data[category] = {
            **d,
            "train": pooled(d["train"], cfg.feature_pool),
            "test": pooled(d["test"], cfg.feature_pool),
        }
    batch = training_batches([d["train"] for d in data.values()])
    seconds = train_decoder(model, cfg, iterations, seed, train, batch, name)
    result: dict[str, Any] = {
        "variant": name,
        "model_config": cfg.model_dump(mode="json"),  # in full: the defaults change (README, Presets)
        "train_config": train or {},
        "photometric": photometric,
        "center": center,
        "standardise": standardise,
        "iterations": iterations,
        "seed": seed,
        "train_seconds": seconds,
        "categories": {},
    }
    model.eval()
    MODELS.mkdir(parents=True, exist_ok=True)
    torch.save(
        {"model_config": cfg.model_dump(mode="json"), "state": model.trainable_state_dict()},
        MODELS / decoder_file(name, iterations, seed, photometric, center, standardise),
    )
    with torch.no_grad():
        for cat, d in data.items():
            maps = []
            for s in range(0, d["test"][0].shape[0], 32):
                f = [lvl[s : s + 32].float() for lvl in d["test"]]
                maps.append(model.anomaly_map(f, model.decode(f).reconstructions))
            good = np.array(d["kinds"]) == "good"
            m = torch.cat(maps)
            result["categories"][cat] = {
                **readings(m, d, cfg.score_top_fraction),
                "aupro": round(aupro(d["masks"].numpy() > 0, m.numpy()), 4),
                "train_error": reconstruction_error(model, [lvl[:96] for lvl in d["train"]]),
                "test_error": reconstruction_error(model, [lvl[torch.from_numpy(good)][:96] for lvl in d["test"]]),
            }
    return result


def readings(m: torch.Tensor, d: dict[str, Any], top_fraction: float) -> dict[str, Any]:
    """Image AUROC (top ``top_fraction`` and maximum), pixel AUROC on a fixed 400,000 pixels and image
    AUROC per defect type, of a category's test maps ``m`` ``[N, H, W]`` against ``d``'s labels and masks."""
    flat = m.flatten(1)
    top = flat.topk(max(1, round(flat.shape[1] * top_fraction)), dim=1).values.mean(1).numpy()
    labels, kinds = d["labels"], np.array(d["kinds"])
    pick = np.random.default_rng(0).choice(flat.numel(), min(400_000, flat.numel()), replace=False)
    good = kinds == "good"
    return {
        "image_auroc": round(float(roc_auc_score(labels, top)), 4),
        "image_auroc_max": round(float(roc_auc_score(labels, flat.max(1).values.numpy())), 4),
        "pixel_auroc": round(
            float(roc_auc_score(d["masks"].numpy().reshape(-1)[pick], m.numpy().reshape(-1)[pick])), 4
        ),
        "per_defect": {
            k: round(
                float(
                    roc_auc_score(
                        np.r_[np.zeros(good.sum()), np.ones((kinds == k).sum())], np.r_[top[good], top[kinds == k]]
                    )
                ),
                3,
            )
            for k in sorted(set(kinds))
            if k != "good"
        },
    }


def table(runs: list[dict[str, Any]]) -> str:
    cats = sorted({c for r in runs for c in r["categories"]})
    cells = (f"{c} img (max) / px | {c} rec. error train/good test" for c in cats)
    head = "| variant | iters | " + " | ".join(cells) + " |"
    lines = [head, "|" + "---|" * (2 + 2 * len(cats))]
    for r in runs:
        cells = []
        for c in cats:
            v = r["categories"].get(c)
            if v is None:
                cells += ["", ""]
                continue
            cells.append(
                f"{v['image_auroc']:.3f} ({v['image_auroc_max']:.3f}) / {v['pixel_auroc']:.3f}"
                + (f" / AUPRO {v['aupro']:.3f}" if "aupro" in v else "")
            )
            cells.append(" ".join(f"{a:.3f}/{b:.3f}" for a, b in zip(v["train_error"], v["test_error"], strict=True)))
        label = (
            r["variant"] + (" +photometric" if r.get("photometric") else "") + (" +center" if r.get("center") else "")
            + (" +standardised" if r.get("standardise") else "")
            + (f" level {r['standardise']}" if isinstance(r.get("standardise"), list) else "")
        )
        label += f", seed {r['seed']}" if r.get("seed") else ""  # runs before seeds were recorded: seed 0
        lines.append(f"| {label} | {r['iterations']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def earlier_runs(name: str) -> list[dict[str, Any]] | None:
    """The runs already in ``bench/results/<name>.json`` (new ones are appended), or None, said on
    stderr, where ``../shared/data`` holds no real set to probe. Sets torch to the machine's 2 threads."""
    if not real_roots():
        print("no real data under ../shared/data: nothing to probe", file=sys.stderr)
        return None
    torch.set_num_threads(2)
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text())["runs"] if path.is_file() else []


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--variants",
        nargs="+",
        default=["default"],
        help=f"names ({', '.join(VARIANTS)}) or JSON ModelConfig overrides",
    )
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--train", default="{}", help="JSON TrainConfig overrides for every variant, e.g. '{\"lr\": 0.004}'"
    )
    ap.add_argument("--photometric", action="store_true", help="standardise each picture's intensities first")
    ap.add_argument("--center", action="store_true", help="subtract every level's mean training feature first")
    ap.add_argument(
        "--standardise",
        nargs="*",
        type=int,
        metavar="LEVEL",
        help="centre, then divide each channel by its training spread (only the levels given by index, e.g. 1)",
    )
    ap.add_argument("--name", default="probe_real", help="results file stem under bench/results")
    args = ap.parse_args(argv)
    runs = earlier_runs(args.name)
    if runs is None:
        return 2
    for spec in args.variants:
        if spec.startswith("{"):
            overrides, name = json.loads(spec), spec
        elif spec in VARIANTS:
            overrides, name = VARIANTS[spec][1], spec
        else:
            print(f"unknown variant {spec!r} (known: {', '.join(VARIANTS)})", file=sys.stderr)
            return 2
        train = json.loads(args.train)
        if train:
            name += f" train {json.dumps(train, separators=(',', ':'))}"
        run = run_variant(
            name,
            ModelConfig(**overrides),
            args.iterations,
            args.photometric,
            args.seed,
            train,
            args.center,
            True if args.standardise == [] else (args.standardise or False),
        )
        runs.append(run)
        write_results(args.name, {"machine": machine(), "runs": runs}, table(runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
