"""The MVTec-AD folder reader: clear errors for every way a folder can be wrong."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import BOTTLE, MAGNETIC_TILE
from proad.data.folder import (
    RESIZE_MODES,
    DatasetError,
    MVTecFolder,
    fit_image,
    letterbox_box,
    list_categories,
    read_image,
)


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


def _camera_frames(path: Path) -> list[np.ndarray]:
    """What a camera could hand the daemon for the image at ``path``: as decoded, and as one
    8-bit gray channel, 16-bit and BGRA where the image allows."""
    frames = [cv2.imread(str(path), cv2.IMREAD_UNCHANGED)]
    color = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if (color[..., 0] == color[..., 1]).all() and (color[..., 1] == color[..., 2]).all():
        frames.append(color[..., 0].copy())  # a monochrome camera: one channel
    frames.append(color.astype(np.uint16) << 8)  # a 16-bit camera with the same 8 significant bits
    frames.append(cv2.cvtColor(color, cv2.COLOR_BGR2BGRA))
    return frames


def _parity_images(tmp_path: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for name, shape in (("wide.png", (200, 333, 3)), ("gray.png", (300, 120)), ("small.png", (64, 100, 3))):
        cv2.imwrite(str(tmp_path / name), rng.integers(0, 256, shape, dtype=np.uint8))
        paths.append(tmp_path / name)
    for root in (BOTTLE, MAGNETIC_TILE):  # real camera images: colour PNGs, and gray JPEGs of many sizes
        if root.is_dir():
            paths += sorted(root.glob("*/test/*/*"))[::40]
    return paths


def test_training_evaluation_and_the_daemon_see_the_same_pixels(tmp_path: Path) -> None:
    """One preprocessing for everyone: what training and evaluation read from disk
    (``MVTecFolder.image``/``load``) is, pixel for pixel, what the daemon's ``prepare`` makes of the
    same picture coming from a camera as colour, gray, 16-bit or BGRA frames; the exported graph
    and every backend take exactly those arrays."""
    from proad.edge.preprocess import prepare

    paths = _parity_images(tmp_path)
    for resize in RESIZE_MODES:
        for path in paths:
            expected = read_image(path, 256, resize)
            for frame in _camera_frames(path):
                got = prepare(frame, 256, resize)
                assert got.dtype == np.uint8 and got.shape == (256, 256, 3)
                assert np.array_equal(got, expected), f"{resize} {path.name}: {frame.shape} {frame.dtype} differs"


def test_letterbox_keeps_the_aspect_and_fills_the_rest_by_mirroring(tmp_path: Path) -> None:
    """A wide picture keeps its shape: it is scaled to fit the square and centred; the band above
    and below mirrors its edge rows (no artificial border); its mask is fitted the same way, with
    no defect in the padding."""
    img = np.zeros((100, 200, 3), np.uint8)
    img[:, :, 1] = np.arange(200, dtype=np.uint8)[None, :]  # a horizontal ramp
    img[:10] = 255  # a bright band at the top
    out = fit_image(img, 128, "letterbox")
    top, left, h, w = letterbox_box(100, 200, 128)
    assert (top, left, h, w) == (32, 0, 64, 128)
    assert out.shape == (128, 128, 3)
    assert np.array_equal(out[top : top + h], cv2.resize(img, (128, 64), interpolation=cv2.INTER_AREA))
    assert np.array_equal(out[top - 1], out[top + 1])  # mirrored about the first content row
    assert (out[:top, :, 0] == 255).any()  # the bright band reflected into the padding above
    mask = np.zeros((100, 200), np.uint8)
    mask[40:60, 90:110] = 255
    fitted = fit_image(mask, 128, "letterbox", nearest=True)
    assert fitted.shape == (128, 128) and not fitted[:top].any() and not fitted[top + h :].any()
    assert fitted[top + 27 : top + 37, 59:69].all()  # rows 40-60, columns 90-110 at scale 0.64
    # a tall picture pads left and right; a square one is a plain resize
    assert letterbox_box(300, 100, 96) == (0, 32, 96, 32)
    square = np.full((50, 50, 3), 7, np.uint8)
    assert np.array_equal(fit_image(square, 64, "letterbox"), fit_image(square, 64, "stretch"))
    with pytest.raises(ValueError, match="resize must be one of"):
        fit_image(img, 64, "crop")


def test_a_letterboxed_folder_fits_image_and_mask_alike(tmp_path: Path) -> None:
    """Training and evaluation read the real images through the same rule, masks aligned."""
    if not MAGNETIC_TILE.is_dir():
        pytest.skip(f"the Magnetic Tile set is not at {MAGNETIC_TILE} (../shared/data)")
    folder = MVTecFolder(MAGNETIC_TILE, "magnetic_tile", 256, "letterbox")
    item = next(i for i in folder.test if i.kind == "crack")
    img, mask = folder.load(item)
    raw = cv2.imread(str(item.path))
    top, left, h, w = letterbox_box(raw.shape[0], raw.shape[1], 256)
    assert img.shape == (256, 256, 3) and mask.shape == (256, 256)
    assert mask.any() and not mask[:top].any() and not mask[:, :left].any()
    assert not mask[top + h :].any() and not mask[:, left + w :].any()
