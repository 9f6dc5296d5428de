"""The built-in shapes dataset: coloured shapes on black, every attribute known.

Follows the shared contract (`shapes-spec.md`): a 64x64 canvas, an 8-colour
palette, four shapes, two sizes, a 3x3 grid of positions, one- and
two-object scenes with captions from a small fixed grammar, and four
(colour, shape) pairs held out of the `train` split so that the `zeroshot`
split measures composition. Rendering has no anti-aliasing, so the judge in
`minidalle.data.shapes.judge` recovers every attribute of a ground-truth image
exactly.

Choices the contract leaves open, made here:
- Boxes are `[x0, y0, x1, y1]` in pixels, `x0, y0` inclusive and `x1, y1`
  exclusive (numpy slicing: `image[y0:y1, x0:x1]`).
- The centre jitter is an integer drawn uniformly from -3..3 on each axis;
  a box of side s is centred at `c` by `x0 = c - s // 2`, then clipped into
  the canvas.
- A template is defined on pixel centres with exact integer arithmetic, and
  touches all four sides of its box (so a rendered object's bounding box is
  its full s x s box).
- In two-object scenes each size is small or large with probability 1/2;
  two small objects take any two of the three cells of their row or column.
- A `zeroshot` scene is built around one held-out pair; its other object (if
  any) is any different pair, held out or not.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..imagefolder import claim_export_folder, image_file_name, prepare_out_dir, save_png, write_metadata

CANVAS = 64

# name -> RGB, in the contract's order
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 200),
    "cyan": (40, 200, 210),
    "orange": (240, 140, 30),
    "white": (235, 235, 235),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond")
SIZES: dict[str, int] = {"small": 14, "large": 26}
GRID: tuple[int, int, int] = (11, 32, 53)  # cell centres, x for columns and y for rows
JITTER = 3

# (row, col) -> phrase used in captions
POSITION: dict[tuple[int, int], str] = {
    (0, 0): "in the top left",
    (0, 1): "at the top",
    (0, 2): "in the top right",
    (1, 0): "on the left",
    (1, 1): "in the center",
    (1, 2): "on the right",
    (2, 0): "in the bottom left",
    (2, 1): "at the bottom",
    (2, 2): "in the bottom right",
}
# (colour, shape) pairs never drawn in the train split
HELD_OUT: frozenset[tuple[str, str]] = frozenset(
    {("green", "triangle"), ("purple", "circle"), ("orange", "square"), ("cyan", "diamond")}
)
RELATIONS: tuple[str, ...] = ("to the left of", "to the right of", "above", "below")
SPLITS: dict[str, int] = {"train": 0, "zeroshot": 1}  # split -> id mixed into the seed

ONE_OBJECT_PROB = 0.6
DROP_ATTRIBUTE_PROB = 0.25  # one-object captions: size word / position phrase left out
SIZE_WORDS_PROB = 0.5  # two-object captions: size words stated

ALL_PAIRS: tuple[tuple[str, str], ...] = tuple((c, s) for c in PALETTE for s in SHAPES)
TRAIN_PAIRS: tuple[tuple[str, str], ...] = tuple(p for p in ALL_PAIRS if p not in HELD_OUT)
HELD_OUT_PAIRS: tuple[tuple[str, str], ...] = tuple(p for p in ALL_PAIRS if p in HELD_OUT)


@dataclass(frozen=True)
class ShapeObject:
    """One drawn object. `bbox` is `(x0, y0, x1, y1)`: x0, y0 inclusive, x1, y1 exclusive."""

    shape: str
    color: str
    size: str
    row: int
    col: int
    bbox: tuple[int, int, int, int]

    def to_dict(self) -> dict:
        """The `objects` entry of a metadata row (`bbox` as a list)."""
        return {**asdict(self), "bbox": list(self.bbox)}


@dataclass(frozen=True)
class Scene:
    """The objects of one image, in the order the caption names them, and its caption."""

    objects: tuple[ShapeObject, ...]
    caption: str


# --- templates and rendering -------------------------------------------------------


@lru_cache(maxsize=4096)
def _cached_mask(shape: str, width: int, height: int) -> np.ndarray:
    # Pixel (x, y) is tested at its centre (x + 1/2, y + 1/2). Everything is scaled by
    # 2 * width * height so the tests are exact integer comparisons.
    w, h = width, height
    y, x = np.mgrid[0:h, 0:w]
    dx = np.abs(2 * x + 1 - w) * h  # distance from the vertical axis, in units of 1 / (2 w h)
    dy = np.abs(2 * y + 1 - h) * w
    if shape == "square":
        mask = np.ones((h, w), dtype=bool)
    elif shape == "circle":  # the inscribed disc (an ellipse when w != h)
        mask = dx**2 + dy**2 <= (w * h) ** 2
    elif shape == "diamond":  # vertices at the midpoints of the four sides
        mask = dx + dy <= w * h
    elif shape == "triangle":  # apex at the top middle, base along the bottom
        # row y spans half-width (y + 1) / h * w / 2, measured at the row's lower edge,
        # so the apex row is not empty
        mask = dx <= (y + 1) * w
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {', '.join(SHAPES)}")
    mask.setflags(write=False)
    return mask


def shape_mask(shape: str, width: int, height: int) -> np.ndarray:
    """The template of `shape` filling a `width` x `height` box: a read-only bool array (height, width)."""
    if width < 1 or height < 1:
        raise ValueError(f"template box must be at least 1x1, got {width}x{height}")
    return _cached_mask(shape, int(width), int(height))


def render_object(shape: str, side: int) -> np.ndarray:
    """The template of `shape` in a square box of side `side`: bool array (side, side)."""
    return shape_mask(shape, side, side)


def render_scene(scene: Scene) -> np.ndarray:
    """Draw a scene: (64, 64, 3) uint8, black background, exact palette colours."""
    image = np.zeros((CANVAS, CANVAS, 3), dtype=np.uint8)
    for obj in scene.objects:
        x0, y0, x1, y1 = obj.bbox
        image[y0:y1, x0:x1][render_object(obj.shape, SIZES[obj.size])] = PALETTE[obj.color]
    return image


# --- placement ---------------------------------------------------------------------


def place_object(shape: str, color: str, size: str, row: int, col: int, dx: int = 0, dy: int = 0) -> ShapeObject:
    """An object in grid cell (row, col), its centre moved by (dx, dy) px, its box clipped into the canvas."""
    side = SIZES[size]
    x0 = min(max(GRID[col] + dx - side // 2, 0), CANVAS - side)
    y0 = min(max(GRID[row] + dy - side // 2, 0), CANVAS - side)
    return ShapeObject(shape, color, size, row, col, (x0, y0, x0 + side, y0 + side))


def _random_object(rng: np.random.Generator, pair: tuple[str, str], size: str, row: int, col: int) -> ShapeObject:
    dx, dy = rng.integers(-JITTER, JITTER + 1, size=2)
    color, shape = pair
    return place_object(shape, color, size, row, col, int(dx), int(dy))


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


# --- captions ----------------------------------------------------------------------


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _noun_phrase(obj: ShapeObject, with_size: bool) -> str:
    words = ([obj.size] if with_size else []) + [obj.color, obj.shape]
    return " ".join([_article(words[0])] + words)


def relation(first: ShapeObject, second: ShapeObject) -> str:
    """How `first` lies relative to `second`: they share a row or a column."""
    if first.row == second.row:
        return "to the left of" if first.col < second.col else "to the right of"
    if first.col == second.col:
        return "above" if first.row < second.row else "below"
    raise ValueError("two-object scenes put both objects in one row or one column")


def caption_for(objects, with_size: bool = True, with_position: bool = True) -> str:
    """The caption of one or two objects; `with_position` only matters for one object."""
    if len(objects) == 1:
        (obj,) = objects
        text = _noun_phrase(obj, with_size)
        return f"{text} {POSITION[obj.row, obj.col]}" if with_position else text
    first, second = objects
    return f"{_noun_phrase(first, with_size)} {relation(first, second)} {_noun_phrase(second, with_size)}"


def full_caption(objects) -> str:
    """The caption stating every attribute (sizes, and the position of a single object)."""
    return caption_for(objects, with_size=True, with_position=True)


# --- phrasings: the same scenes in other words -------------------------------------
# The contract's grammar is `default`. Another phrasing swaps whole words one for one (never a colour or a
# position word, and never the first letter's vowel-ness, so the article stays right): a vocabulary the
# bundled model has not seen, for fine-tuning it (README, "Fine-tuning"), judged by mapping the words back.
PHRASINGS: dict[str, dict[str, str]] = {
    "default": {},
    "casual": {
        "small": "tiny",
        "large": "big",
        "circle": "ball",
        "square": "box",
        "diamond": "gem",
        "above": "over",
        "below": "under",
    },
}


def _word_map(phrasing: str, back: bool = False) -> Callable[[str], str]:
    """A caption -> caption function swapping `phrasing`'s words (`back`: to the default grammar's)."""
    if phrasing not in PHRASINGS:
        raise ValueError(f"unknown phrasing {phrasing!r}; expected one of {', '.join(PHRASINGS)}")
    words = {v: k for k, v in PHRASINGS[phrasing].items()} if back else PHRASINGS[phrasing]
    return lambda caption: " ".join(words.get(w, w) for w in caption.split(" "))


def rephrase(caption: str, phrasing: str) -> str:
    """A default-grammar caption in `phrasing`'s words."""
    return _word_map(phrasing)(caption)


def unphraser(phrasing: str) -> Callable[[str], str]:
    """The function taking a caption in `phrasing`'s words back to the default grammar (default words pass
    through); an unknown phrasing fails here, before any caption."""
    return _word_map(phrasing, back=True)


def unphrase(caption: str, phrasing: str) -> str:
    return unphraser(phrasing)(caption)


# --- scenes ------------------------------------------------------------------------


def generate_scene(split: str, seed: int, index: int) -> Scene:
    """Scene `index` of `split`, a pure function of (split, seed, index)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    rng = np.random.default_rng([seed, SPLITS[split], index])
    sizes = list(SIZES)
    if rng.random() < ONE_OBJECT_PROB:
        pair = _pick(rng, TRAIN_PAIRS if split == "train" else HELD_OUT_PAIRS)
        row, col = (int(v) for v in rng.integers(3, size=2))
        obj = _random_object(rng, pair, _pick(rng, sizes), row, col)
        with_size = rng.random() >= DROP_ATTRIBUTE_PROB
        with_position = rng.random() >= DROP_ATTRIBUTE_PROB
        return Scene((obj,), caption_for([obj], with_size, with_position))

    if split == "train":
        first_pair = _pick(rng, TRAIN_PAIRS)
        second_pair = _pick(rng, [p for p in TRAIN_PAIRS if p != first_pair])
    else:  # one held-out pair, the other any different pair, in random caption order
        first_pair = _pick(rng, HELD_OUT_PAIRS)
        second_pair = _pick(rng, [p for p in ALL_PAIRS if p != first_pair])
        if rng.random() < 0.5:
            first_pair, second_pair = second_pair, first_pair
    first_size, second_size = _pick(rng, sizes), _pick(rng, sizes)
    if first_size == second_size == "small":
        cells = [int(c) for c in rng.choice(3, size=2, replace=False)]
    else:  # a large object needs the two outer cells to keep the boxes apart
        cells = [0, 2] if rng.random() < 0.5 else [2, 0]
    line = int(rng.integers(3))
    if rng.random() < 0.5:  # same row: the cells are columns
        cells_rc = [(line, cells[0]), (line, cells[1])]
    else:  # same column: the cells are rows
        cells_rc = [(cells[0], line), (cells[1], line)]
    objects = (
        _random_object(rng, first_pair, first_size, *cells_rc[0]),
        _random_object(rng, second_pair, second_size, *cells_rc[1]),
    )
    with_size = rng.random() < SIZE_WORDS_PROB
    return Scene(objects, caption_for(objects, with_size))


# --- writing a split to disk -------------------------------------------------------


def _write_range(task: tuple[str, str, int, int, int, str]) -> list[dict]:
    """Render and save images start..stop-1; return their metadata rows (a worker's job)."""
    out_dir, split, seed, start, stop, phrasing = task
    rows = []
    for index in range(start, stop):
        scene = generate_scene(split, seed, index)
        file_name = image_file_name(index)
        save_png(Path(out_dir) / file_name, render_scene(scene))
        text = rephrase(scene.caption, phrasing)
        rows.append({"file_name": file_name, "text": text, "objects": [o.to_dict() for o in scene.objects]})
    return rows


def make_shapes(
    out_dir: str | Path,
    split: str,
    num: int,
    seed: int = 0,
    workers: int | None = None,
    progress: bool = True,
    chunk: int = 250,
    phrasing: str = "default",
) -> int:
    """Write `num` scenes of `split` as an imagefolder under `out_dir`; returns the number written.

    Chunks of `chunk` indices go to `workers` processes (default: all CPUs); each
    renders and saves its PNGs, and the metadata rows are collected in index order.
    `phrasing` words the captions (`PHRASINGS`); the images do not depend on it.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    _word_map(phrasing)  # an unknown phrasing fails before any file is written
    out_dir = prepare_out_dir(claim_export_folder(out_dir, "shapes"))
    tasks = [(str(out_dir), split, seed, start, min(start + chunk, num), phrasing) for start in range(0, num, chunk)]
    workers = max(1, min(workers or os.cpu_count() or 1, len(tasks)))
    rows: list[dict] = []
    with tqdm(total=num, desc=f"shapes/{split}", unit="img", disable=not progress) as bar:

        def collect(results) -> None:
            for chunk_rows in results:
                rows.extend(chunk_rows)
                bar.update(len(chunk_rows))

        if workers == 1:
            collect(map(_write_range, tasks))
        else:
            with multiprocessing.Pool(workers) as pool:
                collect(pool.imap(_write_range, tasks))
    return write_metadata(out_dir, rows)
