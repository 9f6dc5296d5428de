"""CPU cost of the perceptual distance (minidalle.image_tokenizers.perceptual), one JSON line per setting.

    OMP_NUM_THREADS=1 python bench/perceptual_cost.py [--batch 32] [--size 64] [--repeats 5]

For each layer cut-off (the LPIPS taps up to relu2_2, relu3_3, relu4_3, relu5_3), with and without
channels_last: seconds per forward+backward (gradient w.r.t. the first input only, as in a reconstruction loss)
and per forward (both inputs, no graph, as at evaluation). After one warm-up run, the fastest and the median
of `--repeats` timed runs, in wall-clock seconds and in this process's CPU seconds: on a machine shared with
other jobs the wall clock includes waiting for a core, and the CPU time (at one thread) is the cost itself.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from minidalle.image_tokenizers.perceptual import LPIPS_LAYERS, PerceptualDistance

CUTOFFS = ("relu2_2", "relu3_3", "relu4_3", "relu5_3")


def timings(step, repeats: int) -> dict[str, float]:
    """Fastest and median wall-clock and CPU seconds of `repeats` calls after a warm-up call."""
    step()
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        step()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return {
        "wall_min": round(min(wall), 3),
        "wall_median": round(statistics.median(wall), 3),
        "cpu_min": round(min(cpu), 3),
        "cpu_median": round(statistics.median(cpu), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    target = torch.rand(args.batch, 3, args.size, args.size, generator=generator)
    recon = (target + 0.1 * torch.randn(target.shape, generator=generator)).clamp(0, 1)

    for cutoff in CUTOFFS:
        layers = LPIPS_LAYERS[: LPIPS_LAYERS.index(cutoff) + 1]
        for channels_last in (False, True):
            distance = PerceptualDistance(layers, channels_last=channels_last)

            def train_step(distance=distance):
                x = recon.clone().requires_grad_(True)
                distance(x, target).mean().backward()

            def eval_step(distance=distance):
                with torch.no_grad():
                    distance(recon, target)

            print(
                json.dumps(
                    {
                        "layers": list(layers),
                        "channels_last": channels_last,
                        "batch": args.batch,
                        "size": args.size,
                        "threads": torch.get_num_threads(),
                        "forward_backward_s": timings(train_step, args.repeats),
                        "forward_s": timings(eval_step, args.repeats),
                        "torch": torch.__version__,
                        "machine": platform.processor() or platform.machine(),
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
