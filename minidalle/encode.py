"""Encode once: every image of a dataset -> its image-tokenizer codes, saved with its caption.

    minidalle encode --tokenizer runs/tok/image_tokenizer --data data/shapes-train --out data/shapes-codes

The result is a 🤗 `datasets` dataset on disk (columns `codes`: h*w ints,
`caption`: str) plus `codes_info.json` naming the image tokenizer's content
hash, K and grid. Stage 2 trains from it and refuses codes made by another
tokenizer, so the encoder never runs inside a training step.

Also here: `minidalle codebook`, a sheet with every code decoded on its own.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .args import UserError, arg, parse_args
from .data import CaptionedImages, DataArguments, load_captioned_dataset
from .dvae import DiscreteVAE
from .training import save_image_grid

INFO_NAME = "codes_info.json"


@torch.no_grad()
def encode_dataset(
    tokenizer: DiscreteVAE, ds, data_args: DataArguments, batch_size: int = 256, progress: bool = True,
    with_captions: bool = True,
) -> torch.Tensor:
    """Codes (N, h*w) int16/int32 of every image of a validated `datasets.Dataset`, in order."""
    device = next(tokenizer.parameters()).device
    images = CaptionedImages(ds, data_args, with_captions=with_captions)
    # its own generator: whether the codes were cached must not change the global RNG (and so a model's init)
    loader = torch.utils.data.DataLoader(images, batch_size=batch_size, shuffle=False, generator=torch.Generator())
    dtype = torch.int16 if tokenizer.num_codes <= 2**15 else torch.int32
    out = []
    for batch in tqdm(loader, desc="encoding", disable=not progress, leave=False):
        out.append(tokenizer.get_codebook_indices(batch["pixel_values"].to(device)).to(dtype).cpu())
    return torch.cat(out)


def save_codes(out_dir: str | Path, codes: torch.Tensor, captions: list[str], info: dict) -> Path:
    """Write codes + captions as a `datasets` dataset with `codes_info.json`, atomically."""
    import datasets

    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    ds = datasets.Dataset.from_dict(
        {"codes": codes.numpy(), "caption": captions},
        features=datasets.Features(
            {"codes": datasets.Sequence(datasets.Value(str(codes.dtype).replace("torch.", ""))), "caption": datasets.Value("string")}
        ),
    )
    ds.save_to_disk(str(tmp))
    (tmp / INFO_NAME).write_text(json.dumps({**info, "num_examples": len(captions)}, indent=2) + "\n")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return out_dir


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
    tokenizer: DiscreteVAE | str | Path, data_args: DataArguments, out_dir: str | Path, batch_size: int = 256, progress: bool = True
) -> Path:
    """Encode `data_args.data` with `tokenizer` (a model or its folder) and save codes + captions to `out_dir`."""
    if not isinstance(tokenizer, DiscreteVAE):
        tokenizer = DiscreteVAE.from_pretrained(tokenizer)
    if data_args.resolution != tokenizer.config.image_size:
        data_args = DataArguments(**{**asdict(data_args), "resolution": tokenizer.config.image_size})
    ds = load_captioned_dataset(data_args, require_captions=True)
    codes = encode_dataset(tokenizer, ds, data_args, batch_size, progress)
    info = {
        "tokenizer_hash": tokenizer.codes_hash(),
        "num_codes": tokenizer.num_codes,
        "grid_size": tokenizer.grid_size,
        "data": data_args.data,
        "split": data_args.split,
    }
    return save_codes(out_dir, codes, list(ds[data_args.caption_column]), info)


@dataclass
class EncodeArguments:
    tokenizer: str = arg("", help="The image tokenizer folder (OUTPUT_DIR/image_tokenizer of train_tokenizer.py).")
    out: str = arg("", help="Where to write the encoded dataset.")
    batch_size: int = arg(256, help="Images per encoder batch.")


def encode_main(argv: list[str] | None = None) -> None:
    enc, data_args, _ = parse_args(
        [EncodeArguments, DataArguments], argv, prog="minidalle encode",
        description="Encode every image of a captioned dataset into image-tokenizer codes, once, for stage 2.",
    )
    if not enc.tokenizer or not enc.out:
        raise UserError("--tokenizer and --out are required")
    out = encode_to_disk(enc.tokenizer, data_args, enc.out, enc.batch_size)
    info = json.loads((out / INFO_NAME).read_text())
    print(f"wrote codes of {info['num_examples']} images ({info['grid_size']}x{info['grid_size']} codes of {info['num_codes']}) to {out}")


@dataclass
class CodebookArguments:
    tokenizer: str = arg("", help="The image tokenizer folder.")
    out: str = arg("codebook.png", help="The PNG sheet to write.")
    data: str = arg("", help="Optional dataset: order the codes by how often its images use them (most used first).")
    max_examples: int = arg(2000, help="With --data: encode at most this many images to count usage.")


@torch.no_grad()
def codebook_sheet(tokenizer: DiscreteVAE, order: list[int] | None = None) -> list[torch.Tensor]:
    """Rows of tiles: code k decoded from a grid filled with k, in `order` (default 0..K-1)."""
    k, g = tokenizer.num_codes, tokenizer.grid_size
    order = list(range(k)) if order is None else order
    tiles = torch.cat([tokenizer.decode(torch.tensor(chunk).view(-1, 1, 1).expand(-1, g, g)) for chunk in _chunks(order, 256)])
    cols = math.ceil(math.sqrt(k))
    pad = cols * math.ceil(k / cols) - k
    tiles = torch.cat([tiles, torch.zeros(pad, *tiles.shape[1:])]) if pad else tiles
    return list(tiles.split(cols))


def _chunks(items: list[int], size: int):
    for i in range(0, len(items), size):
        yield items[i : i + size]


def codebook_main(argv: list[str] | None = None) -> None:
    (args, _) = parse_args([CodebookArguments], argv, prog="minidalle codebook",
                           description="Draw every code of an image tokenizer (a grid filled with code k) as one sheet.")
    if not args.tokenizer:
        raise UserError("--tokenizer is required")
    tokenizer = DiscreteVAE.from_pretrained(args.tokenizer)
    order = None
    if args.data:
        data_args = DataArguments(data=args.data, resolution=tokenizer.config.image_size, max_examples=args.max_examples)
        ds = load_captioned_dataset(data_args, require_captions=False)
        codes = encode_dataset(tokenizer, ds, data_args, with_captions=False)
        counts = torch.bincount(codes.long().flatten(), minlength=tokenizer.num_codes)
        order = counts.argsort(descending=True).tolist()
        print(f"{int((counts > 0).sum())} of {tokenizer.num_codes} codes used by {len(ds)} images")
    path = save_image_grid(codebook_sheet(tokenizer, order), args.out)
    print(f"wrote {path}")


@dataclass
class ReconstructArguments:
    tokenizer: str = arg("", help="The image tokenizer folder.")
    out: str = arg("", help="Folder for the reconstructions and manifest.jsonl (the format `minidalle eval-shapes` reads).")
    batch_size: int = arg(128, help="Images per batch.")


def reconstruct_main(argv: list[str] | None = None) -> None:
    """Round-trip a dataset through the image tokenizer; write PNGs, a manifest and PSNR / codebook figures."""
    from .imagefolder import image_file_name, prepare_out_dir, save_png
    from .metrics import codebook_stats, psnr

    args, data_args, _ = parse_args(
        [ReconstructArguments, DataArguments], argv, prog="minidalle reconstruct",
        description="Reconstruct images through the image tokenizer (encode -> decode) and report PSNR.",
    )
    if not args.tokenizer or not args.out:
        raise UserError("--tokenizer and --out are required")
    tokenizer = DiscreteVAE.from_pretrained(args.tokenizer)
    data_args = DataArguments(**{**asdict(data_args), "resolution": tokenizer.config.image_size})
    ds = load_captioned_dataset(data_args, require_captions=True)
    out = prepare_out_dir(args.out)
    has_objects = "objects" in ds.column_names
    if has_objects:
        from .shapes import ShapeObject, full_caption
    loader = torch.utils.data.DataLoader(CaptionedImages(ds, data_args), batch_size=args.batch_size)
    rows, errors, histogram = [], [], torch.zeros(tokenizer.num_codes, dtype=torch.long)
    for batch in tqdm(loader, desc="reconstructing", leave=False):
        images = batch["pixel_values"]
        codes = tokenizer.encode(images)
        recon = tokenizer.decode(codes)
        histogram += torch.bincount(codes.flatten(), minlength=tokenizer.num_codes)
        quantized = (recon * 255).round() / 255  # what the PNG holds
        errors.append((quantized - images).pow(2).flatten(1).mean(1))
        for i, index in enumerate(batch["index"].tolist()):
            name = image_file_name(index)
            save_png(out / name, (recon[i].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy())
            caption = batch["caption"][i]
            if has_objects:
                caption = full_caption([ShapeObject(**{**o, "bbox": tuple(o["bbox"])}) for o in ds[index]["objects"]])
            rows.append({"prompt": caption, "file": name, "original_caption": batch["caption"][i]})
    with open(out / "manifest.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    mse = torch.cat(errors)
    result = {"images": len(rows), "psnr": psnr(mse.mean()), **codebook_stats(histogram), "tokenizer_hash": tokenizer.codes_hash()}
    (out / "reconstruct.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    print(f"wrote {len(rows)} reconstructions and {out / 'manifest.jsonl'}")
