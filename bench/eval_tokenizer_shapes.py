#!/usr/bin/env python
"""Does the image tokenizer keep every attribute of held-out shapes images?

    python bench/eval_tokenizer_shapes.py --image_tokenizer runs/shapes/tokenizer/image_tokenizer \
        [--heldout data/shapes-heldout] [--train data/shapes-train] [--out runs/eval-tokenizer]

Reconstructs the held-out images through the codes (`minidalle reconstruct`),
drops any held-out image identical to a training image, judges each
reconstruction against a caption stating every attribute, and prints one JSON
object: PSNR, codebook use, one-object and overall all-correct rates.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from minidalle.cli.codes import reconstruct_main
from minidalle.data.shapes import evaluate_manifest


def pixel_hashes(folder: Path) -> dict[str, str]:
    from PIL import Image

    out = {}
    for line in (folder / "metadata.jsonl").read_text().splitlines():
        name = json.loads(line)["file_name"]
        with Image.open(folder / name) as im:
            out[name] = hashlib.sha1(im.convert("RGB").tobytes()).hexdigest()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image_tokenizer", "--tokenizer", required=True)
    parser.add_argument("--heldout", default="data/shapes-heldout")
    parser.add_argument("--train", default="data/shapes-train")
    parser.add_argument("--out", default="runs/eval-tokenizer")
    parser.add_argument(
        "--num", type=int, default=500, help="judge the first N held-out images unlike every training image"
    )
    args = parser.parse_args()
    out = Path(args.out)
    reconstruct_main(["--image_tokenizer", args.image_tokenizer, "--data", args.heldout, "--out", str(out)])
    train_hashes = set(pixel_hashes(Path(args.train)).values())
    heldout = pixel_hashes(Path(args.heldout))
    duplicates = {name for name, h in heldout.items() if h in train_hashes}
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    kept = [r for r in rows if r["file"] not in duplicates][: args.num]
    if len(kept) < args.num:
        sys.exit(f"only {len(kept)} held-out images differ from every training image; make more with make-shapes")
    (out / "manifest-unique.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    report = evaluate_manifest(out / "manifest-unique.jsonl")
    import numpy as np
    from PIL import Image

    errors = []
    for r in kept:
        a = np.asarray(Image.open(Path(args.heldout) / r["file"]).convert("RGB"), dtype=np.float64) / 255
        b = np.asarray(Image.open(out / r["file"]).convert("RGB"), dtype=np.float64) / 255
        errors.append(((a - b) ** 2).mean())
    psnr = float(-10 * np.log10(np.mean(errors)))
    recon = json.loads((out / "reconstruct.json").read_text())
    print(
        json.dumps(
            {
                "images": report["images"],
                "duplicates_of_training_images_dropped": len(duplicates),
                "psnr": round(psnr, 2),
                "codebook_usage": recon["codebook_usage"],
                "one_object_all_correct": report["all_correct_one"],
                "two_object_all_correct": report["all_correct_two"],
                "all_correct": report["all_correct"],
                "accuracy": report["accuracy"],
            }
        )
    )


if __name__ == "__main__":
    main()
