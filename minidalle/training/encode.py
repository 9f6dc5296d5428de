"""Encode once: every image of a dataset -> its image-tokenizer codes, saved with its caption.

    minidalle encode --image_tokenizer runs/tok/image_tokenizer --data data/shapes-train --out data/shapes-codes

The result is a 🤗 `datasets` dataset on disk (columns `codes`: h*w ints,
`caption`: str) plus `codes_info.json` naming the image tokenizer's content
hash, K and grid. Stage 2 trains from it and refuses codes made by another
tokenizer, so the encoder never runs inside a training step.

Also here: `codebook_sheet`, every code decoded on its own (`minidalle codebook`).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..data import CaptionedImages, DataArguments, load_captioned_dataset
from ..data.loading import data_fingerprint
from ..errors import UserError
from ..folders import atomic_folder, check_replaceable
from ..image_tokenizers import ImageTokenizer, load_image_tokenizer

INFO_NAME = "codes_info.json"


@torch.no_grad()
def encode_dataset(
    tokenizer: ImageTokenizer,
    ds,
    data_args: DataArguments,
    batch_size: int = 256,
    progress: bool = True,
    with_captions: bool = True,
) -> torch.Tensor:
    """Codes (N, h*w) int16/int32 of every image of a validated `datasets.Dataset`, in order."""
    device = next(tokenizer.parameters()).device
    images = CaptionedImages(ds, data_args, with_captions=with_captions, random_crop=False)  # codes of the whole view
    # its own generator: whether the codes were cached must not change the global RNG (and so a model's init)
    loader = torch.utils.data.DataLoader(images, batch_size=batch_size, shuffle=False, generator=torch.Generator())
    dtype = torch.int16 if tokenizer.num_codes <= 2**15 else torch.int32
    out = []
    for batch in tqdm(loader, desc="encoding", disable=not progress, leave=False):
        out.append(tokenizer.get_codebook_indices(batch["pixel_values"].to(device)).to(dtype).cpu())
    return torch.cat(out)


def save_codes(out_dir: str | Path, codes: torch.Tensor, captions: list[str], info: dict) -> Path:
    """Write codes + captions as a `datasets` dataset with `codes_info.json`, atomically (`atomic_folder`)."""
    import datasets

    ds = datasets.Dataset.from_dict(
        {"codes": codes.numpy(), "caption": captions},
        features=datasets.Features(
            {
                "codes": datasets.Sequence(datasets.Value(str(codes.dtype).replace("torch.", ""))),
                "caption": datasets.Value("string"),
            }
        ),
    )
    with atomic_folder(out_dir, is_codes_folder, "an encoded dataset") as tmp:
        ds.save_to_disk(str(tmp))
        (tmp / INFO_NAME).write_text(json.dumps({**info, "num_examples": len(captions)}, indent=2) + "\n")
    return Path(out_dir)


def is_codes_folder(folder: Path) -> bool:
    """Whether `folder` holds an encoded dataset minidalle wrote (its codes_info.json)."""
    return (Path(folder) / INFO_NAME).is_file()


def load_codes(codes_dir: str | Path, expected_hash: str | None = None):
    """Load an encoded dataset; with `expected_hash`, refuse codes from another image tokenizer."""
    import datasets

    codes_dir = Path(codes_dir)
    info_path = codes_dir / INFO_NAME
    if not info_path.is_file():
        raise UserError(f"{codes_dir}: not an encoded dataset (no {INFO_NAME}); make one with `minidalle encode`")
    info = json.loads(info_path.read_text())
    if expected_hash and info.get("tokenizer_hash") != expected_hash:
        raise UserError(
            f"{codes_dir}: codes were made by image tokenizer {info.get('tokenizer_hash')}, "
            f"not by the one given ({expected_hash}); re-run `minidalle encode`"
        )
    return datasets.load_from_disk(str(codes_dir)).with_format("torch"), info


def encode_to_disk(
    tokenizer: ImageTokenizer | str | Path,
    data_args: DataArguments,
    out_dir: str | Path,
    batch_size: int = 256,
    progress: bool = True,
    ds=None,
) -> Path:
    """Encode `data_args.data` with `tokenizer` (a model or its folder) and save codes + captions to `out_dir`;
    `ds`: the dataset, already loaded and validated by `load_captioned_dataset` (with captions)."""
    check_replaceable(out_dir, is_codes_folder, "an encoded dataset")  # before any work
    if not isinstance(tokenizer, ImageTokenizer):
        tokenizer = load_image_tokenizer(tokenizer)
    if data_args.resolution != tokenizer.config.image_size:
        data_args = DataArguments(**{**asdict(data_args), "resolution": tokenizer.config.image_size})
    if ds is None:
        ds = load_captioned_dataset(data_args, require_captions=True)
    codes = encode_dataset(tokenizer, ds, data_args, batch_size, progress)
    info = {
        "data_fingerprint": data_fingerprint(data_args),
        "tokenizer_hash": tokenizer.codes_hash(),
        "num_codes": tokenizer.num_codes,
        "grid_size": tokenizer.grid_size,
        "data": data_args.data,
        "split": data_args.split,
    }
    return save_codes(out_dir, codes, list(ds[data_args.caption_column]), info)


@torch.no_grad()
def codebook_sheet(tokenizer: ImageTokenizer, order: list[int] | None = None) -> list[torch.Tensor]:
    """Rows of tiles: code k decoded from a grid filled with k, in `order` (default 0..K-1)."""
    k, g = tokenizer.num_codes, tokenizer.grid_size
    order = list(range(k)) if order is None else order
    tiles = torch.cat(
        [tokenizer.decode(torch.tensor(chunk).view(-1, 1, 1).expand(-1, g, g)) for chunk in _chunks(order, 256)]
    )
    cols = math.ceil(math.sqrt(k))
    pad = cols * math.ceil(k / cols) - k
    tiles = torch.cat([tiles, torch.zeros(pad, *tiles.shape[1:])]) if pad else tiles
    return list(tiles.split(cols))


def _chunks(items: list[int], size: int):
    for i in range(0, len(items), size):
        yield items[i : i + size]
