"""Writing the Hugging Face `imagefolder` layout: `images/NNNNNN.png` + `metadata.jsonl`.

`datasets.load_dataset("imagefolder", data_dir=DIR)` reads what these write
unchanged. The metadata file is written to a temporary name and renamed, so a
killed export never leaves a half-written index behind.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image

IMAGES_DIR = "images"
METADATA_FILE = "metadata.jsonl"


def image_file_name(index: int) -> str:
    """The relative path of image `index` inside an imagefolder."""
    return f"{IMAGES_DIR}/{index:06d}.png"


def save_png(path: str | Path, image: np.ndarray | Image.Image) -> None:
    """Save an (H, W, 3) uint8 array or a PIL image as PNG (no compression tuning)."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    image.save(path, format="PNG", compress_level=1)


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


def prepare_out_dir(out_dir: str | Path) -> Path:
    """Create `out_dir/images`, failing clearly if the folder cannot be written."""
    from .args import UserError

    out_dir = Path(out_dir)
    try:
        (out_dir / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"cannot write to output folder {out_dir}: {exc.strerror or exc}") from None
    return out_dir
