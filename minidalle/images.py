"""Pictures in and out: tensors <-> PIL images, PNG files and grids (no model, no training code)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in [0, 1] -> B RGB PIL images (rounded to uint8)."""
    array = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(np.ascontiguousarray(a)) for a in array]


def save_png(path: str | Path, image: np.ndarray | Image.Image) -> None:
    """Save an (H, W, 3) uint8 array or a PIL image as PNG (fast compression)."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    image.save(path, format="PNG", compress_level=1)


def save_image_grid(rows: list[torch.Tensor], path: str | Path, labels: list[str] | None = None) -> Path:
    """Save rows of images (each (N, 3, H, W) in [0, 1]) as one PNG grid, rows stacked vertically.

    With `labels` (one per row), each row's name is written in a white margin on its left. Written to a
    temporary name and renamed, so a reader never sees half a PNG.
    """
    if labels is not None and len(labels) != len(rows):
        raise ValueError(f"save_image_grid: {len(labels)} labels for {len(rows)} rows")
    grid = torch.cat([torch.cat(list(row.float().clamp(0, 1)), dim=2) for row in rows], dim=1)  # (3, R*H, N*W)
    image = Image.fromarray((grid.permute(1, 2, 0) * 255).round().to(torch.uint8).cpu().numpy())
    if labels:
        image = _with_row_labels(image, labels, row_height=rows[0].shape[-2])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    image.save(tmp, format="PNG")
    os.replace(tmp, path)
    return path


def _with_row_labels(image: Image.Image, labels: list[str], row_height: int) -> Image.Image:
    font = ImageFont.load_default(size=max(10, row_height // 5))
    margin = 8 + max(int(font.getlength(label)) for label in labels)
    out = Image.new("RGB", (image.width + margin, image.height), "white")
    out.paste(image, (margin, 0))
    draw = ImageDraw.Draw(out)
    for i, label in enumerate(labels):
        draw.text((4, i * row_height + row_height // 2), label, fill="black", font=font, anchor="lm")
    return out
