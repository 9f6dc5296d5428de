#!/usr/bin/env python
"""Stage 1: train the dVAE IMAGE tokenizer. See `python train_tokenizer.py --help`."""

from minidalle.cli.args import run_main
from minidalle.cli.train import train_tokenizer_main as main

if __name__ == "__main__":
    run_main(main)
