"""`minidalle export-pipeline`: copy a pipeline folder with its weights in a smaller dtype."""

from __future__ import annotations

from dataclasses import dataclass

from ..pipeline.io import export_pipeline
from .args import UserError, arg, command


@dataclass
class ExportArguments:
    source: str = arg("", help="The pipeline folder to export (train_prior.py's OUTPUT_DIR/pipeline).")
    out: str = arg("", help="Where to write the exported pipeline.")
    dtype: str = arg("float16", help="float16, bfloat16 or float32.")
    image_tokenizer: str = arg(
        "", help="Swap in this image tokenizer (it must produce the same codes, e.g. a decoder fine-tune)."
    )


@command(
    ExportArguments,
    prog="minidalle export-pipeline",
    description="Copy a pipeline folder with its weights stored in a smaller dtype.",
    required=("source", "out"),
    output="out",
)
def export_pipeline_main(args: ExportArguments, _) -> None:
    if args.dtype not in ("float16", "bfloat16", "float32"):
        raise UserError(f"--dtype must be float16, bfloat16 or float32, got {args.dtype!r}")
    out = export_pipeline(args.source, args.out, args.dtype, args.image_tokenizer or None)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"wrote {out} ({size / 1e6:.1f} MB)")
