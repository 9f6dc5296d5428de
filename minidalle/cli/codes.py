"""Image-tokenizer commands: `encode` (a dataset -> its codes, once, for stage 2), `codebook` (every code
as a picture) and `reconstruct` (images through the round trip, with PSNR and a manifest)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..data import CaptionedImages, DataArguments, load_captioned_dataset
from ..data.imagefolder import image_file_name, prepare_out_dir
from ..data.shapes import ShapeObject, full_caption
from ..folders import check_apart, claim_output_folder
from ..image_tokenizers import load_image_tokenizer
from ..images import save_image_grid, save_png
from ..metrics import codebook_stats, psnr
from ..training.encode import INFO_NAME, codebook_sheet, encode_dataset, encode_to_disk
from .args import arg, command


@dataclass
class EncodeArguments:
    image_tokenizer: str = arg(
        "",
        help="The image tokenizer folder (OUTPUT_DIR/image_tokenizer of train_tokenizer.py).",
        aliases=["--tokenizer"],
    )
    out: str = arg("", help="Where to write the encoded dataset.")
    batch_size: int = arg(256, help="Images per encoder batch.", minimum=1)


@command(
    EncodeArguments,
    DataArguments,
    prog="minidalle encode",
    description="Encode every image of a captioned dataset into image-tokenizer codes, once, for stage 2.",
    required=("image_tokenizer", "out"),
    output="out",
)
def encode_main(enc: EncodeArguments, data_args: DataArguments, _) -> None:
    if data_args.data and Path(data_args.data).exists():
        check_apart(enc.out, data_args.data)  # never codes written over (or into) the images
    out = encode_to_disk(enc.image_tokenizer, data_args, enc.out, enc.batch_size)
    info = json.loads((out / INFO_NAME).read_text())
    print(
        f"wrote codes of {info['num_examples']} images ({info['grid_size']}x{info['grid_size']} codes "
        f"of {info['num_codes']}) to {out}"
    )


@dataclass
class CodebookArguments:
    image_tokenizer: str = arg("", help="The image tokenizer folder.", aliases=["--tokenizer"])
    out: str = arg("codebook.png", help="The PNG sheet to write.")
    data: str = arg("", help="Optional dataset: order the codes by how often its images use them (most used first).")
    split: str = arg("train", help="With --data: which split of it to count on.")
    image_column: str = arg("image", help="With --data: the column holding the images.")
    max_examples: int = arg(2000, help="With --data: encode at most this many images to count usage.", minimum=1)


@command(
    CodebookArguments,
    prog="minidalle codebook",
    description="Draw every code of an image tokenizer (a grid filled with code k) as one sheet.",
    required=("image_tokenizer",),
)
def codebook_main(args: CodebookArguments, _) -> None:
    tokenizer = load_image_tokenizer(args.image_tokenizer)
    order = None
    if args.data:
        data_args = DataArguments(
            data=args.data,
            split=args.split,
            image_column=args.image_column,
            resolution=tokenizer.image_size,
            max_examples=args.max_examples,
        )
        ds = load_captioned_dataset(data_args, require_captions=False)
        codes = encode_dataset(tokenizer, ds, data_args, with_captions=False)
        counts = torch.bincount(codes.long().flatten(), minlength=tokenizer.num_codes)
        order = counts.argsort(descending=True).tolist()
        print(f"{int((counts > 0).sum())} of {tokenizer.num_codes} codes used by {len(ds)} images")
    path = save_image_grid(codebook_sheet(tokenizer, order), args.out)
    print(f"wrote {path}")


# what reconstruct writes into --out (a re-run into the same folder removes these and nothing else)
RECONSTRUCT_FILES = r"images/\d{6}\.png|manifest\.jsonl|reconstruct\.json|grid\.png"


@dataclass
class ReconstructArguments:
    image_tokenizer: str = arg("", help="The image tokenizer folder.", aliases=["--tokenizer"])
    out: str = arg(
        "", help="Folder for the reconstructions and manifest.jsonl (the format `minidalle eval-shapes` reads)."
    )
    batch_size: int = arg(128, help="Images per batch.", minimum=1)
    grid_images: int = arg(
        32, help="Images in grid.png: rows of 8 originals, each above its reconstructions (0: no grid).", minimum=0
    )


GRID_COLUMNS = 8


@command(
    ReconstructArguments,
    DataArguments,
    prog="minidalle reconstruct",
    description="Reconstruct images through the image tokenizer (encode -> decode) and report PSNR.",
    required=("image_tokenizer", "out"),
    output="out",
)
def reconstruct_main(args: ReconstructArguments, data_args: DataArguments, _) -> None:
    """Round-trip a dataset through the image tokenizer; write PNGs, a manifest with each image's PSNR, a grid
    of originals above reconstructions and the PSNR / codebook figures."""
    tokenizer = load_image_tokenizer(args.image_tokenizer)
    data_args = DataArguments(**{**asdict(data_args), "resolution": tokenizer.image_size})
    ds = load_captioned_dataset(data_args, require_captions=True)
    if data_args.data and Path(data_args.data).exists():
        check_apart(args.out, data_args.data)
    out = prepare_out_dir(claim_output_folder(args.out, "reconstructions", RECONSTRUCT_FILES))
    has_objects = "objects" in ds.column_names
    loader = torch.utils.data.DataLoader(CaptionedImages(ds, data_args, random_crop=False), batch_size=args.batch_size)
    rows, errors, histogram = [], [], torch.zeros(tokenizer.num_codes, dtype=torch.long)
    shown: list[tuple[torch.Tensor, torch.Tensor]] = []  # (original, reconstruction) for grid.png
    for batch in tqdm(loader, desc="reconstructing", leave=False):
        images = batch["pixel_values"]
        codes = tokenizer.encode(images)
        recon = tokenizer.decode(codes)
        histogram += torch.bincount(codes.flatten(), minlength=tokenizer.num_codes)
        quantized = (recon * 255).round() / 255  # what the PNG holds
        errors.append((quantized - images).pow(2).flatten(1).mean(1))
        per_image = psnr(errors[-1]).tolist()
        shown += list(zip(images, quantized))[: max(args.grid_images - len(shown), 0)]
        for i, index in enumerate(batch["index"].tolist()):
            name = image_file_name(index)
            save_png(out / name, (recon[i].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy())
            caption = batch["caption"][i]
            if has_objects:
                caption = full_caption([ShapeObject(**{**o, "bbox": tuple(o["bbox"])}) for o in ds[index]["objects"]])
            rows.append(
                {
                    "prompt": caption,
                    "file": name,
                    "original_caption": batch["caption"][i],
                    "psnr": round(per_image[i], 3),
                }
            )
    with open(out / "manifest.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    mse = torch.cat(errors)
    if shown:
        _save_grid(shown, out / "grid.png")
    result = {
        "images": len(rows),
        "psnr": psnr(mse.mean()),
        "psnr_per_image_mean": psnr(mse).mean().item(),
        "psnr_per_image_min": psnr(mse).min().item(),
        **codebook_stats(histogram),
        "tokenizer_hash": tokenizer.codes_hash(),
    }
    (out / "reconstruct.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    grid = f", {out / 'grid.png'} (originals above reconstructions)" if shown else ""
    print(f"wrote {len(rows)} reconstructions, {out / 'manifest.jsonl'} (each image's PSNR){grid}")


def _save_grid(pairs: list[tuple[torch.Tensor, torch.Tensor]], path: Path) -> None:
    """Rows of `GRID_COLUMNS` originals, each above its reconstructions (a short last row padded with black)."""
    columns = min(GRID_COLUMNS, len(pairs))
    blank = torch.zeros_like(pairs[0][0])
    rows = []
    for start in range(0, len(pairs), columns):
        chunk = pairs[start : start + columns]
        chunk += [(blank, blank)] * (columns - len(chunk))
        rows += [torch.stack([o for o, _ in chunk]), torch.stack([r for _, r in chunk])]
    save_image_grid(rows, path)
