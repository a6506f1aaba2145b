"""int8 post-training quantization of an exported Pro-AD graph, refused when it moves what a line sees.

int8 is how CPU inference usually gets its next factor, and also how anomaly maps get ruined while
image scores still look fine (anomalib's issue #2298). Pro-AD's map is ``1 - cos`` between encoder
features and their reconstruction: a small difference of two tensors, exactly what rounding to 256
levels disturbs. So a quantized graph is trusted only after :func:`compare` has run it beside the
fp32 graph on real normal images of the user's own line (the ``--calibration`` folders, images
not used for calibration; each judged by its category's threshold, as the line judges it), and
:func:`quantize` refuses it (:class:`~proad.export.onnx_export.ExportError`,
``proad-export`` exit 1) beyond :data:`TOLERANCE`.

What is written is the same kind of artifact as every export: one ONNX graph with our metadata
(``precision: int8``), in QDQ form (``QuantizeLinear``/``DequantizeLinear`` around int8 weights and
activations), which the OpenVINO backend reads as it is and runs with its int8 kernels (the fast
path on CPUs with VNNI). ONNX Runtime refuses it: its fused int8 MatMul kernel rejects NNCF's QDQ
MatMuls, and its own quantizer's QDQ graph ran slower than its fp32 here (README, "int8").
Quantization is NNCF's post-training quantization (OpenVINO's tool; its ``performance`` preset:
symmetric per-channel weights and symmetric activations, fast bias correction; it scored closer to
fp32 than the ``mixed`` preset, README "int8") on the ONNX graph, with activation ranges from
histograms (:func:`export_settings`; min-max ranges moved the maps ten times more). What stays in
float was decided by measurement on the real sets (README, "int8"; :func:`float_nodes`): the map
and score tail, and the encoder's first, full-resolution stages, found by the module names torch's
exporter records on each node. How many of those stages is decided per line: the export tries the
faster form (only the stem and block 0 in float) first and falls back to keeping every stage before
the first feature level in float when the line's own held-out images refuse it (:func:`int8_forms`).

Rounding adds noise to the features, and noise pulls a feature's cosine with its reconstruction down
on average, i.e. raises ``1 - cos`` (a reading of what was measured): on the M = 6 default trained
on the real sets every held-out normal image's int8 score sat above fp32's, by +0.1 to +5.9 % of its
threshold with blocks 0-1 in float (up to 8.6 % with block 1 int8; README, "int8"; bf16 float parts
moved the fp32 graph's the other way, so the shift is measured, not assumed). A line decides by
comparing with a threshold, so the int8 graph carries its own thresholds: each category's plus the
median of its score shift on the calibration inputs (:func:`score_offsets`), and the check compares
each held-out image's distance to *its graph's* threshold (:func:`compare`'s ``offsets``). The shift
itself is limited (``score_shift_rel``): it is estimated on normal images only, and a graph whose
typical (median) score moves far has become another function, whatever the distances left. The
thresholds hold for the graph's float parts in f32 (the OpenVINO backend's default ``precision``),
where they were measured.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from proad.artifacts import OnnxMetadata
from proad.config import ModelConfig
from proad.data.folder import IMAGE_SUFFIXES, DatasetError, fit_image
from proad.data.tiling import NO_TILING, Grid, split_tiles
from proad.export.onnx_export import ExportError
from proad.model import ProAD

#: The most a quantized graph may move what a line sees, on held-out normal images, relative to the
#: threshold each image is decided by on the line (its category's; the map and the score are on one
#: scale: the score is the mean of the map's top values), after its thresholds have moved by its
#: score shift (module docstring). Set by measurement on the real sets (README, "int8";
#: bench/results/int8.json, the M = 256 model, before the shift was taken off): the forms that lost
#: more than 0.005 image AUROC moved the worst held-out normal score by 43-46 % of its threshold;
#: the shipped form moves it by 3.1 %, and its map by 7.2 % at the 99.9th percentile (on the M = 6
#: default, bench/results/int8_m6nc.json, with the shift taken off: lost forms 26 %, the export's
#: 3.1 % and 8.4 %; its shift 2.7-2.9 % of each category's threshold, the lost forms' 8.5-47 %).
#: The same float parts with min-max activation
#: ranges (the export's until 2026-12-03) kept the scores (4 %) but moved the map by 73 % (77 % on
#: the bottles): hot spots at three quarters of the threshold on good parts where fp32 shows none,
#: the damage anomalib's issue #2298 reports. 25 % lies between: about three times the shipped
#: form's map error, a third of min-max's.
#: The ranking of the held-out images (:func:`rank_agreement`) counts only pairs whose fp32 scores
#: lie more than the score tolerance apart: the form that lost 0.012 image AUROC reversed a quarter
#: of them (0.73), every form within the accuracy bar none (1.0). Counting near-ties as well
#: (Spearman over all images, the first form of this check) refused a graph that moved no score by
#: more than 0.6 % of the threshold, for swapping two of a small line's six held-out images whose
#: scores lay 0.001 apart.
#: The shift is limited to a tenth of each threshold, about three times the export's form's.
#: (Those figures are the form that keeps blocks 0-1 in float, the export's only form until
#: 2026-12-05 and its fallback since. The form it now tries first, int8 from block 1, read 4.96 %
#: score, 16.7 % map, 0.997 rank and a 4.2 % shift on the M = 6 default, inside every tolerance but
#: close to the score's: bench/results/int8_block1_export.json. Where a line's images push it past
#: 5 %, the fallback is written.)
TOLERANCE = {
    "score_error_rel": 0.05,  # |(score int8 - shift) - fp32| / threshold, worst held-out image
    "map_error_rel_p999": 0.25,  # 99.9th percentile of |(map int8 - shift) - fp32| / threshold
    "rank_agreement_min": 0.95,  # share of the held-out pairs, further apart than the score tolerance, kept in order
    "score_shift_rel": 0.10,  # |shift| / threshold, of each category's threshold and of the model's
}

#: Fewer calibration inputs of a category than this: its thresholds move by the shift of all of them.
MIN_SHIFT_INPUTS = 4

#: Metadata keys where the quantization is recorded (beside ``precision: int8``).
QUANT_KEY = "quantization"


class CalibrationError(ValueError):
    """The calibration folders give too few readable images."""


@dataclass
class QuantReport:
    """What was quantized, on what, and how it compared with fp32."""

    path: Path
    quantizer: str
    runtime: str
    calibration_images: int
    check_images: int
    float_nodes: int
    score_error_rel: float = 0.0
    map_error_rel_max: float = 0.0
    map_error_rel_p999: float = 0.0
    rank_agreement: float = 1.0
    decision_flips: int = 0
    score_offset: float = 0.0
    category_score_offsets: dict[str, float] = field(default_factory=dict)
    score_shift_rel: float = 0.0
    tolerance: dict[str, float] = field(default_factory=lambda: dict(TOLERANCE))
    int8_from_block: int | None = None  # the encoder is int8 from blocks.<this> on (:func:`int8_forms`)
    faster_forms_refused: list[str] = field(default_factory=list)  # why each faster form was not written

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        return d

    def failures(self) -> list[str]:
        out = []
        if self.score_error_rel > self.tolerance["score_error_rel"]:
            out.append(f"score error {self.score_error_rel:.1%} of the threshold "
                       f"(tolerance {self.tolerance['score_error_rel']:.0%})")
        if self.map_error_rel_p999 > self.tolerance["map_error_rel_p999"]:
            out.append(f"map error (99.9th percentile) {self.map_error_rel_p999:.1%} of the threshold "
                       f"(tolerance {self.tolerance['map_error_rel_p999']:.0%})")
        if self.rank_agreement < self.tolerance["rank_agreement_min"]:
            out.append(f"{1 - self.rank_agreement:.1%} of the held-out images' distinguishable pairs reversed "
                       f"(tolerance {1 - self.tolerance['rank_agreement_min']:.0%})")
        if self.score_shift_rel > self.tolerance.get("score_shift_rel", float("inf")):
            out.append(f"thresholds moved by up to {self.score_shift_rel:.1%} (the median score shift on the "
                       f"calibration inputs; tolerance {self.tolerance['score_shift_rel']:.0%})")
        return out


@dataclass
class CalibrationSet:
    """Model inputs read from the calibration folders, each with the model category it belongs to
    ('' for a folder of none of the model's categories: judged by the model's one threshold)."""

    images: list[np.ndarray]
    categories: list[str]

    def split(self) -> tuple[CalibrationSet, CalibrationSet]:
        """(calibration inputs, held-out check set): every fourth input is held out for the check."""
        keep = [i for i in range(len(self.images)) if i % 4]
        return (CalibrationSet([self.images[i] for i in keep], [self.categories[i] for i in keep]),
                CalibrationSet(self.images[::4], self.categories[::4]))  # fmt: skip

    def thresholds(self, threshold: float, category_thresholds: Mapping[str, float]) -> list[float]:
        """The threshold each input is decided by on the line: its category's, else the model's."""
        return [category_thresholds.get(c, threshold) for c in self.categories]

    def shifts(self, offset: float, category_offsets: Mapping[str, float],
               category_thresholds: Mapping[str, float]) -> list[float]:
        """How far the threshold each input is decided by moves (:func:`shifted_thresholds`): its
        category's shift where it is decided by its category's threshold, else the model's."""
        return [category_offsets.get(c, offset) if c in category_thresholds else offset for c in self.categories]


def folder_category(folder: Path, categories: Sequence[str]) -> str:
    """The model category ``folder`` belongs to: the last of its path's parts that names one, as in
    ``data/<category>/train/good`` ('' when none does)."""
    return next((part for part in reversed(folder.resolve().parts) if part in categories), "")


def calibration_images(
    folders: Sequence[str | Path],
    cfg: ModelConfig,
    limit: int,
    category_tiles: Mapping[str, Grid] | None = None,
    categories: Sequence[str] = (),
) -> CalibrationSet:
    """Up to ``limit`` model inputs (uint8 ``[height, width, 3]`` BGR) from the image files under
    ``folders`` (recursively), preprocessed as the daemon preprocesses a camera's frames: fitted by
    the model's resize mode, and cut into tiles where a folder belongs to a tiled category of the
    model (``category_tiles``; :func:`folder_category`). ``categories``: the model's categories,
    recorded with each input so the check judges it by its category's threshold. Each folder gives
    an equal share of ``limit``, spread evenly over its sorted files: one category's many images
    must not set the ranges the others are quantized with (measured: README, "int8")."""
    import cv2

    tiles = dict(category_tiles or {})
    names = list(dict.fromkeys([*categories, *tiles]))
    per_folder: list[list[tuple[Path, str]]] = []
    for folder in folders:
        root = Path(folder)
        if not root.is_dir():
            raise CalibrationError(f"calibration folder not found: {root}")
        category = folder_category(root, names)
        found = [(p, category) for p in sorted(root.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
        if found:
            per_folder.append(found)
    if not per_folder:
        raise CalibrationError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {', '.join(map(str, folders))}")
    picks: list[tuple[Path, str]] = []  # as many from each folder (category) as it has, up to an equal share
    share = max(1, limit // len(per_folder))
    for found in per_folder:
        picks += [found[i] for i in np.linspace(0, len(found) - 1, min(share, len(found))).round().astype(int)]
    images: list[np.ndarray] = []
    categories_of: list[str] = []
    for path, category in dict.fromkeys(picks):
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None or img.size == 0:
            raise DatasetError(f"cannot read calibration image {path}")
        grid = tiles.get(category, NO_TILING)
        cut = split_tiles(fit_image(img, cfg.image_size, cfg.resize, grid=grid), grid)
        images.extend(cut)
        categories_of.extend([category] * len(cut))
    return CalibrationSet(images[:limit], categories_of[:limit])


def node_scope(node: onnx.NodeProto) -> str:
    """The module path torch's exporter recorded on ``node`` ('' when none)."""
    return next((p.value for p in node.metadata_props if p.key == "namespace"), "")


def float_nodes(proto: onnx.ModelProto, int8_from_block: int) -> list[str]:
    """Names of the nodes kept in float, by measurement (README, "int8"):

    - the map and score tail, every node downstream of the decoder's heads: the map is a small
      difference of features and reconstructions, rounding it is rounding the signal;
    - the encoder before ``blocks.<int8_from_block>`` (input normalisation, stem, the blocks before
      it): rounding the first, full-resolution stages moves every feature the decoder compares, the
      largest loss measured on the real sets (:func:`int8_forms` says which blocks are tried).
    """
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in proto.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    heads = [n for n in proto.graph.node if "model.heads." in node_scope(n)]
    if not heads:
        raise ExportError("cannot find the decoder heads in the graph (no torch exporter namespaces): "
                          "re-export it with this version of proad-export")
    head_names = {n.name for n in heads}
    keep: set[str] = set()
    stack = list(heads)
    while stack:
        for out in stack.pop().output:
            for child in consumers.get(out, []):
                if child.name not in keep and child.name not in head_names:
                    keep.add(child.name)
                    stack.append(child)
    for node in proto.graph.node:
        scope = node_scope(node)
        if "model.input_norm" in scope:
            keep.add(node.name)
        elif "model.encoder." in scope:
            block = re.search(r"model\.encoder\.body\.blocks\.(\d+)", scope)
            if block is None or int(block.group(1)) < int8_from_block:
                keep.add(node.name)
    return sorted(keep)


#: The earliest encoder block int8 is tried from: the stem and block 0 (the full-resolution stages)
#: always stay in float. On the M = 6 default trained on the real sets, rounding block 0's depthwise
#: convolution alone moved the held-out scores by 19 % of their thresholds and reversed 14 % of their
#: pairs (refused); block 1 whole moved them by 4.96 % (accepted: tiles -0.0029 image AUROC) and ran
#: 1.27-1.30x the form that keeps it in float at batch 8 (README, "int8 from block 1";
#: bench/results/int8_blocks.json, int8_block1_export.json).
EARLIEST_INT8_BLOCK = 1


def int8_forms(first_level_block: int) -> list[int]:
    """The blocks the encoder's int8 may start from, in the order the export tries them: the fastest
    form first (int8 from :data:`EARLIEST_INT8_BLOCK`), then int8 from the encoder's first feature
    level (``first_level_block``, :func:`first_feature_block`), the export's only form until
    2026-12-05. The first that passes the check on the line's own held-out images is written."""
    return sorted({min(EARLIEST_INT8_BLOCK, first_level_block), first_level_block})


def export_settings() -> dict[str, Any]:
    """The ``nncf.quantize`` keywords the export quantizes with, beside the ``performance`` preset:
    activation ranges from a histogram of the calibration activations, clipped where that rounds them
    best (NNCF's ``RangeEstimatorParametersSet.HISTOGRAM``), instead of their minimum and maximum.
    On the real sets this moved the held-out maps 10x less at the same accuracy (README, "int8")."""
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    return {"advanced_parameters": AdvancedQuantizationParameters(
        activations_range_estimator_params=RangeEstimatorParametersSet.HISTOGRAM)}  # fmt: skip


def nncf_quantize(
    proto: onnx.ModelProto,
    images: Sequence[np.ndarray],
    float_nodes: Sequence[str],
    options: Mapping[str, Any] | None = None,
) -> onnx.ModelProto:
    """NNCF's post-training quantization of the ONNX graph (QDQ), ``float_nodes`` left in float.

    ``options``: the ``nncf.quantize`` keywords beside the ``performance`` preset; None: the export's
    (:func:`export_settings`); ``{}``: NNCF's own defaults (min-max ranges). Others are measured by
    ``bench/int8.py --settings``."""
    try:
        import nncf
    except ImportError as exc:
        raise ExportError("int8 export needs nncf: pip install 'proad-edge[openvino]'") from exc
    logging.getLogger("nncf").setLevel(logging.ERROR)
    dataset = nncf.Dataset(list(images), lambda x: {"image": x[None]})
    return nncf.quantize(
        proto, dataset, subset_size=len(images), preset=nncf.QuantizationPreset.PERFORMANCE,
        ignored_scope=nncf.IgnoredScope(names=list(float_nodes), validate=False) if float_nodes else None,
        **(export_settings() if options is None else options),
    )  # fmt: skip


def runner(
    proto: onnx.ModelProto, threads: int = 2, precision: str = "f32"
) -> Callable[[np.ndarray], tuple[np.ndarray, ...]]:
    """``images -> (maps, scores)`` of a plain graph in OpenVINO, set up as the daemon's
    ``backend.kind: openvino`` sets it up (latency hint; ``precision``: the float parts' precision,
    the backend's ``openvino.precision``, f32 by default as there)."""
    try:
        import openvino as ov
    except ImportError as exc:
        raise ExportError("int8 export checks in OpenVINO: pip install 'proad-edge[openvino]'") from exc
    core = ov.Core()
    compiled = core.compile_model(core.read_model(proto.SerializeToString(), b""), "CPU", {
        "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": threads})
    request = compiled.create_infer_request()

    def run(x: np.ndarray) -> tuple[np.ndarray, ...]:
        result = request.infer({0: x})
        return np.array(result[0], np.float32), np.array(result[1], np.float32)

    return run


def scores(run: Callable[[np.ndarray], tuple[np.ndarray, ...]], images: Sequence[np.ndarray],
           batch: int = 8) -> np.ndarray:
    """The image scores ``run`` gives ``images``, in batches."""
    out = [run(np.stack(images[i : i + batch]))[1] for i in range(0, len(images), batch)]
    return np.concatenate(out).astype(np.float64) if out else np.zeros(0)


def score_offsets(
    reference: Callable[[np.ndarray], tuple[np.ndarray, ...]],
    candidate: Callable[[np.ndarray], tuple[np.ndarray, ...]],
    inputs: CalibrationSet,
) -> tuple[float, dict[str, float]]:
    """How far ``candidate`` shifts the scores of normal images above ``reference``'s: the median of
    ``candidate - reference`` over ``inputs``, of all of them (for the model's one threshold) and per
    category (for each category's, where it has at least :data:`MIN_SHIFT_INPUTS`). The median is
    what the graph's thresholds move by (:func:`shifted_thresholds`), so that normal images keep
    their distance to the threshold they are decided by (module docstring)."""
    delta = scores(candidate, inputs.images) - scores(reference, inputs.images)
    cats = np.asarray(inputs.categories)
    per_category = {c: float(np.median(delta[cats == c])) for c in dict.fromkeys(inputs.categories)
                    if c and (cats == c).sum() >= MIN_SHIFT_INPUTS}  # fmt: skip
    return (float(np.median(delta)) if len(delta) else 0.0), per_category


def shifted_thresholds(
    threshold: float, category_thresholds: Mapping[str, float], offset: float, category_offsets: Mapping[str, float]
) -> tuple[float, dict[str, float]]:
    """The quantized graph's own thresholds: the model's plus the shift of all calibration inputs, each
    category's plus its own shift (the shift of all where it had too few inputs or none)."""
    return threshold + offset, {c: t + category_offsets.get(c, offset) for c, t in category_thresholds.items()}


def shift_share(threshold: float, category_thresholds: Mapping[str, float], offset: float,
                category_offsets: Mapping[str, float]) -> float:
    """The largest move of a threshold by :func:`shifted_thresholds`, relative to that threshold."""
    moves = [(offset, threshold), *((category_offsets.get(c, offset), t) for c, t in category_thresholds.items())]
    return max((abs(move) / limit for move, limit in moves if limit > 0), default=0.0)


def rank_agreement(reference: np.ndarray, candidate: np.ndarray, margin: float) -> float:
    """Of the pairs of images whose ``reference`` scores lie more than ``margin`` apart (scores in
    units of each image's threshold), the share ``candidate`` orders the same way (1.0 without such
    pairs). Near-ties are left out: their order means nothing to a line, and a check that counted
    them would refuse a graph for swapping two images it cannot tell apart."""
    apart = np.abs(reference[:, None] - reference[None, :]) > margin
    same = np.sign(candidate[:, None] - candidate[None, :]) == np.sign(reference[:, None] - reference[None, :])
    return float(same[apart].mean()) if apart.any() else 1.0


def compare(
    reference: Callable[[np.ndarray], tuple[np.ndarray, ...]],
    candidate: Callable[[np.ndarray], tuple[np.ndarray, ...]],
    images: Sequence[np.ndarray],
    thresholds: float | Sequence[float],
    batch: int = 8,
    margin: float = TOLERANCE["score_error_rel"],
    offsets: float | Sequence[float] = 0.0,
) -> dict[str, float]:
    """How far ``candidate`` moves maps, scores and decisions from ``reference`` on ``images``, each
    error relative to the threshold its image is decided by on the line (``thresholds``: one per
    image, its category's, or one for all): a bottle decided at 0.08 is hurt by an error twice as
    much as a tile decided at 0.18. ``offsets`` (one per image, or one for all): how far the
    candidate's own threshold lies above the reference's (:func:`score_offsets`); its maps and
    scores are compared after taking it off, i.e. as distances to each graph's own threshold, which
    is what a line sees. ``margin``: how far apart (in thresholds) two images' scores must lie for
    their order to count in :func:`rank_agreement` (the score tolerance)."""
    limits = np.broadcast_to(np.asarray(thresholds, np.float64), (len(images),))
    shifts = np.broadcast_to(np.asarray(offsets, np.float64), (len(images),))
    ref_scores, new_scores, map_errors = [], [], []
    for start in range(0, len(images), batch):
        x = np.stack(images[start : start + batch])
        (ref_map, ref_score), (new_map, new_score) = reference(x)[:2], candidate(x)[:2]
        shift = shifts[start : start + len(x)]
        moved = np.abs(new_map - shift.reshape(-1, *[1] * (new_map.ndim - 1)) - ref_map)
        map_errors.append((moved.reshape(len(x), -1) / limits[start : start + len(x), None]).ravel())
        ref_scores.append(ref_score)
        new_scores.append(new_score - shift)
    ref, new = np.concatenate(ref_scores) / limits, np.concatenate(new_scores) / limits
    err = np.concatenate(map_errors)
    return {
        "score_error_rel": float(np.abs(new - ref).max()),
        "map_error_rel_max": float(err.max()),
        "map_error_rel_p999": float(np.quantile(err, 0.999)),
        "rank_agreement": rank_agreement(ref, new, margin),
        "decision_flips": int(((new >= 1.0) != (ref >= 1.0)).sum()),
    }


def judge(
    reference: Callable[[np.ndarray], tuple[np.ndarray, ...]],
    candidate: Callable[[np.ndarray], tuple[np.ndarray, ...]],
    calib: CalibrationSet,
    check: CalibrationSet,
    threshold: float,
    category_thresholds: Mapping[str, float],
    tolerance: Mapping[str, float] | None = None,
    *,
    path: Path = Path(""),
    float_nodes: int = 0,
    int8_from_block: int | None = None,
    faster_forms_refused: Sequence[str] = (),
) -> QuantReport:
    """The export's check of one quantized graph (``candidate``) against its fp32 graph (``reference``):
    its score shift on the ``calib`` inputs (:func:`score_offsets`), then how far it moves maps, scores
    and order on the held-out ``check`` inputs after that shift, each relative to the threshold its
    image is decided by (:func:`compare`). The keywords are recorded in the report as they are;
    :meth:`QuantReport.failures` says whether it is within ``tolerance`` (:data:`TOLERANCE`)."""
    tolerance = {**TOLERANCE, **(tolerance or {})}
    offset, category_offsets = score_offsets(reference, candidate, calib)
    found = compare(reference, candidate, check.images, check.thresholds(threshold, category_thresholds),
                    margin=tolerance["score_error_rel"],
                    offsets=check.shifts(offset, category_offsets, category_thresholds))  # fmt: skip
    return QuantReport(path, "nncf", "openvino", len(calib.images), len(check.images), float_nodes, **found,
                       score_offset=offset, category_score_offsets=category_offsets, tolerance=tolerance,
                       score_shift_rel=shift_share(threshold, category_thresholds, offset, category_offsets),
                       int8_from_block=int8_from_block, faster_forms_refused=list(faster_forms_refused))


def first_feature_block(model: ProAD) -> int:
    """Index of the encoder block that gives the finest feature level (``blocks.2`` on Lite0)."""
    name = model.encoder.body.feature_info.module_name()[0]
    match = re.fullmatch(r"blocks\.(\d+)(\..*)?", name)
    if match is None:
        raise ExportError(f"int8: the encoder's first feature level comes from {name!r}, not a block")
    return int(match.group(1))


def enough_calibration(
    calibration: Sequence[str | Path],
    cfg: ModelConfig,
    count: int,
    category_tiles: Mapping[str, Grid],
    categories: Sequence[str] = (),
) -> CalibrationSet:
    """The model inputs :func:`calibration_images` reads, or :class:`CalibrationError` when they are too
    few for calibration and the check (the CLI calls this first, so a bad folder fails in seconds)."""
    images = calibration_images(calibration, cfg, count, category_tiles, categories)
    calib, check = images.split()
    if len(check.images) < 4 or len(calib.images) < 8:
        raise CalibrationError(f"{len(images.images)} calibration inputs under {', '.join(map(str, calibration))}; "
                               "int8 needs at least 12 normal images (calibration and the check)")
    return images


def quantize(
    fp32_onnx: str | Path,
    out: str | Path,
    calibration: Sequence[str | Path],
    first_level_block: int,
    count: int = 128,
    tolerance: dict[str, float] | None = None,
    images: CalibrationSet | None = None,
) -> QuantReport:
    """Quantize the fp32 graph at ``fp32_onnx`` on normal images under ``calibration``, compare it with
    fp32 on held-out ones, and write it to ``out`` only if it is within ``tolerance``
    (:data:`TOLERANCE`); otherwise raise :class:`ExportError` and write nothing.

    Of up to ``count`` images, every fourth is held out for the check, the rest calibrate; each held-out
    image is judged by the threshold of its category (:func:`folder_category`), as the line decides it.
    ``first_level_block``: :func:`first_feature_block` of the model. The forms of :func:`int8_forms` are
    tried fastest first (what stays float: :func:`float_nodes`); the first within ``tolerance`` is written,
    and the export is refused only when every form is.
    ``images``: what :func:`enough_calibration` already read from ``calibration`` (else read here)."""
    proto = onnx.load(str(fp32_onnx))
    props = {p.key: p.value for p in proto.metadata_props}
    meta = OnnxMetadata.from_props(props)
    if meta.precision != "fp32" or meta.plugin:
        raise ExportError("int8 quantizes the plain fp32 graph (export without --plugin, --precision fp32)")
    cfg = ModelConfig.model_validate_json(meta.model_config_json)
    if cfg.memory_size:  # its distances are |q|^2 + min(|b|^2 - 2 q.b): rounding the product alone ruins them
        raise ExportError("int8 is not supported for a model with a memory of normal patches (memory_size > 0): "
                          "its nearest-distance search would be rounded; export it as fp32 or fp16")
    if images is None:
        images = enough_calibration(calibration, cfg, count, meta.category_tiles, list(meta.category_thresholds))
    calib, check = images.split()
    reference = runner(proto)
    refused: list[str] = []
    for start in int8_forms(first_level_block):  # the fastest form first; the first within tolerance is written
        keep = float_nodes(proto, start)
        quantized = nncf_quantize(proto, calib.images, keep)
        report = judge(reference, runner(quantized), calib, check, meta.threshold, meta.category_thresholds,
                       tolerance, path=Path(out), float_nodes=len(keep), int8_from_block=start,
                       faster_forms_refused=refused)  # fmt: skip
        failures = report.failures()
        if not failures:
            break
        refused.append(f"encoder int8 from blocks.{start}: " + "; ".join(failures))
    else:
        raise ExportError(f"int8 graph refused on {len(check.images)} held-out normal images (OpenVINO): "
                          + " | ".join(refused) + ". Nothing was written; keep the fp32 graph")
    threshold, category_thresholds = shifted_thresholds(  # the graph's own: fp32's plus its shift
        meta.threshold, meta.category_thresholds, report.score_offset, report.category_score_offsets)
    props.update(meta.model_copy(update={"precision": "int8", "threshold": threshold,
                                         "category_thresholds": category_thresholds}).to_props())  # fmt: skip
    props[QUANT_KEY] = json.dumps({k: v for k, v in report.to_dict().items() if k != "path"})
    del quantized.metadata_props[:]
    onnx.helper.set_model_props(quantized, props)
    quantized.producer_name = proto.producer_name
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    onnx.save(quantized, tmp)
    tmp.replace(out)
    return report


def describe_quant(report: QuantReport) -> str:
    """One line for the CLI."""
    faster = "".join(f"; refused first: {why}" for why in report.faster_forms_refused)
    return (f"wrote {report.path} (int8, {report.quantizer}, the encoder int8 from blocks.{report.int8_from_block}, "
            f"{report.float_nodes} nodes kept in float{faster}); calibrated on "
            f"{report.calibration_images} inputs (thresholds moved by its score shift: {shifts_text(report)}), "
            f"checked on {report.check_images} held-out ones in {report.runtime}: score error "
            f"{report.score_error_rel:.2%} of the threshold, map error {report.map_error_rel_p999:.2%} "
            f"(99.9th pct; max {report.map_error_rel_max:.1%}), rank agreement {report.rank_agreement:.3f}, "
            f"{report.decision_flips} decisions changed")


def shifts_text(report: QuantReport) -> str:
    """``all +0.0022, bottle +0.0015, tile +0.0037``: how far the graph's thresholds moved."""
    return ", ".join([f"all {report.score_offset:+.4f}",
                      *(f"{c} {v:+.4f}" for c, v in sorted(report.category_score_offsets.items()))])
