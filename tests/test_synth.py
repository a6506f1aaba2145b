"""The generator: deterministic, exact masks, a readable MVTec-AD layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from proad.data.folder import MVTecFolder, list_categories
from proad.data.synth import CATEGORIES, DEFECTS, MIN_VISIBLE, render, render_clean, visible_fraction, write_dataset


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
