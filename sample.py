#!/usr/bin/env python
"""Prompts -> images with a minidalle pipeline (the bundled shapes model by default). See `python sample.py --help`."""

from minidalle.cli.args import run_main
from minidalle.cli.sample import main

if __name__ == "__main__":
    run_main(main)
