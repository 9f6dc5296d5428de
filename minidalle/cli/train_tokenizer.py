"""`train_tokenizer.py` / `minidalle train-tokenizer`: stage 1, the image tokenizer
(the work is `minidalle.training.tokenizer_trainer.train`)."""

from __future__ import annotations

from ..data import DataArguments
from ..training.runtime import TrainingArguments
from ..training.tokenizer_trainer import TokenizerArguments, train
from .args import parse_args


def main(argv: list[str] | None = None) -> None:
    data_args, args, tok_args, _ = parse_args(
        [DataArguments, TrainingArguments, TokenizerArguments],
        argv,
        prog="train_tokenizer.py",
        description="Stage 1: train the dVAE IMAGE tokenizer (images <-> grids of discrete codes) on captioned images.",
    )
    train(data_args, args, tok_args)
