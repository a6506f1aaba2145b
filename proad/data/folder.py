"""Datasets in the MVTec-AD folder layout, the field's common denominator.

::

    ROOT/<category>/train/good/*.png
    ROOT/<category>/test/good/*.png
    ROOT/<category>/test/<defect>/*.png
    ROOT/<category>/ground_truth/<defect>/<stem>_mask.png   (or <stem>.png)

Real MVTec-AD, VisA converted to this layout and our generated data all read the same way. Layout
problems are found when the dataset is opened, image problems when an image is read; both raise
:class:`DatasetError` naming the path and what is wrong, never a bare OpenCV ``None``.
Images come back as BGR uint8 at the model's input size (what the camera path gives the model),
masks as booleans at the same size.
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


def fit_image(img: np.ndarray, size: int) -> np.ndarray:
    """Resize to ``size``x``size``: INTER_AREA when shrinking (no aliasing), linear when enlarging."""
    if img.shape[:2] == (size, size):
        return img
    shrink = img.shape[0] > size or img.shape[1] > size
    return cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def read_image(path: Path, size: int) -> np.ndarray:
    """A BGR uint8 image resized to ``size``x``size`` (INTER_AREA when shrinking)."""
    return fit_image(_read_raw(path), size)


class MVTecFolder:
    """One category of an MVTec-AD-layout dataset."""

    def __init__(self, root: str | Path, category: str, image_size: int = 256) -> None:
        self.root = Path(root)
        self.category = category
        self.image_size = image_size
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
        return read_image(item.path, self.image_size)

    def load(self, item: Item) -> tuple[np.ndarray, np.ndarray]:
        """(BGR uint8 image, boolean mask) at the model's size; the mask is all False for good images."""
        size = self.image_size
        raw = _read_raw(item.path)
        if item.mask_path is None:
            return fit_image(raw, size), np.zeros((size, size), bool)
        m = cv2.imread(str(item.mask_path), cv2.IMREAD_GRAYSCALE)
        if m is None or m.size == 0:
            raise DatasetError(f"cannot read mask {item.mask_path}")
        if m.shape != raw.shape[:2]:
            raise DatasetError(
                f"mask {item.mask_path} is {m.shape[1]}x{m.shape[0]} but its image is {raw.shape[1]}x{raw.shape[0]}"
            )
        if m.shape != (size, size):
            m = cv2.resize(m, (size, size), interpolation=cv2.INTER_NEAREST)
        return fit_image(raw, size), m > 127

    def __repr__(self) -> str:
        return f"MVTecFolder({str(self.root)!r}, {self.category!r}: {len(self.train)} train, {len(self.test)} test)"
