"""bench/probe_scale.py: a picture keeps its aspect at the category's one scale, is mirrored (not
stretched) up to the input, and every level's training window covers the same part of the picture."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import probe_scale


def test_a_picture_is_scaled_once_and_mirrored_up_to_the_input() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (300, 120, 3), dtype=np.uint8)
    out, (h, w) = probe_scale.scaled_padded(img, 0.85, 256)
    assert (h, w) == (255, 102)  # aspect kept: 300 x 120 times 0.85
    assert out.shape == (256, 256, 3)  # at least the input, a multiple of 16
    assert np.array_equal(out[:h, :w], probe_scale.cv2.resize(img, (w, h), interpolation=probe_scale.cv2.INTER_AREA))
    assert np.array_equal(out[h:, :w], out[h - 1 : h - 1 - (256 - h) : -1, :w])  # the bottom mirrors the picture
    assert np.array_equal(out[:h, w : 2 * w], out[:h, w - 1 :: -1])  # and so does the right margin
    big, (bh, bw) = probe_scale.scaled_padded(rng.integers(0, 256, (400, 617, 3), dtype=np.uint8), 1.0, 256)
    assert (bh, bw) == (400, 617) and big.shape == (400, 624, 3)  # larger than the input: only to 16 px


def test_every_level_s_window_covers_the_same_part_of_the_picture() -> None:
    # a stride-8 level and a stride-16 level whose values are the input position they stand for
    rows, cols = 20, 30  # a 320 x 480 picture
    fine = torch.arange(2 * rows * 2 * cols, dtype=torch.float32).view(1, 1, 2 * rows, 2 * cols)
    coarse = torch.arange(rows * cols, dtype=torch.float32).view(1, 1, rows, cols)
    for seed in range(20):
        f, c = probe_scale.random_window([fine, coarse], [8, 16], 256, np.random.default_rng(seed))
        assert f.shape[-2:] == (32, 32) and c.shape[-2:] == (16, 16)
        r, q = divmod(int(c[0, 0, 0, 0]), cols)  # the window's first coarse cell
        assert int(f[0, 0, 0, 0]) == (2 * r) * (2 * cols) + 2 * q


@pytest.mark.parametrize("args", [["--model", '{"nope": 1}'], ["--train", "[1]"], ["--area-side", "8"]])
def test_bad_arguments_are_usage_errors(args: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        probe_scale.main(args)
    assert exc.value.code == 2
