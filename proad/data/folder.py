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

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

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


#: How a picture of any size and aspect becomes the model's square input.
#: ``stretch`` squashes it to the square (the shape of a part changes with the camera's aspect);
#: ``letterbox`` scales it to fit, keeping its aspect, and fills the rest by mirroring the picture
#: at its edges (no artificial border for the encoder to see). Masks are padded as not defective,
#: so the padding counts as normal surface in the pixel metrics.
RESIZE_MODES = ("stretch", "letterbox")


def letterbox_box(height: int, width: int, size: int) -> tuple[int, int, int, int]:
    """Where a ``height`` x ``width`` picture lies inside the letterboxed ``size`` square:
    ``(top, left, content height, content width)``."""
    scale = size / max(height, width)
    h, w = max(1, min(size, round(height * scale))), max(1, min(size, round(width * scale)))
    return (size - h) // 2, (size - w) // 2, h, w


def _resize(img: np.ndarray, width: int, height: int, nearest: bool = False) -> np.ndarray:
    if img.shape[:2] == (height, width):
        return img
    if nearest:
        return cv2.resize(img, (width, height), interpolation=cv2.INTER_NEAREST)
    shrink = img.shape[0] > height or img.shape[1] > width
    return cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def fit_image(img: np.ndarray, size: int, resize: str = "stretch", nearest: bool = False) -> np.ndarray:
    """The one preprocessing of training, evaluation, export and the edge daemon: any picture to
    ``size`` x ``size`` (INTER_AREA when shrinking, linear when enlarging, nearest for masks), by
    ``resize`` (:data:`RESIZE_MODES`)."""
    if resize == "stretch":
        return _resize(img, size, size, nearest)
    if resize != "letterbox":
        raise ValueError(f"resize must be one of {', '.join(RESIZE_MODES)}, got {resize!r}")
    top, left, h, w = letterbox_box(img.shape[0], img.shape[1], size)
    inner = _resize(img, w, h, nearest)
    if (h, w) == (size, size):
        return inner
    border = cv2.BORDER_CONSTANT if nearest else cv2.BORDER_REFLECT_101  # masks: padding is not a defect
    return cv2.copyMakeBorder(inner, top, size - h - top, left, size - w - left, border, value=0)


def read_image(path: Path, size: int, resize: str = "stretch") -> np.ndarray:
    """A BGR uint8 image fitted to ``size``x``size`` (:func:`fit_image`)."""
    return fit_image(_read_raw(path), size, resize)


class MVTecFolder:
    """One category of an MVTec-AD-layout dataset."""

    def __init__(self, root: str | Path, category: str, image_size: int = 256, resize: str = "stretch") -> None:
        self.root = Path(root)
        self.category = category
        self.image_size = image_size
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

    def image(self, item: Item) -> np.ndarray:
        """BGR uint8 at the model's size."""
        return read_image(item.path, self.image_size, self.resize)

    def load(self, item: Item) -> tuple[np.ndarray, np.ndarray]:
        """(BGR uint8 image, boolean mask) at the model's size; the mask is all False for good images."""
        size = self.image_size
        raw = _read_raw(item.path)
        if item.mask_path is None:
            return fit_image(raw, size, self.resize), np.zeros((size, size), bool)
        m = cv2.imread(str(item.mask_path), cv2.IMREAD_GRAYSCALE)
        if m is None or m.size == 0:
            raise DatasetError(f"cannot read mask {item.mask_path}")
        if m.shape != raw.shape[:2]:
            raise DatasetError(
                f"mask {item.mask_path} is {m.shape[1]}x{m.shape[0]} but its image is {raw.shape[1]}x{raw.shape[0]}"
            )
        return fit_image(raw, size, self.resize), fit_image(m, size, self.resize, nearest=True) > 127

    def __repr__(self) -> str:
        return f"MVTecFolder({str(self.root)!r}, {self.category!r}: {len(self.train)} train, {len(self.test)} test)"
