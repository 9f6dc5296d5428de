#!/usr/bin/env python
"""Stage 2: train (or fine-tune) the prior over text tokens + image codes. See `python train_prior.py --help`."""

from minidalle.cli.args import run_main
from minidalle.cli.train import train_prior_main as main

if __name__ == "__main__":
    run_main(main)
