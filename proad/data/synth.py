"""Synthetic inspection data: textures and an object, with synthetic defects and exact masks.

Tests, the demo and the demo camera need images with known defects, and nothing may be downloaded.
This module renders five categories, each a family of normal images with natural variation:

- ``weave``  procedural woven fabric (two thread systems, over/under, slight rotation and phase);
- ``marble`` procedural veined stone (fractal noise turbulence);
- ``brick``  and ``gravel``: random crops of scikit-image's bundled texture photographs, tinted;
- ``board``  an object with structure: a circuit board with a fixed layout of parts, shifted by a few
  pixels and lit slightly differently from image to image.

Defects are drawn *into* a normal image and the mask is the set of pixels the defect may change:
every pixel outside the mask is bit-identical to the clean image (a test checks this), and a
blended defect that would leave most of its mask unchanged (a dark spot on a black chip) is drawn
again, so no label marks what nobody could see. Kinds:
``scratch``, ``spot``, ``hole``, ``stain`` on every category, plus ``missing`` and ``misplaced``
parts on the board.

Everything is a pure function of ``(seed, category, split, index)``, so a dataset is reproducible
whatever order it is written in, and the demo camera can render the same frames on any machine.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path

import cv2
import numpy as np

SIZE = 256

# ------------------------------------------------------------------------------------------------
# helpers


def _rng(*key: int | str) -> np.random.Generator:
    """A generator seeded by a tuple of ints and strings (strings hashed stably with crc32)."""
    ints = [k if isinstance(k, int) else zlib.crc32(k.encode()) for k in key]
    return np.random.default_rng(ints)


def _noise(rng: np.random.Generator, size: int, scale: int) -> np.ndarray:
    """Smooth noise in [-1, 1]: a random grid of ``size/scale`` cells, upsampled bicubically."""
    cells = max(2, size // scale)
    grid = rng.uniform(-1, 1, (cells + 3, cells + 3)).astype(np.float32)
    big = cv2.resize(grid, (size + 3 * scale, size + 3 * scale), interpolation=cv2.INTER_CUBIC)
    o = int(rng.integers(0, scale))
    return big[o : o + size, o : o + size]


def _fbm(rng: np.random.Generator, size: int, octaves: tuple[int, ...] = (64, 32, 16, 8)) -> np.ndarray:
    out = np.zeros((size, size), np.float32)
    amp, total = 1.0, 0.0
    for scale in octaves:
        out += amp * _noise(rng, size, scale)
        total += amp
        amp *= 0.5
    return out / total


def _colorize(gray: np.ndarray, dark: tuple[float, float, float], light: tuple[float, float, float]) -> np.ndarray:
    """Map gray in [0, 1] onto a two-colour ramp (BGR), float in [0, 255]."""
    g = np.clip(gray, 0, 1)[..., None]
    return (1 - g) * np.asarray(dark, np.float32) + g * np.asarray(light, np.float32)


def _to_u8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------------
# normal images


def _weave(rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    theta = np.deg2rad(rng.uniform(-3, 3))
    period = 10.0 * rng.uniform(0.97, 1.03)
    u = (xx * np.cos(theta) + yy * np.sin(theta)) / period + rng.uniform(0, 2)
    v = (-xx * np.sin(theta) + yy * np.cos(theta)) / period + rng.uniform(0, 2)
    warp_on_top = ((np.floor(u) + np.floor(v)) % 2) == 0
    across_warp = np.sin(np.pi * (u % 1.0)) ** 0.6  # a thread is brightest along its middle
    across_weft = np.sin(np.pi * (v % 1.0)) ** 0.6
    along_warp = 0.75 + 0.25 * np.sin(np.pi * (v % 1.0))  # and shaded where it dives under
    along_weft = 0.75 + 0.25 * np.sin(np.pi * (u % 1.0))
    value = np.where(warp_on_top, across_warp * along_warp, across_weft * along_weft)
    fibres = cv2.GaussianBlur(rng.normal(0, 1, (SIZE, SIZE)).astype(np.float32), (0, 0), 0.8)
    gray = 0.15 + 0.75 * value + 0.05 * fibres + 0.05 * _noise(rng, SIZE, 64)
    warp_col, weft_col = (150, 90, 40), (190, 150, 110)  # denim-like BGR
    col = np.where(warp_on_top[..., None], np.asarray(warp_col, np.float32), np.asarray(weft_col, np.float32))
    return _to_u8(col * gray[..., None] * rng.uniform(0.93, 1.07))


def _marble(rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    turb = _fbm(rng, SIZE, (128, 64, 32, 16, 8))
    angle = rng.uniform(0.5, 1.0)
    veins = np.abs(np.sin((xx * np.cos(angle) + yy * np.sin(angle)) / 22.0 + 5.0 * turb + rng.uniform(0, 6.3)))
    gray = 0.55 + 0.4 * veins**0.35 + 0.04 * _fbm(rng, SIZE, (8, 4))
    img = _colorize(gray, (70, 75, 95), (225, 228, 232))
    return _to_u8(img * rng.uniform(0.95, 1.05))


@cache
def _skimage_texture(name: str) -> np.ndarray:
    import skimage.data

    return getattr(skimage.data, name)().astype(np.float32) / 255.0


def _photo_crop(rng: np.random.Generator, name: str, dark: tuple, light: tuple) -> np.ndarray:
    tex = _skimage_texture(name)
    y, x = rng.integers(0, tex.shape[0] - SIZE + 1), rng.integers(0, tex.shape[1] - SIZE + 1)
    crop = tex[y : y + SIZE, x : x + SIZE]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    gray = (crop - 0.5) * rng.uniform(0.95, 1.05) + 0.5 + rng.uniform(-0.03, 0.03)
    return _to_u8(_colorize(gray, dark, light))


def _brick(rng: np.random.Generator) -> np.ndarray:
    return _photo_crop(rng, "brick", (25, 35, 70), (150, 175, 215))


def _gravel(rng: np.random.Generator) -> np.ndarray:
    return _photo_crop(rng, "gravel", (30, 35, 40), (200, 205, 210))


# --- the circuit board: a fixed layout of parts ------------------------------------------------


@dataclass(frozen=True)
class Part:
    """One part on the board, in board coordinates (before the per-image shift)."""

    kind: str  # "ic", "resistor", "capacitor", "led"
    x: int
    y: int
    w: int
    h: int


BOARD_PARTS: tuple[Part, ...] = (
    Part("ic", 40, 50, 64, 40),
    Part("ic", 150, 150, 56, 56),
    Part("resistor", 140, 50, 30, 12),
    Part("resistor", 140, 80, 30, 12),
    Part("resistor", 50, 150, 12, 30),
    Part("capacitor", 205, 60, 26, 26),
    Part("capacitor", 80, 200, 22, 22),
    Part("led", 205, 110, 14, 10),
    Part("led", 40, 115, 14, 10),
)
# copper traces between pads, board coordinates
BOARD_TRACES: tuple[tuple[tuple[int, int], ...], ...] = (
    ((104, 60), (140, 56)),
    ((104, 80), (122, 80), (122, 86), (140, 86)),
    ((170, 56), (205, 73)),
    ((56, 90), (56, 150)),
    ((56, 180), (56, 211), (80, 211)),
    ((178, 150), (178, 120), (205, 115)),
    ((170, 86), (178, 86), (178, 150)),
    ((47, 115), (47, 90)),
    ((102, 211), (150, 211), (150, 200)),
)
_RESISTOR_BANDS = ((0, 0, 200), (0, 120, 220), (40, 40, 40))


def _draw_part(img: np.ndarray, p: Part, dx: int, dy: int) -> None:
    x, y, w, h = p.x + dx, p.y + dy, p.w, p.h
    if p.kind == "ic":
        pins = max(3, w // 10)
        for i in range(pins):  # pins along the long sides
            px = x + 4 + i * (w - 8) // max(1, pins - 1)
            cv2.rectangle(img, (px - 2, y - 5), (px + 2, y), (190, 190, 195), -1)
            cv2.rectangle(img, (px - 2, y + h), (px + 2, y + h + 5), (190, 190, 195), -1)
        cv2.rectangle(img, (x, y), (x + w, y + h), (28, 28, 30), -1)
        cv2.circle(img, (x + 6, y + 6), 3, (120, 120, 125), -1)
    elif p.kind == "resistor":
        cv2.rectangle(img, (x, y), (x + w, y + h), (140, 190, 215), -1)
        horizontal = w >= h
        for i, col in enumerate(_RESISTOR_BANDS):
            if horizontal:
                bx = x + 7 + i * 6
                cv2.rectangle(img, (bx, y), (bx + 2, y + h), col, -1)
            else:
                by = y + 7 + i * 6
                cv2.rectangle(img, (x, by), (x + w, by + 2), col, -1)
    elif p.kind == "capacitor":
        c, r = (x + w // 2, y + h // 2), w // 2
        cv2.circle(img, c, r, (170, 170, 175), -1)
        cv2.circle(img, c, r - 3, (110, 60, 30), -1)
        cv2.line(img, (c[0] - r + 4, c[1]), (c[0] + r - 4, c[1]), (200, 200, 205), 2)
    elif p.kind == "led":
        cv2.rectangle(img, (x, y), (x + w, y + h), (40, 40, 220), -1)
        cv2.rectangle(img, (x + 3, y + 3), (x + w - 3, y + h - 3), (90, 90, 250), -1)


def _render_board(rng: np.random.Generator, parts: tuple[Part, ...]) -> np.ndarray:
    """Render the board; ``rng`` must be in the same state for a clean and a defective render."""
    dx, dy = (int(v) for v in rng.integers(-3, 4, 2))
    light = rng.uniform(0.94, 1.06)
    tex = 0.5 + 0.5 * _fbm(rng, SIZE, (32, 8))
    img = _colorize(0.35 + 0.3 * tex, (30, 80, 20), (60, 140, 45))
    img = _to_u8(img)
    cv2.rectangle(img, (3 + dx, 3 + dy), (SIZE - 4 + dx, SIZE - 4 + dy), (35, 95, 25), 2)
    for hx, hy in ((16, 16), (SIZE - 17, 16), (16, SIZE - 17), (SIZE - 17, SIZE - 17)):
        cv2.circle(img, (hx + dx, hy + dy), 7, (170, 185, 190), -1)
        cv2.circle(img, (hx + dx, hy + dy), 4, (20, 20, 20), -1)
    for trace in BOARD_TRACES:
        pts = np.array([(px + dx, py + dy) for px, py in trace], np.int32)
        cv2.polylines(img, [pts], False, (70, 150, 190), 3)
    for p in parts:
        _draw_part(img, p, dx, dy)
    shade = np.linspace(0.97, 1.03, SIZE, dtype=np.float32)[None, :, None]
    return _to_u8(img.astype(np.float32) * light * shade)


def _board(rng: np.random.Generator) -> np.ndarray:
    return _render_board(rng, BOARD_PARTS)


# ------------------------------------------------------------------------------------------------
# defects: each returns the defective image and its exact mask


def _random_curve(rng: np.random.Generator, length: float) -> np.ndarray:
    start = rng.uniform(40, SIZE - 40, 2)
    angle = rng.uniform(0, 2 * np.pi)
    pts = [start]
    step = length / 12
    for _ in range(12):
        angle += rng.normal(0, 0.15)
        pts.append(pts[-1] + step * np.array([np.cos(angle), np.sin(angle)]))
    return np.clip(np.array(pts), 2, SIZE - 3)


def _blob(rng: np.random.Generator, radius: float, wobble: float = 0.3) -> np.ndarray:
    """Filled irregular blob as a uint8 mask (0/1)."""
    c = rng.uniform(radius + 20, SIZE - radius - 20, 2)
    angles = np.sort(rng.uniform(0, 2 * np.pi, 10))
    radii = radius * (1 + rng.uniform(-wobble, wobble, 10))
    pts = np.stack([c[0] + radii * np.cos(angles), c[1] + radii * np.sin(angles)], 1).astype(np.int32)
    m = np.zeros((SIZE, SIZE), np.uint8)
    cv2.fillPoly(m, [pts], 1)
    return m


def _blend(img: np.ndarray, target: np.ndarray, alpha: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Blend ``target`` into ``img`` with ``alpha``; the mask is exactly where alpha is applied."""
    mask = alpha > 0.1
    a = np.where(mask, alpha, 0.0)[..., None]
    out = img.astype(np.float32) * (1 - a) + target * a
    result = np.where(mask[..., None], _to_u8(out), img)
    return result, mask


def _scratch(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    canvas = np.zeros((SIZE, SIZE), np.float32)
    pts = _random_curve(rng, rng.uniform(40, 90))
    cv2.polylines(canvas, [np.rint(pts).astype(np.int32)], False, 1.0, int(rng.integers(2, 4)), cv2.LINE_AA)
    alpha = np.clip(canvas * 1.2, 0, 1)
    bright = rng.random() < 0.5
    target = np.full((SIZE, SIZE, 3), 235.0 if bright else 15.0, np.float32)
    return _blend(img, target, alpha)


def _spot(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    m = _blob(rng, rng.uniform(6, 13)).astype(np.float32)
    alpha = np.clip(cv2.GaussianBlur(m, (0, 0), 1.5) * 1.6, 0, 0.95)
    colour = rng.choice(np.array([[20, 40, 60], [30, 30, 30], [200, 220, 230]], np.float32))
    return _blend(img, np.broadcast_to(colour, (SIZE, SIZE, 3)).astype(np.float32), alpha)


def _hole(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    m = _blob(rng, rng.uniform(8, 16), wobble=0.45)
    rim = cv2.dilate(m, np.ones((5, 5), np.uint8)) - m
    hole = np.full((SIZE, SIZE, 3), 8.0, np.float32) + 10 * _noise(rng, SIZE, 8)[..., None]
    target = np.where(rim[..., None] > 0, np.float32(225.0), hole)
    return _blend(img, target, np.maximum(m, rim).astype(np.float32))


def _stain(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    m = _blob(rng, rng.uniform(12, 24), wobble=0.4).astype(np.float32)
    alpha = np.clip(cv2.GaussianBlur(m, (0, 0), 3.0) * 1.3, 0, 0.85)
    tint = rng.choice(np.array([[0.3, 0.9, 1.4], [1.5, 0.8, 0.4], [0.4, 1.3, 0.6]], np.float32))
    target = np.clip(img.astype(np.float32) * tint + 20, 0, 255)
    return _blend(img, target, alpha)


def _part_change(
    rng: np.random.Generator, board_rng_state: dict, kind: str
) -> tuple[np.ndarray, np.ndarray]:
    """Render the board with one part missing or moved; the mask covers every changed pixel."""
    idx = int(rng.integers(len(BOARD_PARTS)))
    parts = list(BOARD_PARTS)
    if kind == "missing":
        parts.pop(idx)
    else:
        p = parts[idx]
        shift = rng.integers(8, 15, 2) * rng.choice([-1, 1], 2)
        parts[idx] = replace(p, x=int(p.x + shift[0]), y=int(p.y + shift[1]))
    clean_rng = np.random.default_rng()
    clean_rng.bit_generator.state = board_rng_state
    clean = _render_board(clean_rng, BOARD_PARTS)
    moved_rng = np.random.default_rng()
    moved_rng.bit_generator.state = board_rng_state
    img = _render_board(moved_rng, tuple(parts))
    changed = (img != clean).any(-1).astype(np.uint8)
    # annotate the region, as a person would: close small gaps and fill the outline
    region = cv2.morphologyEx(changed, cv2.MORPH_CLOSE, np.ones((5, 5), np.uint8))
    contours, _ = cv2.findContours(region, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(region, contours, -1, 1, -1)
    mask = (region | changed).astype(bool)
    return img, mask


# ------------------------------------------------------------------------------------------------
# public API

#: a blended defect (scratch, spot, hole, stain) must visibly change at least this share of its
#: mask, or it is drawn again (up to ``_MAX_DRAWS`` times, each a pure function of the sample's key
#: and the attempt)
MIN_VISIBLE = 0.5
_MAX_DRAWS = 8

_GENERIC_DEFECTS = {"scratch": _scratch, "spot": _spot, "hole": _hole, "stain": _stain}
_NORMALS = {"weave": _weave, "marble": _marble, "brick": _brick, "gravel": _gravel, "board": _board}
CATEGORIES: tuple[str, ...] = tuple(_NORMALS)
DEFECTS: dict[str, tuple[str, ...]] = {
    name: ("scratch", "spot", "hole", "stain") + (("missing", "misplaced") if name == "board" else ())
    for name in CATEGORIES
}


@dataclass(frozen=True)
class Sample:
    """One rendered image: BGR uint8 ``[256, 256, 3]`` (hard mode: :data:`HARD_SHAPES`), boolean mask of
    the same size, defect kind (``"good"`` if none)."""

    image: np.ndarray
    mask: np.ndarray
    kind: str


def render(category: str, kind: str = "good", seed: int = 0, split: str = "train", index: int = 0) -> Sample:
    """Render one image of ``category`` with defect ``kind`` ("good" for none), deterministically."""
    if category not in _NORMALS:
        raise ValueError(f"unknown category {category!r}; known: {', '.join(CATEGORIES)}")
    if kind != "good" and kind not in DEFECTS[category]:
        raise ValueError(f"category {category!r} has no defect {kind!r}; known: {', '.join(DEFECTS[category])}")
    rng = _rng(seed, category, split, index)
    state = rng.bit_generator.state
    clean = _NORMALS[category](rng)
    if kind == "good":
        return Sample(clean, np.zeros((SIZE, SIZE), bool), kind)
    if kind in ("missing", "misplaced"):  # the mask is the changed region, filled
        return Sample(*_part_change(_rng(seed, category, split, index, kind), state, kind), kind)
    for attempt in range(_MAX_DRAWS):
        key = (seed, category, split, index, kind) + ((attempt,) if attempt else ())
        img, mask = _GENERIC_DEFECTS[kind](clean, _rng(*key))
        if visible_fraction(clean, img, mask) >= MIN_VISIBLE:
            break
    return Sample(img, mask, kind)


def visible_fraction(clean: np.ndarray, defective: np.ndarray, mask: np.ndarray) -> float:
    """Share of the mask's pixels whose colour the defect visibly changed (any channel by > 10).

    A dark spot blended onto a black chip changes almost nothing, yet its mask would call those
    pixels defective: a label no inspector would give. :func:`render` draws such a defect again.
    """
    if not mask.any():
        return 0.0
    diff = np.abs(defective.astype(np.int16) - clean.astype(np.int16)).max(-1)
    return float((diff[mask] > 10).mean())


def render_clean(category: str, seed: int = 0, split: str = "train", index: int = 0) -> np.ndarray:
    """The normal image underneath ``render(category, kind, seed, split, index)``, for any kind."""
    return render(category, "good", seed, split, index).image


#: The hard mode's image per category, (height, width) cropped from a 512 x 512 mosaic: not square.
HARD_SHAPES = {"weave": (512, 352), "marble": (384, 512), "brick": (512, 416), "gravel": (448, 320),
               "board": (512, 384)}  # fmt: skip
#: The hard mode's defect contrast: the defect keeps this share of its difference to the clean image.
HARD_CONTRAST = (0.3, 0.6)


def render_hard(
    category: str,
    kind: str = "good",
    seed: int = 0,
    split: str = "train",
    index: int = 0,
    contrast: float | None = None,
) -> Sample:
    """What real lines show and the default set does not: small, faint defects on large, grayscale,
    non-square images (``proad-synth --hard``).

    A 2 x 2 mosaic of four normal images of the category (a panel of four boards, four patches of
    fabric), one of them carrying the defect (at its usual size in pixels, so a quarter of its share of
    the image), converted to grayscale, cropped to the category's :data:`HARD_SHAPES` around the
    defect, and the defect faded to 30-60 % of its contrast (``contrast`` fixes that share; 1.0: not
    faded, the same crop). The mask is the defect's mask where the faded defect still changes the
    pixel, as in the default set; a defect that fading would leave mostly invisible keeps its full
    contrast."""
    rng = _rng(seed, category, split, index, "hard")
    which = int(rng.integers(4))
    tiles, clean_tiles, masks = [], [], []
    for quarter in range(4):
        sub = index * 4 + quarter  # every tile its own normal image
        sample = render(category, kind if quarter == which else "good", seed, f"hard-{split}", sub)
        tiles.append(sample.image)
        clean_tiles.append(render_clean(category, seed, f"hard-{split}", sub) if quarter == which else sample.image)
        masks.append(sample.mask)

    def mosaic(parts: list[np.ndarray]) -> np.ndarray:
        return np.vstack([np.hstack(parts[:2]), np.hstack(parts[2:])])

    image, clean = (cv2.cvtColor(cv2.cvtColor(mosaic(p), cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
                    for p in (tiles, clean_tiles))  # fmt: skip
    mask = mosaic(masks)
    if mask.any():
        share = rng.uniform(*HARD_CONTRAST) if contrast is None else contrast
        faded = clean.astype(np.float32) + share * (image.astype(np.float32) - clean)
        faded_u8 = _to_u8(faded)
        still = mask & (np.abs(faded_u8.astype(np.int16) - clean).max(-1) > 3)
        if still.sum() >= MIN_VISIBLE * mask.sum():
            image, mask = np.where(mask[..., None], faded_u8, clean), still
    h, w = HARD_SHAPES[category]
    ys, xs = np.nonzero(mask)
    y0, x0 = _window(ys, h, rng), _window(xs, w, rng)
    crop = (slice(y0, y0 + h), slice(x0, x0 + w))
    return Sample(np.ascontiguousarray(image[crop]), np.ascontiguousarray(mask[crop]), kind)


def _window(coords: np.ndarray, size: int, rng: np.random.Generator) -> int:
    """Start of a random window of ``size`` in the 2 x SIZE mosaic holding every coordinate it can."""
    total = 2 * SIZE
    first, last = 0, total - size
    if coords.size:
        first, last = max(0, int(coords.max()) - size + 1), min(int(coords.min()), total - size)
        if first > last:  # the defect is wider than the window: start at its beginning
            return min(int(coords.min()), total - size)
    return int(rng.integers(first, last + 1))


def write_dataset(
    out: str | Path,
    categories: tuple[str, ...] | list[str] = CATEGORIES,
    train: int = 100,
    test_good: int = 20,
    test_per_defect: int = 8,
    seed: int = 0,
    progress: bool = True,
    hard: bool = False,
) -> Path:
    """Write an MVTec-AD-layout dataset under ``out`` and return it (``hard``: :func:`render_hard`).

    Files are written atomically per image (PNG through a temporary name), so an interrupted run
    leaves no half-written image that a later training would choke on.
    """
    from tqdm import tqdm

    root = Path(out)
    jobs: list[tuple[str, str, str, int, Path, Path | None]] = []
    for cat in categories:
        if cat not in _NORMALS:
            raise ValueError(f"unknown category {cat!r}; known: {', '.join(CATEGORIES)}")
        base = root / cat
        jobs += [(cat, "good", "train", i, base / "train" / "good" / f"{i:03d}.png", None) for i in range(train)]
        jobs += [(cat, "good", "test", i, base / "test" / "good" / f"{i:03d}.png", None) for i in range(test_good)]
        for kind in DEFECTS[cat]:
            for i in range(test_per_defect):
                jobs.append((
                    cat, kind, "test", i,
                    base / "test" / kind / f"{i:03d}.png",
                    base / "ground_truth" / kind / f"{i:03d}_mask.png",
                ))
    for cat, kind, split, i, img_path, mask_path in tqdm(jobs, desc="render", unit="img", disable=not progress):
        sample = (render_hard if hard else render)(cat, kind, seed, split, i)
        _write_png(img_path, sample.image)
        if mask_path is not None:
            _write_png(mask_path, sample.mask.astype(np.uint8) * 255)
    return root


def _write_png(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    if not cv2.imwrite(str(tmp), img):
        raise OSError(f"cannot write {path}")
    tmp.replace(path)
