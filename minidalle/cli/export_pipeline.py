"""`minidalle export-pipeline`: copy a pipeline folder with its weights in a smaller dtype."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..pipeline.io import check_weight_dtype, export_pipeline
from .args import UserError, arg, command


@dataclass
class ExportArguments:
    source: str = arg("", help="The pipeline folder to export (train_prior.py's OUTPUT_DIR/pipeline).")
    out: str = arg("", help="Where to write the exported pipeline.")
    dtype: str = arg("float16", help="float16, bfloat16 or float32.")
    image_tokenizer: str = arg(
        "", help="Swap in this image tokenizer (it must produce the same codes, e.g. a decoder fine-tune)."
    )
    sampling_defaults: str = arg(
        "",
        help="A JSON file of the model's sampling settings (guidance_scale, temperature, top_k, top_p, "
        "num_candidates), stored in the export's model_index.json: what sample.py uses for the flags not given "
        "(default: the source's own, if any).",
    )


@command(
    ExportArguments,
    prog="minidalle export-pipeline",
    description="Copy a pipeline folder with its weights stored in a smaller dtype.",
    required=("source", "out"),
    output="out",
)
def export_pipeline_main(args: ExportArguments, _) -> None:
    check_weight_dtype(args.dtype)  # before the source is read
    sampling = None
    if args.sampling_defaults:
        try:
            sampling = json.loads(Path(args.sampling_defaults).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UserError(f"--sampling_defaults {args.sampling_defaults}: not a readable JSON file ({exc})") from None
    out = export_pipeline(args.source, args.out, args.dtype, args.image_tokenizer or None, sampling)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"wrote {out} ({size / 1e6:.1f} MB)")
