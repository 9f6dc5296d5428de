"""Writing the Hugging Face `imagefolder` layout: `images/NNNNNN.png` + `metadata.jsonl`.

`datasets.load_dataset("imagefolder", data_dir=DIR)` reads what these write
unchanged. The metadata file is written to a temporary name and renamed, so a
killed export never leaves a half-written index behind.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from ..folders import claim_output_folder, writable_folder
from ..images import save_png

__all__ = [
    "IMAGES_DIR",
    "METADATA_FILE",
    "claim_export_folder",
    "image_file_name",
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


def prepare_out_dir(out_dir: str | Path, what: str = "output folder") -> Path:
    """Create `out_dir/images`, failing clearly (naming `what`, e.g. `--out`) if it cannot be written."""
    out_dir = writable_folder(out_dir, what)
    (out_dir / IMAGES_DIR).mkdir(exist_ok=True)
    return out_dir


def claim_export_folder(out_dir: str | Path, kind: str) -> Path:
    """`claim_output_folder` for an imagefolder export of `kind`: an earlier export of the same kind loses its
    numbered images and metadata (so no stale image outlives a smaller re-export); any other content stops it."""
    return claim_output_folder(out_dir, kind, IMAGEFOLDER_FILES)
