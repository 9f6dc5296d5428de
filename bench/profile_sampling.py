#!/usr/bin/env python
"""Where sampling's time goes: torch profiler table for one batch of sampling on the peer config.

python bench/profile_sampling.py [--batch-size 8] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from run_all import PRIOR
from torch.profiler import profile

from minidalle.prior import Prior
from minidalle.prior.sampling import sample_codes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    prior = Prior(PRIOR).eval()
    text = prior.text_tokens(torch.randint(1, 1000, (args.batch_size, 32)), pad_id=0)

    def run():
        return sample_codes(prior, text, top_k=154, generator=torch.Generator().manual_seed(0))

    run()
    start = time.perf_counter()
    run()
    print(f"{args.batch_size * 64 / (time.perf_counter() - start):.0f} image tokens/s (codes only, no decode)")
    with profile() as prof:
        run()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
