"""Tiling of large pictures: cut, stitched back, chosen per category at training, used everywhere."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from proad.data.folder import fit_image, letterbox_box
from proad.data.tiling import NO_TILING, auto_grid, grid_of, infer_tiled, split_tiles, stitch


def test_split_and_stitch_are_inverse_row_by_row() -> None:
    image = np.random.default_rng(0).integers(0, 256, (2 * 64, 3 * 64, 3), dtype=np.uint8)
    tiles = split_tiles(image, (2, 3))
    assert tiles.shape == (6, 64, 64, 3)
    assert np.array_equal(tiles[1], image[:64, 64:128]) and np.array_equal(tiles[3], image[64:, :64])
    assert np.array_equal(stitch(tiles, (2, 3)), image)
    maps = tiles[..., 0].astype(np.float32)  # maps have no channel axis
    assert np.array_equal(stitch(maps, (2, 3)), image[..., 0])
    assert grid_of(image, 64) == (2, 3)
    with pytest.raises(ValueError, match="equal tiles"):
        split_tiles(image[:-1], (2, 3))
    with pytest.raises(ValueError, match="2x2 grid"):
        stitch(tiles, (2, 2))


def test_auto_grid_keeps_each_tile_within_the_shrink() -> None:
    assert auto_grid(1024, 1536, 256, 2.0, 4) == (2, 3)  # 512 native px per tile: shrunk exactly 2x
    assert auto_grid(1025, 1536, 256, 2.0, 4) == (3, 3)
    assert auto_grid(1024, 1536, 256, 2.0, 2) == (2, 2)  # capped: the cost of a frame is rows x cols
    assert auto_grid(330, 276, 256, 2.0, 2) == NO_TILING  # Magnetic Tile's median picture: not tiled
    assert auto_grid(256, 256, 256, 1.0, 4) == NO_TILING
    assert auto_grid(4000, 3000, 256, None, 4) == NO_TILING  # None: never tile


def test_a_grid_fits_the_picture_to_a_whole_number_of_inputs() -> None:
    wide = np.random.default_rng(1).integers(0, 256, (400, 600, 3), dtype=np.uint8)
    assert fit_image(wide, 128, "stretch", grid=(2, 3)).shape == (256, 384, 3)
    assert letterbox_box(400, 600, 128, (2, 3)) == (0, 0, 256, 384)  # same aspect: no padding
    top, left, h, w = letterbox_box(400, 600, 128, (2, 2))
    assert (h, w) == (171, 256) and top == (256 - 171) // 2 and left == 0
    mask = np.zeros((400, 600), np.uint8)
    mask[:10] = 255
    fitted = fit_image(mask, 128, "letterbox", nearest=True, grid=(2, 2))
    assert fitted.shape == (256, 256) and not fitted[:top].any()  # padding is not a defect
    # one tile is exactly the picture as before tiling
    assert np.array_equal(fit_image(wide, 128, "letterbox", grid=NO_TILING), fit_image(wide, 128, "letterbox"))


def test_infer_tiled_stitches_maps_and_scores_the_worst_tile() -> None:
    """Per-pixel "inference" (map = the blue channel / 255, score = the map's max): a stitched map
    must equal the same function on the whole picture, whatever the batching."""
    calls: list[int] = []

    def infer(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        assert x.shape[1:] == (32, 32, 3) and x.dtype == np.uint8
        calls.append(len(x))
        m = x[..., 0].astype(np.float32) / 255.0
        return m, m.reshape(len(x), -1).max(1)

    rng = np.random.default_rng(2)
    big = rng.integers(0, 200, (64, 96, 3), dtype=np.uint8)
    big[40, 70, 0] = 250  # the brightest pixel, in tile (1, 2)
    small = rng.integers(0, 200, (32, 32, 3), dtype=np.uint8)
    maps, scores = infer_tiled(infer, [small, big, small], 32, max_batch=4)
    assert max(calls) <= 4 and sum(calls) == 1 + 6 + 1
    assert maps[1].shape == (64, 96) and np.array_equal(maps[1], big[..., 0] / np.float32(255.0))
    assert np.array_equal(maps[0], small[..., 0] / np.float32(255.0))
    assert scores[1] == pytest.approx(250 / 255) and scores[0] == pytest.approx(small[..., 0].max() / 255)


def test_a_large_picture_category_trains_calibrates_and_evaluates_on_tiles(tmp_path: Path, small_cfg) -> None:
    """A category of 384 x 512 pictures at a 256 px input and ``tile_max_shrink`` 1: every picture
    is 2 x 2 tiles in training, in the held-out scores its threshold comes from, and in evaluation."""
    import torch

    from proad.checkpoint import build_model, load_checkpoint
    from proad.config import TrainConfig
    from proad.data.synth import write_dataset
    from proad.data.tiling import tiles_of
    from proad.evaluate import at_threshold_lines, evaluate, predict
    from proad.train import encode, normal_threshold, open_categories, score_cached, split_holdout, train

    root = write_dataset(tmp_path / "data", ("marble",), train=12, test_good=2, test_per_defect=1, progress=False,
                         hard=True)  # fmt: skip
    cfg = small_cfg.model_copy(update={"tile_max_shrink": 1.0})
    train_cfg = TrainConfig(iterations=8, batch_size=4, warmup=2, holdout_fraction=0.25)
    ckpt = train([root], tmp_path / "m.pt", cfg, train_cfg, progress=False, log=lambda s: None)
    assert ckpt.category_tiles == {"marble": (2, 2)}
    assert load_checkpoint(tmp_path / "m.pt").category_tiles == {"marble": (2, 2)}

    model = build_model(load_checkpoint(tmp_path / "m.pt"))
    (folder,) = open_categories([root], None, 256, grids=ckpt.category_tiles)
    held_out = [folder.image(folder.train[i]) for i in split_holdout(folder, 0.25, 0).holdout]
    assert held_out[0].shape == (512, 512, 3)
    cached = score_cached(model, encode(model, tiles_of(held_out, (2, 2)), progress=False))[1].reshape(-1, 4)
    assert ckpt.train_info["category_thresholds"]["marble"] == pytest.approx(normal_threshold(cached.max(1), 0.01))

    maps, scores, _ = predict(model, held_out)
    assert maps.shape == (len(held_out), 512, 512)
    assert scores == pytest.approx(cached.max(1), rel=1e-2)  # fp16 cache against fp32 inference
    with torch.no_grad():
        alone_map, alone_score = model(torch.from_numpy(held_out[0][256:, :256][None].copy()))
    assert np.allclose(maps[0][256:, :256], alone_map[0].numpy(), atol=1e-5)  # tile (1, 0) where it was
    assert scores[0] >= float(alone_score[0]) - 1e-6

    result = evaluate(model, [folder], ckpt.threshold, progress=False)
    marble = result["categories"]["marble"]
    assert marble["images"] == len(folder.test) and 0.0 <= marble["image_auroc"] <= 1.0 and marble["tiles"] == [2, 2]
    # the stored threshold is one of the thresholds rejecting as few: the best misses no more
    assert 0 <= marble["fewest_missed_at_same_false_alarms"] <= marble["missed_at_threshold"]
    assert at_threshold_lines(result).startswith("marble (2x2 tiles a picture): at threshold")


def test_a_rectangular_input_fits_tiles_and_letterboxes_by_its_own_sides() -> None:
    """``image_size`` (height, width): stretch fills the rectangle, letterbox keeps the picture's
    aspect inside it (a picture of the input's own aspect is not padded at all), tiling compares
    rows with the height and columns with the width, and a fitted picture splits back into inputs."""
    size = (128, 224)  # 7:4, a wide camera's input
    frame = np.random.default_rng(2).integers(0, 256, (720, 1260, 3), dtype=np.uint8)  # 7:4 too
    assert fit_image(frame, size, "stretch").shape == (128, 224, 3)
    assert letterbox_box(720, 1260, size) == (0, 0, 128, 224)  # same aspect: nothing padded
    assert np.array_equal(fit_image(frame, size, "letterbox"), fit_image(frame, size, "stretch"))
    assert letterbox_box(720, 720, size) == (0, 48, 128, 128)  # a square part pads left and right
    assert fit_image(frame, size, "stretch", grid=(2, 3)).shape == (256, 672, 3)
    assert grid_of(np.zeros((256, 672, 3), np.uint8), size) == (2, 3)
    with pytest.raises(ValueError, match="224x128-pixel tiles"):
        grid_of(np.zeros((256, 256, 3), np.uint8), size)
    assert auto_grid(512, 448, size, 2.0, 4) == (2, 1)  # 256 native rows per tile row, 448 columns
    assert auto_grid(256, 896, size, 2.0, 4) == (1, 2)
    assert auto_grid(256, 448, (128, 224), 2.0, 4) == NO_TILING
    fitted = fit_image(frame, size, grid=(2, 2))
    maps, scores = infer_tiled(lambda x: (x[..., 0].astype(np.float32), x[..., 0].max((1, 2)).astype(np.float32)),
                               [fitted], size, 4)
    assert maps[0].shape == (256, 448) and np.array_equal(maps[0], fitted[..., 0])  # tiles back in place
    assert scores[0] == fitted[..., 0].max()
