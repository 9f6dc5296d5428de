"""Judging generated shapes images against their prompts (the contract's "Judging a generated image").

1. each pixel goes to the nearest palette colour when its RGB distance to it is
   under 60, else to background;
2. 4-connected components of one colour with at least 20 pixels are objects;
3. an object's size is small when its bounding box's longer side is under 20 px,
   its position is the third of the canvas (row, column) holding its centroid, and
   its shape is the template (`minidalle.data.shapes.generate.shape_mask`) with the highest
   intersection over union at its bounding box;
4. a one-object prompt is right on an attribute when exactly one object is found
   and the attribute matches; a two-object prompt is right when exactly two
   objects are found (`count`), they are the two named (colour, shape) pairs
   (`objects_found`), the relation between their centroids holds ("to the left
   of": the first centroid's x is smaller, "above": its y is smaller), and any
   stated sizes match. An extra blob, or one object split into components of two
   colours, makes the image wrong, as a person would see it.

Until 2026-12 the two-object rule did not require exactly two objects (the
largest component of each named pair was taken, whatever else was drawn);
`two_object_rule="lenient"` (`eval-shapes --two_object_rule lenient`) judges by
it, to compare with figures measured then.

Choices the contract leaves open: the caption parser accepts "a" or "an" before
any word, and each size word of a two-object caption on its own; a two-object
caption must name two different (colour, shape) pairs, as the generator does.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from ...errors import UserError
from ..imagefolder import manifest_entries, open_manifest_image
from .generate import CANVAS, PALETTE, POSITION, RELATIONS, SHAPES, SIZES, shape_mask, unphraser

MATCH_DISTANCE = 60  # RGB distance under which a pixel takes a palette colour
MIN_PIXELS = 20  # smallest component counted as an object
SMALL_MAX_SIDE = 20  # bounding box longer side under this -> "small"

# every judged attribute; a result holds None for those its prompt does not state
ATTRIBUTES = ("color", "shape", "size", "position", "count", "objects_found", "relation")

_COLOR_NAMES = tuple(PALETTE)
_PALETTE_RGB = np.array([PALETTE[c] for c in _COLOR_NAMES], dtype=np.int32)  # (P, 3)
_PHRASE_TO_CELL = {tuple(phrase.split()): cell for cell, phrase in POSITION.items()}
_RELATION_WORDS = {tuple(r.split()): r for r in RELATIONS}


# --- captions ----------------------------------------------------------------------


def _parse_noun_phrase(words: list[str], i: int, caption: str) -> tuple[dict, int]:
    """Parse "a|an [size] colour shape" from words[i:]; return it and the next index."""

    def expect(options, what: str) -> str:
        if i >= len(words) or words[i] not in options:
            found = repr(words[i]) if i < len(words) else "the end"
            raise ValueError(f"caption {caption!r}: expected {what} at word {i + 1}, found {found}")
        return words[i]

    expect(("a", "an"), "'a' or 'an'")
    i += 1
    size = None
    if i < len(words) and words[i] in SIZES:
        size = words[i]
        i += 1
    color = expect(PALETTE, f"a colour ({', '.join(PALETTE)})")
    i += 1
    shape = expect(SHAPES, f"a shape ({', '.join(SHAPES)})")
    return {"color": color, "shape": shape, "size": size}, i + 1


def parse_caption(caption: str) -> dict:
    """Parse a caption of the shapes grammar; raise `ValueError` for anything else.

    One object: `{"kind": "one", "color", "shape", "size" (or None), "position" ((row, col) or None)}`.
    Two objects: `{"kind": "two", "objects": [{"color", "shape", "size"}, x2], "relation"}`.
    """
    if not isinstance(caption, str):
        raise ValueError(f"caption must be a string, got {type(caption).__name__}")
    words = caption.lower().split()
    first, i = _parse_noun_phrase(words, 0, caption)
    rest = tuple(words[i:])
    if not rest or rest in _PHRASE_TO_CELL:
        return {"kind": "one", **first, "position": _PHRASE_TO_CELL.get(rest)}
    for relation_words, relation in _RELATION_WORDS.items():
        if rest[: len(relation_words)] == relation_words:
            second, end = _parse_noun_phrase(words, i + len(relation_words), caption)
            if end != len(words):
                raise ValueError(
                    f"caption {caption!r}: unexpected words after the second object: {' '.join(words[end:])!r}"
                )
            if (first["color"], first["shape"]) == (second["color"], second["shape"]):
                raise ValueError(f"caption {caption!r}: the two objects must differ in colour or shape")
            return {"kind": "two", "objects": [first, second], "relation": relation}
    raise ValueError(
        f"caption {caption!r}: after {' '.join(words[:i])!r} expected a position phrase "
        f"({', '.join(POSITION.values())}) or a relation ({', '.join(RELATIONS)}), found {' '.join(rest)!r}"
    )


# --- detection ---------------------------------------------------------------------


def _to_array(image) -> np.ndarray:
    """A PIL image or (H, W, 3) uint8 array as a (64, 64, 3) uint8 array (NEAREST resize)."""
    if isinstance(image, Image.Image):
        image = image.convert("RGB")
    else:
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
        if image.shape[:2] == (CANVAS, CANVAS):
            return image
        image = Image.fromarray(image)
    if image.size != (CANVAS, CANVAS):
        image = image.resize((CANVAS, CANVAS), Image.NEAREST)
    return np.asarray(image)


def _palette_classes(image: np.ndarray) -> np.ndarray:
    """(64, 64) palette index of each pixel, -1 for background."""
    pixels = image.reshape(-1, 1, 3).astype(np.int32)
    dist2 = ((pixels - _PALETTE_RGB[None]) ** 2).sum(-1)  # (N, P)
    nearest = dist2.argmin(1)
    close = dist2[np.arange(len(nearest)), nearest] < MATCH_DISTANCE**2
    return np.where(close, nearest, -1).reshape(image.shape[:2])


def _component_roots(classes: np.ndarray) -> np.ndarray:
    """Union-find over 4-neighbour edges of equal class: each pixel's component id (its smallest flat index)."""
    h, w = classes.shape
    index = np.arange(h * w).reshape(h, w)
    right = (classes[:, :-1] == classes[:, 1:]) & (classes[:, :-1] >= 0)
    down = (classes[:-1] == classes[1:]) & (classes[:-1] >= 0)
    u = np.concatenate([index[:, :-1][right], index[:-1][down]])
    v = np.concatenate([index[:, 1:][right], index[1:][down]])
    parent = np.arange(h * w)
    while True:
        pu, pv = parent[u], parent[v]  # roots, as parent is fully compressed
        differ = pu != pv
        if not differ.any():
            return parent
        # hook the larger root under the smaller one (values only decrease: no cycles)
        np.minimum.at(parent, np.maximum(pu[differ], pv[differ]), np.minimum(pu[differ], pv[differ]))
        while True:  # pointer jumping until every pixel points at its root
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand


def detect_objects(image) -> list[dict]:
    """The objects in an image (PIL or (H, W, 3) uint8), in raster order of their first pixel.

    Each: color, shape, size, row, col, bbox [x0, y0, x1, y1] (end exclusive),
    centroid [x, y] (pixel centres at +0.5), pixels, and iou (of the chosen template).
    """
    classes = _palette_classes(_to_array(image))
    flat_classes = classes.ravel()
    foreground = np.flatnonzero(flat_classes >= 0)
    roots = _component_roots(classes).ravel()[foreground]
    order = np.argsort(roots, kind="stable")
    grouped = foreground[order]  # pixels of one component are contiguous, in raster order
    starts = np.flatnonzero(np.diff(roots[order], prepend=-1) != 0)
    counts = np.diff(starts, append=len(grouped))
    objects = []
    for start, count in zip(starts[counts >= MIN_PIXELS], counts[counts >= MIN_PIXELS]):
        pixels = grouped[start : start + count]
        ys, xs = np.divmod(pixels, CANVAS)
        x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
        mask = np.zeros((y1 - y0, x1 - x0), dtype=bool)
        mask[ys - y0, xs - x0] = True
        ious = []
        for shape in SHAPES:
            template = shape_mask(shape, x1 - x0, y1 - y0)
            ious.append((mask & template).sum() / (mask | template).sum())
        best = int(np.argmax(ious))  # ties go to the first shape in SHAPES
        cx, cy = float(xs.mean()) + 0.5, float(ys.mean()) + 0.5
        objects.append(
            {
                "color": _COLOR_NAMES[flat_classes[pixels[0]]],
                "shape": SHAPES[best],
                "size": "small" if max(x1 - x0, y1 - y0) < SMALL_MAX_SIDE else "large",
                "row": min(int(cy * 3 // CANVAS), 2),
                "col": min(int(cx * 3 // CANVAS), 2),
                "bbox": [x0, y0, x1, y1],
                "centroid": [cx, cy],
                "pixels": int(len(pixels)),
                "iou": float(ious[best]),
            }
        )
    return objects


# --- judging -----------------------------------------------------------------------


def _find(objects: list[dict], named: dict) -> dict | None:
    """The largest detected object with the named colour and shape, if any."""
    matches = [o for o in objects if o["color"] == named["color"] and o["shape"] == named["shape"]]
    return max(matches, key=lambda o: o["pixels"], default=None)


def _relation_holds(relation: str, first: dict, second: dict) -> bool:
    (ax, ay), (bx, by) = first["centroid"], second["centroid"]
    return {"to the left of": ax < bx, "to the right of": ax > bx, "above": ay < by, "below": ay > by}[relation]


TWO_OBJECT_RULES = ("exact", "lenient")


def _score(spec: dict, objects: list[dict], two_object_rule: str = "exact") -> dict:
    """Per-attribute booleans (None where the prompt does not state it) and all_correct."""
    result = dict.fromkeys(ATTRIBUTES)
    if spec["kind"] == "one":
        found = len(objects) == 1
        obj = objects[0] if found else {}
        result["count"] = found
        result["color"] = found and obj["color"] == spec["color"]
        result["shape"] = found and obj["shape"] == spec["shape"]
        if spec["size"] is not None:
            result["size"] = found and obj["size"] == spec["size"]
        if spec["position"] is not None:
            result["position"] = found and (obj["row"], obj["col"]) == tuple(spec["position"])
    else:
        pair = [_find(objects, named) for named in spec["objects"]]
        found = None not in pair
        if two_object_rule == "exact":
            result["count"] = len(objects) == 2
        result["objects_found"] = found
        result["relation"] = found and _relation_holds(spec["relation"], *pair)
        stated = [(named["size"], obj) for named, obj in zip(spec["objects"], pair) if named["size"] is not None]
        if stated:
            result["size"] = found and all(obj["size"] == size for size, obj in stated)
    result["all_correct"] = all(v for v in result.values() if v is not None)
    return result


def _check_rule(two_object_rule: str) -> None:
    if two_object_rule not in TWO_OBJECT_RULES:
        raise UserError(f"two_object_rule must be 'exact' or 'lenient', got {two_object_rule!r}")


def judge(image, caption: str, two_object_rule: str = "exact", phrasing: str = "default") -> dict:
    """Judge one image against its prompt (worded in `phrasing`, `generate.PHRASINGS`).

    Returns `kind` ("one"/"two"), a boolean or None for each of `ATTRIBUTES`
    (None: the prompt does not state it), `all_correct`, and the detected `objects`.
    Raises `ValueError` for a caption outside the grammar.
    """
    _check_rule(two_object_rule)
    spec = parse_caption(unphraser(phrasing)(caption))
    objects = detect_objects(image)
    return {"kind": spec["kind"], **_score(spec, objects, two_object_rule), "objects": objects}


# --- a manifest of generated images ------------------------------------------------


def _rate(right: int, total: int) -> float | None:
    return right / total if total else None


def evaluate_manifest(path: str | Path, two_object_rule: str = "exact", phrasing: str = "default") -> dict:
    """Judge every line `{"prompt": ..., "file": ...}` of a JSONL manifest (files relative to its folder),
    the prompts worded in `phrasing` (`generate.PHRASINGS`).

    Returns the number of images (`images`, `one_object`, `two_object`), `accuracy`
    per attribute over the images whose prompt states it (with those counts in
    `judged`), and the all-correct rate overall, for one-object and two-object prompts.
    """
    _check_rule(two_object_rule)
    to_grammar = unphraser(phrasing)  # an unknown phrasing fails before any image is read
    path = Path(path)
    right, judged, kinds, all_right = Counter(), Counter(), Counter(), Counter()
    for where, spec, image_path in manifest_entries(path, lambda caption: parse_caption(to_grammar(caption))):
        result = _score(spec, detect_objects(open_manifest_image(image_path, where)), two_object_rule)
        kinds[spec["kind"]] += 1
        all_right[spec["kind"]] += result["all_correct"]
        for name in ATTRIBUTES:
            if result[name] is not None:
                judged[name] += 1
                right[name] += result[name]
    images = sum(kinds.values())
    if not images:
        raise UserError(f"{path}: the manifest has no entries")
    return {
        "manifest": str(path),
        "two_object_rule": two_object_rule,
        "images": images,
        "one_object": kinds["one"],
        "two_object": kinds["two"],
        "all_correct": _rate(sum(all_right.values()), images),
        "all_correct_one": _rate(all_right["one"], kinds["one"]),
        "all_correct_two": _rate(all_right["two"], kinds["two"]),
        "accuracy": {name: _rate(right[name], judged[name]) for name in ATTRIBUTES},
        "judged": {name: judged[name] for name in ATTRIBUTES},
    }


def format_report(report: dict) -> str:
    """The report of `evaluate_manifest` as a readable table."""

    def pct(rate: float | None) -> str:
        return "     -" if rate is None else f"{100 * rate:5.1f}%"

    lines = [
        f"{report['manifest']}: {report['images']} images "
        f"({report['one_object']} one-object, {report['two_object']} two-object prompts)",
        f"{'attribute':<16}{'accuracy':>9}{'images':>8}",
    ]
    for name in ATTRIBUTES:
        lines.append(f"{name:<16}{pct(report['accuracy'][name]):>9}{report['judged'][name]:>8}")
    lines.append(f"{'all correct':<16}{pct(report['all_correct']):>9}{report['images']:>8}")
    lines.append(f"{'  one-object':<16}{pct(report['all_correct_one']):>9}{report['one_object']:>8}")
    lines.append(f"{'  two-object':<16}{pct(report['all_correct_two']):>9}{report['two_object']:>8}")
    return "\n".join(lines)
