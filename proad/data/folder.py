"""Datasets in the MVTec-AD folder layout, the field's common denominator.

::

    ROOT/<category>/train/good/*.png
    ROOT/<category>/test/good/*.png
    ROOT/<category>/test/<defect>/*.png
    ROOT/<category>/ground_truth/<defect>/<stem>_mask.png   (or <stem>.png)

Real MVTec-AD, VisA converted to this layout and our generated data all read the same way. Layout
problems are found when the dataset is opened, image problems when an image is read; both raise
:class:`DatasetError` naming the path and what is wrong, never a bare OpenCV ``None``.
Images come back as BGR uint8 at the model's input size, fitted by :func:`fit_image` (the one
function the edge daemon uses too), masks as booleans fitted the same way.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from proad.data.geometry import Size, size_hw
from proad.data.tiling import NO_TILING, Grid

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


class DatasetError(ValueError):
    """The folder is not an MVTec-AD-layout dataset, or one of its files is unusable."""


@dataclass(frozen=True)
class Item:
    """One image of a category: where it is, whether it is anomalous, and its mask (if any)."""

    path: Path
    kind: str  # "good" or the defect folder name
    mask_path: Path | None

    @property
    def label(self) -> int:
        return 0 if self.kind == "good" else 1


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def list_categories(root: str | Path) -> list[str]:
    """Categories under ``root``: folders that have ``train/good``."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset root not found: {root}")
    cats = sorted(p.name for p in root.iterdir() if (p / "train" / "good").is_dir())
    if not cats:
        raise DatasetError(f"{root} has no category folders with train/good (expected the MVTec-AD layout)")
    return cats


def _read_raw(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None or img.size == 0:
        raise DatasetError(f"cannot read image {path} (missing, empty or not an image)")
    return img


#: How a picture of any size and aspect becomes the model's input (a square, or the rectangle of a
#: rectangular ``image_size``, :mod:`proad.data.geometry`).
#: ``stretch`` squashes it to the input's aspect (the shape of a part changes with the camera's aspect);
#: ``letterbox`` scales it to fit, keeping its aspect, and fills the rest by mirroring the picture
#: at its edges (no artificial border for the encoder to see). Masks are padded as not defective,
#: so the padding counts as normal surface in the pixel metrics.
RESIZE_MODES = ("stretch", "letterbox")


def letterbox_box(height: int, width: int, size: Size, grid: Grid = NO_TILING) -> tuple[int, int, int, int]:
    """Where a ``height`` x ``width`` picture lies inside the letterboxed ``grid`` of ``size`` inputs
    (one by default): ``(top, left, content height, content width)``."""
    out_h, out_w = fitted_hw(size, grid)
    scale = min(out_h / height, out_w / width)
    h, w = max(1, min(out_h, round(height * scale))), max(1, min(out_w, round(width * scale)))
    return (out_h - h) // 2, (out_w - w) // 2, h, w


def _resize(img: np.ndarray, width: int, height: int, nearest: bool = False) -> np.ndarray:
    if img.shape[:2] == (height, width):
        return img
    if nearest:
        return cv2.resize(img, (width, height), interpolation=cv2.INTER_NEAREST)
    shrink = img.shape[0] > height or img.shape[1] > width
    return cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def fitted_hw(size: Size, grid: Grid = NO_TILING) -> tuple[int, int]:
    """(height, width) a picture is fitted to: the input's size times the tiling ``grid``."""
    height, width = size_hw(size)
    return grid[0] * height, grid[1] * width


def fit_image(
    img: np.ndarray, size: Size, resize: str = "stretch", nearest: bool = False, grid: Grid = NO_TILING
) -> np.ndarray:
    """The one preprocessing of training, evaluation, export and the edge daemon: any picture to
    the input ``size`` (a square side or (height, width); INTER_AREA when shrinking, linear when
    enlarging, nearest for masks), by ``resize`` (:data:`RESIZE_MODES`). With a tiling ``grid``
    (rows, cols) the target is ``rows`` x ``cols`` inputs, to be cut by
    :func:`proad.data.tiling.split_tiles`."""
    out_h, out_w = fitted_hw(size, grid)
    if resize == "stretch":
        return _resize(img, out_w, out_h, nearest)
    if resize != "letterbox":
        raise ValueError(f"resize must be one of {', '.join(RESIZE_MODES)}, got {resize!r}")
    top, left, h, w = letterbox_box(img.shape[0], img.shape[1], size, grid)
    inner = _resize(img, w, h, nearest)
    if (h, w) == (out_h, out_w):
        return inner
    border = cv2.BORDER_CONSTANT if nearest else cv2.BORDER_REFLECT_101  # masks: padding is not a defect
    return cv2.copyMakeBorder(inner, top, out_h - h - top, left, out_w - w - left, border, value=0)


def read_image(path: Path, size: Size, resize: str = "stretch", grid: Grid = NO_TILING) -> np.ndarray:
    """A BGR uint8 image fitted to the input ``size`` (or a tiling ``grid`` of them; :func:`fit_image`)."""
    return fit_image(_read_raw(path), size, resize, grid=grid)


class MVTecFolder:
    """One category of an MVTec-AD-layout dataset."""

    def __init__(
        self, root: str | Path, category: str, image_size: Size = 256, resize: str = "stretch", grid: Grid = NO_TILING
    ) -> None:
        self.root = Path(root)
        self.category = category
        self.image_size = image_size
        self.grid = grid  # tiles (rows, cols) each picture is fitted to (proad.data.tiling)
        if resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {', '.join(RESIZE_MODES)}, got {resize!r}")
        self.resize = resize
        base = self.root / category
        if not base.is_dir():
            raise DatasetError(f"category folder not found: {base}")
        train_good = base / "train" / "good"
        if not train_good.is_dir():
            raise DatasetError(f"{base} has no train/good folder (expected the MVTec-AD layout)")
        self.train = [Item(p, "good", None) for p in _images(train_good)]
        if not self.train:
            raise DatasetError(f"{train_good} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        self.test: list[Item] = []
        test_dir = base / "test"
        if test_dir.is_dir():
            for kind_dir in sorted(p for p in test_dir.iterdir() if p.is_dir()):
                for path in _images(kind_dir):
                    mask = None if kind_dir.name == "good" else self._mask_path(base, kind_dir.name, path)
                    self.test.append(Item(path, kind_dir.name, mask))

    @staticmethod
    def _mask_path(base: Path, kind: str, image: Path) -> Path:
        folder = base / "ground_truth" / kind
        for name in (f"{image.stem}_mask.png", f"{image.stem}.png"):
            if (folder / name).is_file():
                return folder / name
        raise DatasetError(f"no mask for {image} (looked for {folder}/{image.stem}_mask.png)")

    def native_size(self, sample: int = 32) -> tuple[int, int]:
        """Median (height, width) of up to ``sample`` training pictures as stored, evenly spaced
        (what :func:`proad.data.tiling.auto_grid` decides the tiling from)."""
        picks = self.train[:: max(1, len(self.train) // sample)][:sample]
        shapes = np.array([_read_raw(item.path).shape[:2] for item in picks])
        return int(np.median(shapes[:, 0])), int(np.median(shapes[:, 1]))

    def train_digest(self) -> str:
        """SHA-256 of the training pictures' file names and sizes, in order: which pictures a model was
        trained on (a refit checks it before it splits them as training did)."""
        listing = "".join(f"{item.path.name}\t{item.path.stat().st_size}\n" for item in self.train)
        return hashlib.sha256(listing.encode()).hexdigest()

    def image(self, item: Item) -> np.ndarray:
        """BGR uint8 at the model's size (times the tiling grid)."""
        return read_image(item.path, self.image_size, self.resize, self.grid)

    def load(self, item: Item) -> tuple[np.ndarray, np.ndarray]:
        """(BGR uint8 image, boolean mask) at the model's size (times the tiling grid); the mask is all
        False for good images."""
        size, grid = self.image_size, self.grid
        raw = _read_raw(item.path)
        if item.mask_path is None:
            return fit_image(raw, size, self.resize, grid=grid), np.zeros(fitted_hw(size, grid), bool)
        m = cv2.imread(str(item.mask_path), cv2.IMREAD_GRAYSCALE)
        if m is None or m.size == 0:
            raise DatasetError(f"cannot read mask {item.mask_path}")
        if m.shape != raw.shape[:2]:
            raise DatasetError(
                f"mask {item.mask_path} is {m.shape[1]}x{m.shape[0]} but its image is {raw.shape[1]}x{raw.shape[0]}"
            )
        return fit_image(raw, size, self.resize, grid=grid), fit_image(m, size, self.resize, True, grid) > 127

    def __repr__(self) -> str:
        tiles = "" if self.grid == NO_TILING else f", {self.grid[0]}x{self.grid[1]} tiles"
        counts = f"{len(self.train)} train, {len(self.test)} test"
        return f"MVTecFolder({str(self.root)!r}, {self.category!r}: {counts}{tiles})"
