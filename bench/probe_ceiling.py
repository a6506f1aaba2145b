"""What could an encoder and input size give the tiles at best? A reading without training (issue 14).

Issue 14's tile bars (image AUROC >= 0.95, pixel AUROC >= 0.90, AUPRO >= 0.85) were set from
papers on other encoders. Before training decoders on a bigger encoder or input again, this asks
what the *features* of each candidate hold, read by a memory of normal patches instead of a
decoder (no training, two to six minutes a candidate), on the real sets in ``../shared/data``:

- **memory, L2** (PatchCore's reading): each stride-8 patch (both levels 3 x 3-averaged with zero
  padding counted, the coarse level upsampled, concatenated) against a greedy coreset of 1 % of
  its category's patches (90 % of the training pictures; the other 10 % unused, as in
  ``bench/probe_memory.py``), one bank per category;
- **memory, cosine distance**: the same bank and patches compared by direction only, which is what
  DESIGN's map (``1 - cos`` of a reconstruction) can see. It is the map of a decoder that would
  rebuild every patch as the direction of its nearest normal patch: a reference for a cosine map
  on these features, not a bound (a decoder rebuilds from context, which can differ more from a
  defect than the defect's nearest normal patch does);
- **one Gaussian per category** (the density reading of PaDiM and of Rippel et al.'s Gaussian AD,
  position-free since a texture and a crop have no fixed layout): Mahalanobis distance of each
  patch to the mean and covariance of all its category's fitted patches (plus ``SHRINK`` on the
  diagonal); the cheapest reading (a 152 x 152 product a patch) if a single mode were enough.

Every map is taken to the input size (bilinear), blurred (sigma 4 px there) and, where the input
is not 256², resized to 256² (area), so that every candidate is read against the same 256² masks:
image AUROC of the top 1 % (map maximum), pixel AUROC on 400,000 fixed pixels, AUPRO, image AUROC
per defect type (``bench/probe_real.readings``, ``proad.metrics.aupro``). Encoder features are
cached by ``bench/probe_real.cached_features``. Results: ``bench/results/<name>.{json,md}``::

    python bench/probe_ceiling.py --candidates lite0@256 lite1@256 lite2@256 lite0@320 lite0@384
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
import probe_memory as M
import probe_real as P

from common import machine, real_roots, write_results
from proad.config import BUILTIN_BACKBONES, ModelConfig
from proad.metrics import aupro
from proad.model import ProAD
from proad.train import open_categories

#: the encoders with built-in weights, by short name: lite0, lite1, lite2
BACKBONES = {b.removeprefix("tf_efficientnet_"): b for b in BUILTIN_BACKBONES if b.startswith("tf_efficientnet_")}
REFERENCE = 256  # every map is read against the 256² masks
READINGS = {
    "memory, L2 (PatchCore's reading)": "l2",
    "memory, cosine distance (what a cosine map sees)": "cosine",
    "one Gaussian per category (Mahalanobis distance)": "gaussian",
}
SHRINK = 0.01  # the Gaussian's covariance + 1 % of its mean variance on the diagonal (PaDiM adds 0.01 I)


def parse(candidate: str) -> ModelConfig:
    """``lite1@320`` -> the default ModelConfig with that encoder and a 320² input."""
    name, _, size = candidate.partition("@")
    if name not in BACKBONES or not size.isdigit():
        raise argparse.ArgumentTypeError(
            f"{candidate!r}: expected one of {', '.join(BACKBONES)} @ a size, e.g. lite1@320"
        )
    return ModelConfig(backbone=BACKBONES[name], image_size=int(size))


def to_reference(m: torch.Tensor) -> torch.Tensor:
    """``[N, H, W]`` maps at the candidate's input size -> 256² (area), the masks' size."""
    if m.shape[-1] == REFERENCE and m.shape[-2] == REFERENCE:
        return m
    return F.interpolate(m[:, None], size=(REFERENCE, REFERENCE), mode="area")[:, 0]


def fit_gaussian(normal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and precision (the shrunk covariance's inverse) of ``normal`` patches ``[n, C]``."""
    mean = normal.mean(0)
    cov = torch.cov(normal.T)
    return mean, torch.linalg.inv(cov + SHRINK * cov.diagonal().mean() * torch.eye(len(cov)))


def mahalanobis(q: torch.Tensor, mean: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """``[n, C]`` patches -> ``[n]`` Mahalanobis distances to the Gaussian ``(mean, precision)``."""
    q = q - mean
    return ((q @ precision) * q).sum(1).clamp_min(0).sqrt()


def gaussian_map(
    reader: M.Reader, levels: list[torch.Tensor], normal: torch.Tensor, form: dict[str, Any]
) -> torch.Tensor:
    """Every patch's :func:`mahalanobis` distance to one Gaussian fitted on ``normal``, as a blurred map."""
    mean, precision = fit_gaussian(normal)
    out = []
    for s in range(0, levels[0].shape[0], 16):
        e = M.embed([lvl[s : s + 16] for lvl in levels], **form)
        b, _, h, w = e.shape
        out.append(reader.tail(mahalanobis(M.flat(e), mean, precision).view(b, h, w)))
    return torch.cat(out)


def read_candidate(cfg: ModelConfig, masks: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Every reading of :data:`READINGS` of one encoder and input size, per real category."""
    model = ProAD(cfg).eval()
    folders = open_categories(real_roots(), None, cfg.image_size, cfg.resize)
    t = time.perf_counter()
    raw = {f.category: P.cached_features(model, cfg, f, False) for f in folders}
    encode_s = time.perf_counter() - t
    reader = M.Reader(cfg, raw)
    form = {"padded": True}
    out: dict[str, Any] = {"encode_or_cache_seconds": round(encode_s, 1), "readings": {}}
    fitted = {c: M.flat(M.embed([lvl[reader.fit[c]] for lvl in d["train"]], **form)) for c, d in raw.items()}
    for name, kind in READINGS.items():
        t = time.perf_counter()
        rows = {}
        for c, d in raw.items():
            feats = fitted[c]
            if kind == "gaussian":
                bank = feats  # every patch is fitted; "bank" below reports how many
                m = to_reference(gaussian_map(reader, d["test"], feats, form))
            else:
                cosine = kind == "cosine"
                bank = M.coreset(F.normalize(feats, dim=1) if cosine else feats, len(feats) // 100)
                m = to_reference(M.memory_map(reader, d["test"], bank, form, cosine))
            ref = {**d, "masks": masks[c]}
            rows[c] = {
                **P.readings(m, ref, cfg.score_top_fraction),
                "aupro": round(aupro(masks[c].numpy() > 0, m.numpy()), 4),
                "bank": len(bank),
                "channels": feats.shape[1],
            }
        out["readings"][name] = {"seconds": round(time.perf_counter() - t, 1), "categories": rows}
        print(
            cfg.backbone,
            cfg.image_size,
            name,
            {c: (r["image_auroc"], r["pixel_auroc"], r["aupro"]) for c, r in rows.items()},
            flush=True,
        )
    return out


def table(results: dict[str, Any]) -> str:
    cats = sorted({c for r in results.values() for v in r["readings"].values() for c in v["categories"]})
    lines = [
        "# What each encoder and input size holds for the real sets (`bench/probe_ceiling.py`)",
        "",
        f"{machine()['cpu']}. Readings of the encoder's features, no decoder, fitted per category on 90 % of "
        "the training pictures' stride-8 patches (both levels 3 x 3-averaged): the nearest patch of a greedy "
        "1 % coreset (L2 or cosine distance), or one Gaussian of every patch (Mahalanobis distance). "
        "Image AUROC of the top 1 % (map maximum) / pixel AUROC / AUPRO, every map read at 256².",
        "",
        "| candidate | reading | " + " | ".join(cats) + " | tiles crack / uneven | bank or patches, channels |",
        "|---|---|" + "---:|" * len(cats) + "---:|---:|",
    ]
    for cand, r in results.items():
        for name, v in r["readings"].items():
            cells = []
            for c in cats:
                x = v["categories"].get(c)
                cells.append(
                    f"{x['image_auroc']:.3f} ({x['image_auroc_max']:.3f}) / {x['pixel_auroc']:.3f} / {x['aupro']:.3f}"
                    if x
                    else ""
                )
            tile = v["categories"].get("magnetic_tile")
            kinds = " / ".join(f"{tile['per_defect'][k]:.3f}" for k in ("crack", "uneven")) if tile else ""
            first = next(iter(v["categories"].values()))
            lines.append(
                f"| {cand} | {name} | " + " | ".join(cells) + f" | {kinds} | {first['bank']:,}, {first['channels']} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--candidates",
        nargs="+",
        default=["lite0@256", "lite1@256", "lite2@256", "lite0@320", "lite0@384"],
        help="encoder@input side, e.g. lite0@256 lite2@320 (default: the five of the README)",
    )
    ap.add_argument("--name", default="probe_ceiling", help="results file stem under bench/results")
    args = ap.parse_args(argv)
    try:
        configs = {c: parse(c) for c in args.candidates}
    except argparse.ArgumentTypeError as e:
        ap.error(str(e))
    if not real_roots():
        print("no real data under ../shared/data: nothing to probe", file=sys.stderr)
        return 2
    torch.set_num_threads(2)
    ref_cfg = ModelConfig(image_size=REFERENCE)
    masks = {
        f.category: torch.from_numpy(np.stack([f.load(item)[1] for item in f.test]))
        for f in open_categories(real_roots(), None, ref_cfg.image_size, ref_cfg.resize)
    }
    results = {}
    for cand, cfg in tqdm(configs.items(), desc="candidates", unit="candidate"):
        results[cand] = read_candidate(cfg, masks)
        write_results(args.name, {"machine": machine(), "candidates": results}, table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
