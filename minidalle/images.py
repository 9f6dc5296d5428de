"""Pictures in and out: tensors <-> PIL images, PNG files and grids (no model, no training code)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in [0, 1] -> B RGB PIL images (rounded to uint8)."""
    array = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(np.ascontiguousarray(a)) for a in array]


def save_png(path: str | Path, image: np.ndarray | Image.Image) -> None:
    """Save an (H, W, 3) uint8 array or a PIL image as PNG (fast compression)."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    image.save(path, format="PNG", compress_level=1)


def save_image_grid(rows: list[torch.Tensor], path: str | Path) -> Path:
    """Save rows of images (each (N, 3, H, W) in [0, 1]) as one PNG grid, rows stacked vertically.

    Written to a temporary name and renamed, so a reader never sees half a PNG.
    """
    grid = torch.cat([torch.cat(list(row.float().clamp(0, 1)), dim=2) for row in rows], dim=1)  # (3, R*H, N*W)
    array = (grid.permute(1, 2, 0) * 255).round().to(torch.uint8).cpu().numpy()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    Image.fromarray(array).save(tmp, format="PNG")
    os.replace(tmp, path)
    return path
