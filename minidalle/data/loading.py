"""Captioned image sets through 🤗 `datasets`: loading, validation, transforms.

`--data` is a local imagefolder (images + `metadata.jsonl` or `metadata.csv`,
as `minidalle make-shapes` / `export-dataset` write), a folder saved with
`Dataset.save_to_disk`, or anything `datasets.load_dataset` accepts.

Every example is checked once before training (`validate`): a missing or
empty caption, a zero-byte, unreadable or truncated image is reported in one
error naming the files, or skipped and counted with `skip_bad_examples`. So
nothing fails in the middle of an epoch.

Images reach the models as float tensors (3, R, R) in [0, 1]: converted to
RGB (transparency composited on white), resized so the short side is R, then
centre-cropped (or randomly cropped).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile

from ..errors import UserError
from ..options import arg

logger = logging.getLogger(__name__)

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, never silently grey


@dataclass
class DataArguments:
    """Where the captioned images come from and how they are prepared."""

    data: str = arg(
        "", help="A folder (imagefolder with metadata.jsonl/.csv, or save_to_disk) or a `load_dataset` name."
    )
    split: str = arg("train", help="Which split of --data to use.")
    image_column: str = arg("image", help="The column holding the images.")
    caption_column: str = arg("text", help="The column holding the captions.")
    resolution: int = arg(64, help="Images are resized and cropped to this square size.", minimum=8)
    random_crop: bool = arg(False, help="Crop at a random place instead of the centre (augmentation).")
    skip_bad_examples: bool = arg(
        False, help="Skip (and count) unreadable images / empty captions instead of stopping."
    )
    max_examples: int = arg(0, help="Use only the first N examples (0: all).", minimum=0)


def _unicode_error(exc: BaseException | None) -> UnicodeDecodeError | None:
    """The UnicodeDecodeError behind `exc` (its cause or context chain), if any."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, UnicodeDecodeError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _has_dataset_card(folder: Path) -> bool:
    """A README.md whose YAML header declares `configs` (datasets then reads the splits it names)."""
    card = folder / "README.md"
    if not card.is_file():
        return False
    text = card.read_text(encoding="utf-8", errors="replace")
    return text.startswith("---") and "\nconfigs:" in text.split("\n---", 1)[0]


@contextlib.contextmanager
def _no_progress_bars():
    """datasets' progress bars off for a local folder: its "Downloading data: N files" only copies paths, and
    "Generating train split" counts what `validate` reports. (datasets has one global switch: it is restored.)"""
    import datasets

    was_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()


def _load_raw(data: str, split: str):
    import datasets

    path = Path(data)
    try:
        if path.is_dir() and any((path / f).exists() for f in ("dataset_info.json", "dataset_dict.json")):
            with _no_progress_bars():
                loaded = datasets.load_from_disk(str(path))
        elif path.is_dir() and _has_dataset_card(path):  # its `configs` name the splits (e.g. emoji-styles' zeroshot)
            with _no_progress_bars():
                loaded = datasets.load_dataset(str(path))
        elif path.is_dir():
            with _no_progress_bars():
                loaded = datasets.load_dataset("imagefolder", data_dir=str(path))
        elif path.exists():
            raise UserError(f"--data {data}: expected a folder, got a file")
        else:
            if data.startswith((".", "/", "~")) or data.count("/") > 1:  # a path, not a hub name
                raise UserError(f"--data {data}: no such folder")
            loaded = datasets.load_dataset(data)
    except UserError:
        raise
    except Exception as exc:
        bad_text = _unicode_error(exc)  # datasets wraps it in DatasetGenerationError
        if bad_text is not None:
            snippet = bad_text.object[max(0, bad_text.start - 20) : bad_text.end + 20]
            raise UserError(
                f"--data {data}: metadata is not valid UTF-8 ({bad_text.reason} in {snippet!r}); save it as UTF-8"
            ) from None
        raise UserError(f"--data {data}: cannot load ({type(exc).__name__}: {exc})") from None
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise UserError(f"--data {data}: no split {split!r} (available: {', '.join(loaded)})")
        return loaded[split]
    return loaded


def data_fingerprint(args: DataArguments) -> str:
    """A short hash of what `load_captioned_dataset(args)` would read, without reading the images.

    For a local folder: the bytes of its metadata files (`metadata.jsonl` / `.csv`, `dataset_info.json`,
    ...: captions live there) and the path, size and modification time of every other file; for a hub
    name, the name. Plus the flags that choose the examples. Editing a caption, adding, removing or
    replacing an image changes it; copying the folder with `cp -a` does not.
    """
    digest = hashlib.sha256()
    fields = ("data", "split", "image_column", "caption_column", "max_examples", "skip_bad_examples")
    digest.update(json.dumps({k: getattr(args, k) for k in fields if k != "data"}, sort_keys=True).encode())
    root = Path(args.data)
    if not root.is_dir():
        digest.update(args.data.encode())
        return digest.hexdigest()[:16]
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        relative = path.relative_to(root)
        if any(part.startswith(".") for part in relative.parts):  # our caches and markers, editor files
            continue
        stat = path.stat()
        digest.update(f"{relative.as_posix()}\0{stat.st_size}\0".encode())
        if path.suffix in (".jsonl", ".json", ".csv", ".txt", ".parquet", ".arrow"):
            digest.update(path.read_bytes())
        else:
            digest.update(str(stat.st_mtime_ns).encode())
    return digest.hexdigest()[:16]


def seeded_holdout(length: int, count: int, seed: int) -> list[int]:
    """`count` of `length` example indices drawn by a seeded shuffle, sorted: a validation hold-out spread over
    the data (the last N in file order would often be one category: the emoji export ends with signs)."""
    order = torch.randperm(length, generator=torch.Generator().manual_seed(seed))
    return sorted(order[:count].tolist())


def load_captioned_dataset(args: DataArguments, require_captions: bool = True):
    """Load `args.data`, check its columns and every example; returns a `datasets.Dataset`.

    The result has the image column (decoded lazily as PIL) and, with
    `require_captions`, the caption column.
    """
    import datasets

    if not args.data:
        raise UserError("--data is required (a folder of captioned images or a dataset name)")
    ds = _load_raw(args.data, args.split)
    columns = ds.column_names
    if args.image_column not in columns:
        raise UserError(
            f"--data {args.data}: no image column {args.image_column!r} (columns: {', '.join(columns)}); "
            "set --image_column"
        )
    if require_captions and args.caption_column not in columns:
        raise UserError(
            f"--data {args.data}: no caption column {args.caption_column!r} (columns: {', '.join(columns)}); "
            "set --caption_column, or add a 'text' field to metadata.jsonl"
        )
    if args.max_examples:
        ds = ds.select(range(min(args.max_examples, len(ds))))
    if len(ds) == 0:
        raise UserError(f"--data {args.data}: split {args.split!r} holds no examples")
    if isinstance(ds.features[args.image_column], datasets.Image):
        ds = validate(ds, args, require_captions)
    return ds


def _check_image(value) -> tuple[str | None, tuple[int, int] | None]:
    """(None, (width, height)) if `value` (a {path, bytes} dict) decodes to a whole image, else (the problem, None)."""
    path, data = value.get("path"), value.get("bytes")
    try:
        if data is None:
            if path is None:
                return "no image", None
            if os.path.getsize(path) == 0:
                return "zero-byte file", None
            with Image.open(path) as im:
                im.load()
                size = im.size
        else:
            if len(data) == 0:
                return "zero-byte file", None
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                size = im.size
    except Image.DecompressionBombError:
        return "image too large (decompression bomb refused)", None
    except (OSError, SyntaxError, ValueError) as exc:
        return f"unreadable image ({exc})", None
    return None, size


def _log_resizes(args: DataArguments, sizes: list[tuple[str, tuple[int, int]]], total: int) -> None:
    """One line saying how many images `ImageTransform` will resize and crop (the most cut one named)."""
    r = args.resolution
    resized = sum(min(size) != r for _, size in sizes)
    cropped = [(where, size) for where, size in sizes if size[0] != size[1]]
    if not resized and not cropped:
        return
    parts = [f"{resized} of {total} images are resized to {r} px on the short side"] if resized else []
    if cropped:
        where, (w, h) = max(cropped, key=lambda item: max(item[1]) / min(item[1]))
        kept = min(w, h) / max(w, h)
        how = "randomly" if args.random_crop else "centre-"
        parts.append(
            f"{len(cropped)} of {total} are not square and are {how}cropped to {r}x{r} (the most cut, {where} at "
            f"{w}x{h}, keeps {100 * kept:.0f}% of its {'width' if w > h else 'height'})"
        )
    logger.info("--data %s: %s", args.data, "; ".join(parts))


def validate(ds, args: DataArguments, require_captions: bool = True):
    """Check every caption and image once; raise one `UserError` listing the bad files, or skip them."""
    import datasets

    raw = ds.cast_column(args.image_column, datasets.Image(decode=False))
    images = raw[args.image_column]
    captions = raw[args.caption_column] if require_captions else [None] * len(raw)
    bad: list[tuple[int, str, str]] = []
    sizes: list[tuple[str, tuple[int, int]]] = []  # (where, (width, height)) of the good images
    for i, (value, caption) in enumerate(zip(images, captions)):
        where = (value or {}).get("path") or f"example {i}"
        if require_captions and (not isinstance(caption, str) or not caption.strip()):
            bad.append((i, where, f"missing or empty caption ({args.caption_column!r})"))
            continue
        problem, size = _check_image(value or {})
        if problem:
            bad.append((i, where, problem))
        else:
            sizes.append((where, size))
    if not bad or args.skip_bad_examples:
        _log_resizes(args, sizes, len(sizes))
    if not bad:
        return ds
    if not args.skip_bad_examples:
        listed = "\n".join(f"  {where}: {problem}" for _, where, problem in bad[:20])
        more = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
        raise UserError(
            f"--data {args.data}: {len(bad)} bad example(s) of {len(ds)}:\n{listed}{more}\n"
            "fix them, or pass --skip_bad_examples to leave them out"
        )
    logger.warning("skipping %d bad example(s) of %d in %s (--skip_bad_examples)", len(bad), len(ds), args.data)
    for _, where, problem in bad[:20]:
        logger.warning("  skipped %s: %s", where, problem)
    bad_rows = {i for i, _, _ in bad}
    kept = ds.select([i for i in range(len(ds)) if i not in bad_rows])
    if len(kept) == 0:
        raise UserError(f"--data {args.data}: every example was bad; nothing left to train on")
    return kept


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB; transparency (RGBA, LA, palette with alpha) composited on white."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        # I;16 is 16-bit by definition (a dark image is still dark); plain I may hold 8-bit values
        scale = 65535.0 if image.mode != "I" or array.max() > 255 else 255.0
        return Image.fromarray((array / scale * 255).round().clip(0, 255).astype(np.uint8)).convert("RGB")
    if image.mode == "F":
        # 32-bit float (a TIFF, say): values within [0, 1] are that scale, as float images usually are; any
        # larger value means 0-255 (PIL's own reading, which would turn a [0, 1] image black); NaN -> 0
        array = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        scale = 255.0 if array.max(initial=0.0) <= 1.0 else 1.0
        return Image.fromarray((array * scale).round().clip(0, 255).astype(np.uint8)).convert("RGB")
    if image.mode == "P" and "transparency" in image.info or image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


class ImageTransform:
    """PIL image -> float tensor (3, R, R) in [0, 1]: RGB, short side to R, crop."""

    def __init__(self, resolution: int, random_crop: bool = False, generator: torch.Generator | None = None) -> None:
        self.resolution = resolution
        self.random_crop = random_crop
        self.generator = generator  # where random crops are drawn from (None: torch's default generator)

    def __call__(self, image: Image.Image, generator: torch.Generator | None = None) -> torch.Tensor:
        """`generator`, when given, draws this image's crop (instead of the transform's own)."""
        generator = generator or self.generator
        r = self.resolution
        image = to_rgb(image)
        w, h = image.size
        if min(w, h) != r:
            scale = r / min(w, h)
            size = (max(r, round(w * scale)), max(r, round(h * scale)))
            image = image.resize(size, Image.BICUBIC if scale > 1 else Image.LANCZOS)
            w, h = image.size
        if self.random_crop:
            left = int(torch.randint(0, w - r + 1, (), generator=generator))
            top = int(torch.randint(0, h - r + 1, (), generator=generator))
        else:
            left, top = (w - r) // 2, (h - r) // 2
        if (w, h) != (r, r):
            image = image.crop((left, top, left + r, top + r))
        array = np.asarray(image, dtype=np.uint8)
        return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


class CaptionedImages(torch.utils.data.Dataset):
    """A map-style torch dataset over a validated `datasets.Dataset`: {"pixel_values", "caption", "index"}.

    A random crop is a pure function of (`seed`, the epoch set by `set_epoch`, the example's index): a resumed
    run crops exactly as an uninterrupted one (whatever the loader read ahead), every DataLoader worker crops
    its own examples differently, and each epoch sees new crops."""

    def __init__(
        self, ds, args: DataArguments, with_captions: bool = True, random_crop: bool | None = None, seed: int = 0
    ) -> None:
        self.ds = ds
        self.image_column = args.image_column
        self.caption_column = args.caption_column if with_captions else None
        self.transform = ImageTransform(args.resolution, args.random_crop if random_crop is None else random_crop)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, index: int) -> dict:
        row = self.ds[int(index)]
        crop = None
        if self.transform.random_crop:
            key = hashlib.sha256(f"{self.seed}/{self.epoch}/{int(index)}".encode()).digest()
            crop = torch.Generator().manual_seed(int.from_bytes(key[:8], "big") >> 1)
        item = {"pixel_values": self.transform(row[self.image_column], crop), "index": int(index)}
        if self.caption_column:
            item["caption"] = row[self.caption_column]
        return item


def load_image_tensor(ds, args: DataArguments, progress: bool = True) -> torch.Tensor:
    """Decode and transform every image once into one uint8 tensor (N, 3, R, R).

    Used by the image-tokenizer trainer for sets that fit in memory: a step
    then costs an index, not a PNG decode.
    """
    from tqdm.auto import tqdm

    transform = ImageTransform(args.resolution, random_crop=False)
    out = torch.empty(len(ds), 3, args.resolution, args.resolution, dtype=torch.uint8)
    column = ds[args.image_column] if len(ds) <= 50_000 else None
    for i in tqdm(range(len(ds)), desc="decoding images", disable=not progress, leave=False):
        image = column[i] if column is not None else ds[i][args.image_column]
        out[i] = transform(image).mul_(255).round_().to(torch.uint8)
    return out
