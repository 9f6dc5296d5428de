"""Writing the Hugging Face `imagefolder` layout: `images/NNNNNN.png` + `metadata.jsonl`; reading manifests.

`datasets.load_dataset("imagefolder", data_dir=DIR)` reads what these write
unchanged. The metadata file is written to a temporary name and renamed, so a
killed export never leaves a half-written index behind.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from PIL import Image

from ..errors import UserError
from ..folders import claim_output_folder, writable_folder
from ..images import save_png

__all__ = [
    "IMAGES_DIR",
    "METADATA_FILE",
    "claim_export_folder",
    "image_file_name",
    "manifest_entries",
    "open_manifest_image",
    "prepare_out_dir",
    "save_png",
    "write_metadata",
]

IMAGES_DIR = "images"
METADATA_FILE = "metadata.jsonl"


def image_file_name(index: int) -> str:
    """The relative path of image `index` inside an imagefolder."""
    return f"{IMAGES_DIR}/{index:06d}.png"


def write_metadata(out_dir: str | Path, rows: Iterable[dict]) -> int:
    """Write `metadata.jsonl` atomically; each row needs `file_name` and `text`. Returns the count."""
    out_dir = Path(out_dir)
    tmp = out_dir / (METADATA_FILE + ".tmp")
    count = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    os.replace(tmp, out_dir / METADATA_FILE)
    return count


# the files an imagefolder export writes, as a pattern for `claim_output_folder` (one level of splits or none)
IMAGEFOLDER_FILES = r"([^/]+/)?(images/\d{6}\.png|metadata\.jsonl(\.tmp)?)"


def manifest_entries(path: str | Path, parse: Callable[[str], Any]) -> Iterator[tuple[str, Any, Path]]:
    """The lines `{"prompt": ..., "file": ...}` of a manifest (sample.py's): (where, parse(prompt), image path),
    files relative to the manifest's folder. Bad JSON, missing fields or a prompt `parse` refuses (ValueError)
    are a `UserError` naming the line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no such manifest: {path}")
    with open(path, encoding="utf-8") as lines:
        for line_no, line in enumerate(lines, 1):
            if not line.strip():
                continue
            where = f"{path} line {line_no}"
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{where}: invalid JSON ({exc.msg})") from None
            if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) for k in ("prompt", "file")):
                raise UserError(f"{where}: expected an object with string fields 'prompt' and 'file'")
            try:
                parsed = parse(entry["prompt"])
            except ValueError as exc:
                raise UserError(f"{where}: {exc}") from None
            yield where, parsed, path.parent / entry["file"]


def open_manifest_image(image_path: Path, where: str) -> Image.Image:
    """The image a manifest line names, loaded; an unreadable one is a `UserError` naming the line."""
    try:
        with Image.open(image_path) as image:
            image.load()
            return image.copy()
    except (OSError, ValueError) as exc:
        raise UserError(f"{where}: cannot read image {image_path}: {exc}") from None


def prepare_out_dir(out_dir: str | Path, what: str = "output folder") -> Path:
    """Create `out_dir/images`, failing clearly (naming `what`, e.g. `--out`) if it cannot be written."""
    out_dir = writable_folder(out_dir, what)
    (out_dir / IMAGES_DIR).mkdir(exist_ok=True)
    return out_dir


def claim_export_folder(out_dir: str | Path, kind: str) -> Path:
    """`claim_output_folder` for an imagefolder export of `kind`: an earlier export of the same kind loses its
    numbered images and metadata (so no stale image outlives a smaller re-export); any other content stops it."""
    return claim_output_folder(out_dir, kind, IMAGEFOLDER_FILES)
