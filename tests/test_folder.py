"""The MVTec-AD folder reader: clear errors for every way a folder can be wrong."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import BOTTLE
from proad.data.folder import DatasetError, MVTecFolder, list_categories


def _category(root: Path, name: str = "part", size: int = 64) -> Path:
    base = root / name
    for d in ("train/good", "test/good", "test/dent", "ground_truth/dent"):
        (base / d).mkdir(parents=True)
    img = np.full((size, size, 3), 128, np.uint8)
    cv2.imwrite(str(base / "train/good/000.png"), img)
    cv2.imwrite(str(base / "test/good/000.png"), img)
    cv2.imwrite(str(base / "test/dent/000.png"), img)
    mask = np.zeros((size, size), np.uint8)
    mask[10:20, 10:20] = 255
    cv2.imwrite(str(base / "ground_truth/dent/000_mask.png"), mask)
    return base


def test_reads_and_resizes(tmp_path: Path) -> None:
    _category(tmp_path, size=100)
    folder = MVTecFolder(tmp_path, "part", image_size=64)
    assert [i.kind for i in folder.test] == ["dent", "good"]
    img, mask = folder.load(folder.test[0])
    assert img.shape == (64, 64, 3) and mask.shape == (64, 64)
    assert mask.sum() == pytest.approx(64 * 64 * 100 / 10000, rel=0.3)
    _, good_mask = folder.load(folder.test[1])
    assert not good_mask.any()


def test_missing_root_and_layout(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not found"):
        list_categories(tmp_path / "nope")
    (tmp_path / "loose").mkdir()
    with pytest.raises(DatasetError, match="MVTec-AD layout"):
        list_categories(tmp_path)
    with pytest.raises(DatasetError, match="no train/good"):
        MVTecFolder(tmp_path, "loose")
    with pytest.raises(DatasetError, match="category folder not found"):
        MVTecFolder(tmp_path, "absent")


def test_empty_train_folder(tmp_path: Path) -> None:
    base = _category(tmp_path)
    (base / "train/good/000.png").unlink()
    with pytest.raises(DatasetError, match="holds no images"):
        MVTecFolder(tmp_path, "part")


def test_unreadable_image(tmp_path: Path) -> None:
    base = _category(tmp_path)
    (base / "test/good/000.png").write_bytes(b"\x89PNG truncated")
    folder = MVTecFolder(tmp_path, "part")
    good = next(i for i in folder.test if i.kind == "good")
    with pytest.raises(DatasetError, match=r"cannot read image .*000.png"):
        folder.load(good)
    (base / "train/good/000.png").write_bytes(b"")
    with pytest.raises(DatasetError, match="cannot read image"):
        folder.image(folder.train[0])


def test_missing_mask(tmp_path: Path) -> None:
    base = _category(tmp_path)
    (base / "ground_truth/dent/000_mask.png").unlink()
    with pytest.raises(DatasetError, match="no mask for"):
        MVTecFolder(tmp_path, "part")


def test_mask_of_the_wrong_size(tmp_path: Path) -> None:
    base = _category(tmp_path)
    cv2.imwrite(str(base / "ground_truth/dent/000_mask.png"), np.zeros((32, 48), np.uint8))
    folder = MVTecFolder(tmp_path, "part")
    with pytest.raises(DatasetError, match="48x32 but its image is 64x64"):
        folder.load(folder.test[0])


def test_mask_named_like_its_image(tmp_path: Path) -> None:
    base = _category(tmp_path)
    shutil.move(base / "ground_truth/dent/000_mask.png", base / "ground_truth/dent/000.png")
    assert MVTecFolder(tmp_path, "part").test[0].mask_path.name == "000.png"


@pytest.mark.skipif(not BOTTLE.is_dir(), reason=f"real MVTec AD bottle set not present at {BOTTLE}")
def test_reads_real_mvtec_bottle() -> None:
    folder = MVTecFolder(BOTTLE, "bottle")
    assert len(folder.train) == 209 and len(folder.test) == 83
    defects = [i for i in folder.test if i.label]
    img, mask = folder.load(defects[0])
    assert img.shape == (256, 256, 3) and mask.any()
