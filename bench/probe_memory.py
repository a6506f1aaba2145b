"""Would a memory of normal patches see what the reconstruction misses? A scout (issue 14).

Pro-AD scores a patch by how badly the decoder rebuilds it (``1 - cos`` per level). PatchCore, on
the *same* frozen features, scores it by its distance to the nearest normal patch in a memory bank,
and on Magnetic Tile it ranks the pictures better. This probe puts both readings side by side on
``bench/probe_real.py``'s cached features, so the difference can be taken apart:

- **memory**: each stride-8 patch (both levels 3 x 3-averaged, stride 16 upsampled, concatenated:
  152 channels on Lite0) against a greedy coreset (``proad.memory.greedy_coreset``) of 90 % of each
  category's training pictures, 1 % of their patches; one bank per category or one for all, and the
  bank cut to fixed sizes; L2 (PatchCore), cosine distance or L2 between unit-length levels (the
  direction alone, what a cosine map sees); with PatchCore's zero padding counted in the border
  averages or Pro-AD's ``local_average`` (inside only);
- **reconstruction**: the map of a decoder saved by ``bench/probe_real.py`` (the default: its
  5,000 x 8 run of the shipped model), in the same form;
- **fused**: each map z-scored by its pixel mean and standard deviation on the held-out 10 % of
  the training pictures (all categories together), then summed or maxed (held out from the memory
  bank; the saved decoder was trained on every training picture, so its statistics are in-sample);
- **border left out**: four maps' image scores read again with a 16 px border set to zero, to
  separate border false alarms from the rest (no pixel readings: the zeroed border would count);
- ``--length-beta B`` also trains a decoder that rebuilds the features' length (cosine hard mining
  + ``B`` x squared error relative to each level's mean squared length) and reads its cosine,
  squared-error and length-error maps;
- ``--onnx MODEL`` times a nearest-neighbour head (1,024 queries against each bank size) in ONNX
  Runtime beside that whole model, interleaved, and reports the model's throughput with the head.

Every map is upsampled bilinearly to the input, blurred (sigma 4) and read by
``probe_real.readings`` (top 1 %, map maximum, pixel AUROC on 400,000 fixed pixels) and by AUPRO
(``proad.metrics.aupro``, every pixel of the 256 x 256 masks; not for the border-cut maps, whose
zeroed border is no reading of a region). Results go to
``bench/results/memory_readings.{json,md}``::

    python bench/probe_memory.py --length-beta 0.5 --onnx model.onnx
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
import probe_real as P

from common import machine, real_roots, write_results
from proad.config import ModelConfig
from proad.loss import proad_loss
from proad.memory import greedy_coreset
from proad.metrics import aupro
from proad.model import ProAD, gaussian_kernel1d
from proad.train import open_categories

DEFAULT_DECODER = P.MODELS / P.decoder_file('default train {"batch_size":8}', 5000, 0)
BANK_SIZES = (512, 1024, 2048, 4096)
BORDER = 16


class Reader:
    """The maps' common tail (bilinear to the input, sigma-4 blur) and the held-out split."""

    def __init__(self, cfg: ModelConfig, raw: dict[str, dict[str, Any]]) -> None:
        self.cfg, self.raw = cfg, raw
        self.kernel = gaussian_kernel1d(cfg.map_sigma)
        rng = np.random.default_rng(0)
        self.fit: dict[str, torch.Tensor] = {}
        self.held: dict[str, torch.Tensor] = {}
        for cat, d in raw.items():
            order = torch.from_numpy(rng.permutation(d["train"][0].shape[0]))
            cut = max(4, len(order) // 10)
            self.held[cat], self.fit[cat] = order[:cut], order[cut:]

    def blur(self, m: torch.Tensor) -> torch.Tensor:
        """``[N, H, W]`` Gaussian-blurred with reflected edges (DESIGN's map smoothing)."""
        k, p = self.kernel, self.kernel.numel() // 2
        m = F.pad(m[:, None], (p, p, p, p), mode="reflect")
        return F.conv2d(F.conv2d(m, k.view(1, 1, 1, -1)), k.view(1, 1, -1, 1))[:, 0]

    def tail(self, m: torch.Tensor) -> torch.Tensor:
        """``[N, h, w]`` -> bilinear to the input size, then :meth:`blur`."""
        return self.blur(F.interpolate(m[:, None], size=self.cfg.input_hw, mode="bilinear", align_corners=False)[:, 0])


# -- memory ------------------------------------------------------------------------------------
def embed(
    levels: list[torch.Tensor], padded: bool, unit: bool = False, only: int | None = None, native: bool = False
) -> torch.Tensor:
    """PatchCore's patch features ``[N, C, h, w]`` on the finest grid: 3 x 3 averages (zero padding
    counted when ``padded``), optionally each level at unit length, or one level alone (on the finest
    grid, or with ``native`` on its own)."""
    size = levels[only if native and only is not None else 0].shape[-2:]
    out = []
    for i, lvl in enumerate(levels):
        if only is not None and i != only:
            continue
        f = F.avg_pool2d(lvl.float(), 3, stride=1, padding=1, count_include_pad=padded)
        f = F.normalize(f, dim=1) if unit else f
        out.append(f if f.shape[-2:] == size else F.interpolate(f, size=size, mode="bilinear", align_corners=False))
    return torch.cat(out, 1)


def flat(e: torch.Tensor) -> torch.Tensor:
    return e.permute(0, 2, 3, 1).reshape(-1, e.shape[1])


def coreset(features: torch.Tensor, keep: int, seed: int = 0) -> torch.Tensor:
    """PatchCore's bank: greedy k-center over at most 100,000 random candidates (the baseline's rule)."""
    g = torch.Generator().manual_seed(seed)
    cand = features[torch.randperm(len(features), generator=g)[:100_000]]
    return cand[greedy_coreset(cand, min(keep, len(cand)), 128, seed)].contiguous()


def memory_map(
    reader: Reader, levels: list[torch.Tensor], bank: torch.Tensor, form: dict[str, Any], cosine: bool
) -> torch.Tensor:
    """Distance of every patch to its nearest bank feature (L2, or cosine distance), as a blurred map."""
    out = []
    for s in range(0, levels[0].shape[0], 16):
        e = embed([lvl[s : s + 16] for lvl in levels], **form)
        b, _, h, w = e.shape
        q = flat(e)
        if cosine:
            d = (1 - F.normalize(q, dim=1) @ F.normalize(bank, dim=1).t()).min(1).values
        else:
            d = torch.cdist(q, bank).min(1).values
        out.append(reader.tail(d.view(b, h, w)))
    return torch.cat(out)


FUSED_MEMORY = "memory L2, bank per category"  # the form the fused readings take


def memory_readings(
    reader: Reader,
) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, torch.Tensor], dict[str, dict[str, Any]]]:
    """Every memory form's test maps per category, :data:`FUSED_MEMORY`'s maps of the held-out
    training pictures (its z-scores), and each form's bank sizes, queries per picture and channels."""
    forms = {
        FUSED_MEMORY: ({"padded": True}, False, "per"),
        "memory L2, bank per category, padding not counted": ({"padded": False}, False, "per"),
        "memory cosine distance (direction only)": ({"padded": True}, True, "per"),
        "memory L2 on unit-length levels (direction only)": ({"padded": True, "unit": True}, False, "per"),
        "memory L2, stride-8 level only": ({"padded": True, "only": 0}, False, "per"),
        "memory L2, stride-16 level only": ({"padded": True, "only": 1}, False, "per"),
        "memory L2, stride-16 level only, on its own 16 x 16 grid": (
            {"padded": True, "only": 1, "native": True},
            False,
            "per",
        ),
        "memory L2, stride-16 level only, own grid, one bank for all": (
            {"padded": True, "only": 1, "native": True},
            False,
            "all",
        ),
        "memory L2, one bank for all": ({"padded": True}, False, "all"),
        **{f"memory L2, one bank for all, {n:,} features": ({"padded": True}, False, n) for n in BANK_SIZES},
    }
    maps: dict[str, dict[str, torch.Tensor]] = {}
    held: dict[str, torch.Tensor] = {}
    shapes: dict[str, dict[str, Any]] = {}
    for name, (form, cosine, banks) in forms.items():
        feats = {c: flat(embed([lvl[reader.fit[c]] for lvl in d["train"]], **form)) for c, d in reader.raw.items()}
        if cosine:
            feats = {c: F.normalize(f, dim=1) for c, f in feats.items()}
        if banks == "per":
            bank = {c: coreset(f, len(f) // 100) for c, f in feats.items()}
        else:
            every = torch.cat(list(feats.values()))
            one = coreset(every, len(every) // 100 if banks == "all" else int(banks))
            bank = dict.fromkeys(feats, one)
        maps[name] = {c: memory_map(reader, d["test"], bank[c], form, cosine) for c, d in reader.raw.items()}
        if name == FUSED_MEMORY:
            held = {
                c: memory_map(reader, [lvl[reader.held[c]] for lvl in d["train"]], bank[c], form, cosine)
                for c, d in reader.raw.items()
            }
        e = embed([lvl[:1] for lvl in next(iter(reader.raw.values()))["test"]], **form)
        shapes[name] = {
            "bank": {c: len(b) for c, b in bank.items()},
            "queries": e.shape[2] * e.shape[3],
            "channels": e.shape[1],
        }
        print(name, shapes[name], flush=True)
    return maps, held, shapes


# -- reconstruction ----------------------------------------------------------------------------
def load_decoder(path: Path) -> ProAD:
    saved = torch.load(path, weights_only=False)
    model = ProAD(ModelConfig(**saved["model_config"]))
    model.load_state_dict(saved["state"], strict=False)
    return model.eval()


@torch.no_grad()
def reconstruction_maps(
    reader: Reader, model: ProAD, levels: list[torch.Tensor], scale: list[float] | None = None
) -> dict[str, torch.Tensor]:
    """The decoder's cosine map (the shipped form), and with ``scale`` (each level's mean squared
    length) its relative squared-error and length-error maps."""
    parts: dict[str, list[torch.Tensor]] = {"cosine": [], "squared error": [], "length error": []}
    pooled = P.pooled(levels, model.cfg.feature_pool)
    for s in range(0, pooled[0].shape[0], 32):
        f = [lvl[s : s + 32].float() for lvl in pooled]
        r = model.decode(f).reconstructions
        up = [(getattr(model, f"map_rows{i}"), getattr(model, f"map_cols{i}")) for i in range(len(f))]

        def level_mean(ds: list[torch.Tensor], up: list[tuple[torch.Tensor, torch.Tensor]] = up) -> torch.Tensor:
            return sum(rows @ d @ cols.t() for d, (rows, cols) in zip(ds, up, strict=True)) / len(ds)

        parts["cosine"].append(level_mean([1 - F.cosine_similarity(a, b, dim=1) for a, b in zip(f, r, strict=True)]))
        if scale is not None:
            parts["squared error"].append(
                level_mean([((a - b) ** 2).sum(1) / c for a, b, c in zip(f, r, scale, strict=True)])
            )
            parts["length error"].append(
                level_mean([(a.norm(dim=1) - b.norm(dim=1)) ** 2 / c for a, b, c in zip(f, r, scale, strict=True)])
            )
    return {k: torch.cat(v) for k, v in parts.items() if v}  # map_rows / map_cols upsample *and* blur


def train_length_aware(reader: Reader, cfg: ModelConfig, beta: float, iterations: int) -> tuple[ProAD, list[float]]:
    """The probe's training of the shipped model with ``beta`` x relative squared error added."""
    torch.manual_seed(0)
    model = ProAD(cfg)
    train = [P.pooled(d["train"], cfg.feature_pool) for d in reader.raw.values()]
    scale = [float((torch.cat(level).float() ** 2).sum(1).mean()) for level in zip(*train, strict=True)]
    batch = P.training_batches(train)

    def loss(feats: list[torch.Tensor], out: Any, bank: torch.Tensor, c: ModelConfig) -> tuple[torch.Tensor, dict]:
        total, parts = proad_loss(feats, out, bank, c)
        sq = [
            ((f.float() - r) ** 2).sum(1).mean() / s for f, r, s in zip(feats, out.reconstructions, scale, strict=True)
        ]
        return total + beta * sum(sq) / len(sq), parts

    P.train_decoder(model, cfg, iterations, 0, {"batch_size": 8}, batch, f"length-aware, beta {beta}", loss=loss)
    return model.eval(), scale


# -- cost --------------------------------------------------------------------------------------
class NearestHead(torch.nn.Module):
    """1,024 queries of C channels -> squared distance to the nearest of N bank features."""

    def __init__(self, n: int, c: int) -> None:
        super().__init__()
        bank = torch.randn(n, c)
        self.register_buffer("bank_t", bank.t().contiguous())
        self.register_buffer("bank_sq", (bank * bank).sum(1))

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        q = e.flatten(2).transpose(1, 2)
        return ((q * q).sum(-1, keepdim=True) - 2 * q @ self.bank_t + self.bank_sq).min(-1).values


def head_cost(onnx_model: Path, heads: dict[str, tuple[int, int, int]], rounds: int = 5) -> dict[str, Any]:
    """Median ms per batch-1 run (2 threads, interleaved rounds) of the model and of each head
    ``label -> (bank size, queries per picture, channels)``. A head is the distance search alone
    (without the 3 x 3 averaging, the upsampling and the map's tail): a lower bound of its cost."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = 2, 1
    sessions = {"model": ort.InferenceSession(str(onnx_model), so, providers=["CPUExecutionProvider"])}
    image = np.random.default_rng(0).integers(0, 255, (1, 256, 256, 3), dtype=np.uint8)
    feeds = {"model": {sessions["model"].get_inputs()[0].name: image}}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, (n, queries, channels)) in enumerate(heads.items()):
            side = math.isqrt(queries)
            e = np.random.default_rng(0).standard_normal((1, channels, side, side)).astype(np.float32)
            path = Path(tmp) / f"head{i}.onnx"
            torch.onnx.export(
                NearestHead(n, channels),
                (torch.from_numpy(e),),
                str(path),
                input_names=["e"],
                opset_version=18,
                dynamo=False,
            )
            sessions[label] = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
            feeds[label] = {"e": e}
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(rounds):
        for k, s in sessions.items():
            for _ in range(3):
                s.run(None, feeds[k])
            t, runs = time.perf_counter(), 0
            while time.perf_counter() - t < 2.0:
                s.run(None, feeds[k])
                runs += 1
            times[k].append((time.perf_counter() - t) / runs * 1000)
    ms = {k: round(statistics.median(v), 2) for k, v in times.items()}
    return {
        "model": str(onnx_model),
        "heads": {k: {"bank": n, "queries": q, "channels": c} for k, (n, q, c) in heads.items()},
        "ms": ms,
        "throughput_with_head": {k: round(ms["model"] / (ms["model"] + v), 3) for k, v in ms.items() if k != "model"},
    }


# -- report ------------------------------------------------------------------------------------
def cut_border(m: torch.Tensor, px: int = BORDER) -> torch.Tensor:
    m = m.clone()
    m[:, :px], m[:, -px:], m[:, :, :px], m[:, :, -px:] = 0, 0, 0, 0
    return m


def zscore(maps: dict[str, torch.Tensor], held: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    every = torch.cat(list(held.values()))
    mean, std = every.mean(), every.std()
    return {c: (m - mean) / std for c, m in maps.items()}


def table(rows: dict[str, dict[str, Any]], cats: list[str], cost: dict[str, Any] | None) -> str:
    lines = [
        "# What a memory of normal patches sees (`bench/probe_memory.py`)",
        "",
        f"{machine()['cpu']}; cached Lite0 features (levels 2+3, 256² stretch) of the real sets in ../shared/data. "
        "Every map bilinear to 256², Gaussian σ = 4; image AUROC of the top 1 % (map maximum), pixel AUROC "
        "on 400,000 fixed test pixels, image AUROC per defect type. Memory (unless named): nearest bank feature "
        "of each stride-8 patch (152 channels), greedy 1 % coreset of 90 % of the training pictures. "
        "Fused: each map z-scored on the held-out 10 % normal training pictures (in-sample for the decoder). "
        "Rows with a border left out: image scores only.",
        "",
    ]
    for cat in cats:
        kinds = sorted({k for r in rows.values() if cat in r for k in r[cat]["per_defect"]})
        lines += [
            f"## {cat}",
            "",
            "| reading | image (max) / pixel AUROC | AUPRO | " + " | ".join(kinds) + " |",
            "|---|---:|---:|" + "---:|" * len(kinds),
        ]
        for name, r in rows.items():
            if cat in r:
                x = r[cat]
                lines.append(
                    f"| {name} | {x['image_auroc']:.3f} ({x['image_auroc_max']:.3f}) / "
                    + (f"{x['pixel_auroc']:.3f} | " if x["pixel_auroc"] is not None else "– | ")
                    + (f"{x['aupro']:.3f} | " if "aupro" in x else "– | ")
                    + " | ".join(f"{x['per_defect'].get(k, float('nan')):.3f}" for k in kinds)
                    + " |"
                )
        lines.append("")
    if cost:
        lines += [
            f"ONNX Runtime, 2 threads, batch 1, median of interleaved rounds, beside the whole model "
            f"`{Path(cost['model']).name}` ({cost['ms']['model']} ms): the nearest-neighbour search of each form "
            "alone (a lower bound of a memory head's cost: no averaging, upsampling or map tail).",
            "",
            "| memory form (bank) | queries x channels | ms | the model's throughput with it |",
            "|---|---:|---:|---:|",
            *(
                f"| {k} | {h['queries']:,} x {h['channels']} | {cost['ms'][k]} | {share:.0%} |"
                for k, h in cost["heads"].items()
                for share in [cost["throughput_with_head"][k]]
            ),
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--decoder",
        type=Path,
        default=DEFAULT_DECODER,
        help="a decoder saved by bench/probe_real.py (default: its 5,000 x 8 default run)",
    )
    ap.add_argument("--length-beta", type=float, default=0.0, help="also train a length-aware decoder (0: no)")
    ap.add_argument("--iterations", type=int, default=5000, help="its training steps (of 8 pictures)")
    ap.add_argument("--onnx", type=Path, help="a whole-model ONNX to time the nearest-neighbour head beside")
    ap.add_argument("--name", default="memory_readings", help="results file stem under bench/results")
    args = ap.parse_args(argv)
    if not real_roots():
        print("no real data in ../shared/data: nothing to probe", file=sys.stderr)
        return 2
    if not args.decoder.is_file():
        print(
            f"no saved decoder at {args.decoder}: run bench/probe_real.py --variants default "
            "--iterations 5000 --train '{\"batch_size\": 8}' --name probe_default_5000 first",
            file=sys.stderr,
        )
        return 2
    if args.onnx is not None and not args.onnx.is_file():
        print(f"no ONNX model at {args.onnx}", file=sys.stderr)
        return 2
    torch.set_num_threads(2)
    model = load_decoder(args.decoder)
    cfg = model.cfg
    folders = open_categories(real_roots(), None, cfg.image_size, cfg.resize)
    raw = {f.category: P.cached_features(model, cfg, f, False) for f in folders}
    reader = Reader(cfg, raw)
    maps: dict[str, dict[str, torch.Tensor]] = {"reconstruction (the shipped cosine map)": {}}
    held: dict[str, dict[str, torch.Tensor]] = {"reconstruction (the shipped cosine map)": {}}
    for c, d in raw.items():
        maps["reconstruction (the shipped cosine map)"][c] = reconstruction_maps(reader, model, d["test"])["cosine"]
        held["reconstruction (the shipped cosine map)"][c] = reconstruction_maps(
            reader, model, [lvl[reader.held[c]] for lvl in d["train"]]
        )["cosine"]
    mm, memory_held, shapes = memory_readings(reader)
    maps.update(mm)
    rec, mem = "reconstruction (the shipped cosine map)", FUSED_MEMORY
    zr, zm = zscore(maps[rec], held[rec]), zscore(maps[mem], memory_held)
    maps["fused: z(reconstruction) + z(memory)"] = {c: zr[c] + zm[c] for c in raw}
    maps["fused: z(reconstruction) + 2 z(memory)"] = {c: zr[c] + 2 * zm[c] for c in raw}
    maps["fused: max of the two z-maps"] = {c: torch.maximum(zr[c], zm[c]) for c in raw}
    for name in (
        rec,
        mem,
        "memory L2, bank per category, padding not counted",
        "memory cosine distance (direction only)",
    ):
        maps[f"{name}, {BORDER} px border left out"] = {c: cut_border(m) for c, m in maps[name].items()}
    if args.length_beta > 0:
        lm, scale = train_length_aware(reader, cfg, args.length_beta, args.iterations)
        for c, d in raw.items():
            for k, m in reconstruction_maps(reader, lm, d["test"], scale).items():
                maps.setdefault(f"length-aware decoder (beta {args.length_beta}): {k} map", {})[c] = m
    rows = {
        name: {c: P.readings(m, raw[c], cfg.score_top_fraction) for c, m in per.items()} for name, per in maps.items()
    }
    for name, per in tqdm(maps.items(), desc="AUPRO", unit="reading"):
        if "border left out" in name:  # the zeroed border would count as pixels read
            for c in per:
                rows[name][c]["pixel_auroc"] = None
        else:
            for c, m in per.items():
                rows[name][c]["aupro"] = round(aupro(raw[c]["masks"].numpy() > 0, m.numpy()), 4)
    timed = [n for n in shapes if n == FUSED_MEMORY or "one bank for all" in n or "stride-16" in n]
    heads = {  # each form at its largest bank (per category: the category with the most patches)
        f"{n} ({max(shapes[n]['bank'].values()):,})": (
            max(shapes[n]["bank"].values()),
            shapes[n]["queries"],
            shapes[n]["channels"],
        )
        for n in timed
    }
    cost = head_cost(args.onnx, heads) if args.onnx else None
    data = {"machine": machine(), "decoder": str(args.decoder), "banks": shapes, "readings": rows, "cost": cost}
    write_results(args.name, data, table(rows, list(raw), cost))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
