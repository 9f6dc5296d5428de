"""`train_prior.py` / `minidalle train-prior`: stage 2, the prior
(the work is `minidalle.training.prior_trainer.train`)."""

from __future__ import annotations

from ..data import DataArguments
from ..training.prior_trainer import PriorArguments, train
from ..training.runtime import TrainingArguments
from .args import parse_args


def main(argv: list[str] | None = None) -> None:
    data_args, args, prior_args, _ = parse_args(
        [DataArguments, TrainingArguments, PriorArguments],
        argv,
        prog="train_prior.py",
        description="Stage 2: train (or fine-tune with --init_from) the prior over BPE text tokens + image codes.",
    )
    train(data_args, args, prior_args)
