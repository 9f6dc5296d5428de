#!/usr/bin/env python
"""Sampling throughput of a pipeline: image tokens per second by batch size, guidance off and on.

    python bench/sampling_speed.py [--model DIR] [--batch-sizes 1,8,16,64] [--threads 2]

Times `MiniDallePipeline.__call__` end to end (text encoding, sampling with the
KV cache, dVAE decoding to PIL images). Prints one JSON line per figure, and
last the seconds sample.py's defaults take for 4 images of one prompt, with
re-ranking (its default candidates) and without.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from minidalle.cli.sample import SampleArguments
from minidalle.pipeline import MiniDallePipeline


def median_seconds(run, reps: int) -> float:
    run()  # warm-up
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--batch-sizes", default="1,8,16,64")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pipe = MiniDallePipeline.from_pretrained(args.model)
    tokens_per_image = pipe.prior.config.num_image_tokens
    prompt = "a small red circle in the top left"
    for batch in [int(b) for b in args.batch_sizes.split(",")]:
        for guidance in (1.0, 3.0):
            run = functools.partial(
                pipe, [prompt], num_images_per_prompt=batch, batch_size=batch, guidance_scale=guidance, seed=0
            )
            seconds = median_seconds(run, args.reps)
            print(
                json.dumps(
                    {
                        "metric": "sample_image_tokens_per_s",
                        "batch_size": batch,
                        "guidance_scale": guidance,
                        "value": round(batch * tokens_per_image / seconds, 1),
                        "seconds_per_batch": round(seconds, 4),
                        "threads": args.threads,
                        "device": str(pipe.device),
                    }
                ),
                flush=True,
            )
    d = SampleArguments()
    for candidates in sorted({1, d.num_candidates}):
        run = functools.partial(
            pipe,
            [prompt],
            num_images_per_prompt=d.num_images,
            guidance_scale=d.guidance_scale,
            temperature=d.temperature,
            batch_size=d.batch_size,
            seed=0,
            num_candidates=candidates,
        )
        print(
            json.dumps(
                {
                    "metric": "sample_py_defaults_seconds",
                    "images": d.num_images,
                    "num_candidates": candidates,
                    "value": round(median_seconds(run, args.reps), 3),
                    "threads": args.threads,
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
