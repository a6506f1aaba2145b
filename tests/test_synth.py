"""The generator: deterministic, exact masks, a readable MVTec-AD layout."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from proad.data.folder import MVTecFolder, list_categories
from proad.data.synth import (
    CATEGORIES,
    DEFECTS,
    HARD_SHAPES,
    MIN_VISIBLE,
    render,
    render_clean,
    render_hard,
    visible_fraction,
    write_dataset,
)


def test_categories_and_defect_kinds() -> None:
    assert len(CATEGORIES) >= 4 and "board" in CATEGORIES  # an object with structure, not only texture
    assert {"scratch", "spot", "hole", "stain"} <= set(DEFECTS["weave"])
    assert {"missing", "misplaced"} <= set(DEFECTS["board"])


@pytest.mark.parametrize("category", CATEGORIES)
def test_masks_are_exact(category: str) -> None:
    for i, kind in enumerate(DEFECTS[category]):
        sample = render(category, kind, seed=3, split="test", index=i)
        clean = render_clean(category, seed=3, split="test", index=i)
        assert sample.image.shape == (256, 256, 3) and sample.image.dtype == np.uint8
        changed = (sample.image != clean).any(-1)
        assert not (changed & ~sample.mask).any(), f"{category}/{kind}: pixels changed outside the mask"
        assert sample.mask.sum() >= 30, f"{category}/{kind}: defect too small to matter"
        assert changed[sample.mask].mean() > 0.5, f"{category}/{kind}: mask much larger than the defect"


def test_an_invisible_defect_is_drawn_again() -> None:
    # seed 1, test image 18: the first draw of this dark spot lands on a black chip (about 10 % of its
    # mask visibly changes); a label no inspector would give, so the generator draws it again
    sample = render("board", "spot", seed=1, split="test", index=18)
    clean = render_clean("board", seed=1, split="test", index=18)
    assert visible_fraction(clean, sample.image, sample.mask) >= MIN_VISIBLE
    dark = np.full((256, 256, 3), 30, np.uint8)
    mask = np.zeros((256, 256), bool)
    mask[:10, :10] = True
    assert visible_fraction(dark, dark, mask) == 0.0  # what the rule measures: unchanged pixels under a mask
    for category in CATEGORIES:  # and it holds across a whole test split
        for kind in set(DEFECTS[category]) - {"missing", "misplaced"}:
            for i in range(6):
                s = render(category, kind, seed=1, split="test", index=i)
                clean = render_clean(category, seed=1, split="test", index=i)
                assert visible_fraction(clean, s.image, s.mask) >= MIN_VISIBLE, f"{category}/{kind} {i}"


def test_rendering_is_deterministic_and_varied() -> None:
    a = render("weave", "scratch", seed=1, split="test", index=4)
    b = render("weave", "scratch", seed=1, split="test", index=4)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    assert not np.array_equal(render("weave", seed=1, index=5).image, a.image)
    assert not np.array_equal(render("weave", seed=2, index=4).image, render("weave", seed=1, index=4).image)


def test_unknown_names_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown category"):
        render("carpet")
    with pytest.raises(ValueError, match="no defect"):
        render("weave", "missing")


def test_write_dataset_layout(tiny_data: Path, tmp_path: Path) -> None:
    assert list_categories(tiny_data) == ["board", "marble"]
    board = MVTecFolder(tiny_data, "board")
    assert len(board.train) == 12
    kinds = {item.kind for item in board.test}
    assert kinds == {"good", *DEFECTS["board"]}
    item = next(i for i in board.test if i.kind == "missing")
    image, mask = board.load(item)
    assert image.shape == (256, 256, 3) and mask.dtype == bool and mask.any()
    # same seed, same bytes
    again = write_dataset(tmp_path / "again", ("board",), train=12, test_good=3, test_per_defect=2, progress=False)
    for rel in ("train/good/011.png", "test/missing/001.png", "ground_truth/missing/001_mask.png"):
        assert (again / "board" / rel).read_bytes() == (tiny_data / "board" / rel).read_bytes()


@pytest.mark.parametrize("category", CATEGORIES)
def test_hard_mode_is_faint_small_grayscale_and_not_square(category: str) -> None:
    h, w = HARD_SHAPES[category]
    assert h != w and h * w > 256 * 256  # larger than the model input, and not square
    good = render_hard(category, "good", seed=2, split="test", index=1)
    assert good.image.shape == (h, w, 3) and not good.mask.any()
    for kind in DEFECTS[category]:
        s = render_hard(category, kind, seed=2, split="test", index=1)
        assert s.image.shape == (h, w, 3) and s.mask.shape == (h, w) and s.mask.any()
        assert (s.image[..., 0] == s.image[..., 1]).all() and (s.image[..., 1] == s.image[..., 2]).all()
        assert s.mask.mean() < 0.05  # a small share of a large image
        again = render_hard(category, kind, seed=2, split="test", index=1)
        assert np.array_equal(again.image, s.image) and np.array_equal(again.mask, s.mask)
    # the default set is untouched by the hard mode's existence: same seed, same image as ever
    assert render(category, "spot", seed=2, split="test", index=1).image.shape == (256, 256, 3)


def test_hard_defects_are_faded_but_visible() -> None:
    for i in range(4):
        faint = render_hard("marble", "scratch", seed=0, split="test", index=i)
        full = render_hard("marble", "scratch", seed=0, split="test", index=i, contrast=1.0)
        outside = ~full.mask
        assert np.array_equal(faint.image[outside], full.image[outside])  # only the defect's pixels differ
        assert faint.mask.sum() >= MIN_VISIBLE * full.mask.sum() and not (faint.mask & ~full.mask).any()
        assert not np.array_equal(faint.image[full.mask], full.image[full.mask])  # faded where it was drawn


def test_proad_synth_hard_writes_a_readable_set(tmp_path: Path) -> None:
    from proad.cli import synth_main

    assert synth_main(["--out", str(tmp_path), "--categories", "gravel", "--train", "2", "--test-good", "1",
                       "--test-per-defect", "1", "--hard", "--quiet"]) == 0  # fmt: skip
    folder = MVTecFolder(tmp_path, "gravel")
    item = next(i for i in folder.test if i.kind == "hole")
    image, mask = folder.load(item)  # read at the model's input size like any dataset
    assert image.shape == (256, 256, 3) and mask.any()
    raw = cv2.imread(str(item.path), cv2.IMREAD_UNCHANGED)
    assert raw.shape[:2] == HARD_SHAPES["gravel"]
