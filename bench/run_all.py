#!/usr/bin/env python
"""The benchmark suite: one JSON line per figure, on this machine, in one run.

    python bench/run_all.py [--threads 2] [--reps 10] [--plot docs/sampling-throughput.png]
                            [--device cpu|cuda] [--no-compile]

Figures (the peer benchmark's config: prior width 256, 4 layers, 8 heads, 32 text + 64 image
tokens; tokenizer 64x64, 512 codes, 3 down-samplings, width 64, 1 res-block):
- matmul peaks: fp32 and bf16 FLOP/s of a large square matmul, measured now (the MFU denominators);
- prior training: tokens/s at batch 16 and 64 (forward + backward + AdamW, as train_prior.py steps),
  in fp32 and with `--mixed_precision auto`'s choice, with MFU against both peaks
  (FLOPs per position = 6 x (block weights + its head) + 6 layers dim T for causal attention);
- tokenizer training images/s at batch 32; encode and decode images/s at batch 64;
- sampling image tokens/s at batch 1, 8 and 64, guidance off (1) and on (3), decode included,
  eager and with `compile=True` (`sample.py --compile`; compilation, done once per batch shape, is
  not timed: the first call is the warm-up);
- peak memory (resident set on CPU, allocated on CUDA).
`--plot` draws sampling throughput against batch size (PIL only).
For the side-by-side with dalle-pytorch, see bench/compare_peer.py.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from minidalle.image_tokenizers import DiscreteVAE, DVAEConfig  # noqa: E402
from minidalle.prior import Prior, PriorConfig  # noqa: E402
from minidalle.prior.sampling import sample_codes  # noqa: E402
from minidalle.training.runtime import native_bf16  # noqa: E402

# the peer benchmark's config (../shared/peer), also used by compare_peer.py and profile_sampling.py
TOKENIZER = DVAEConfig(
    image_size=64, num_codes=512, codebook_dim=256, widths=[64, 64, 64], res_blocks=1, res_levels=1, stem=False
)
PRIOR = PriorConfig(text_vocab_size=1000, text_len=32, num_image_codes=512, image_grid=8, dim=256, layers=4, heads=8)


def emit(metric: str, value, unit: str, **extra) -> dict:
    row = {"metric": metric, "value": round(value, 4) if isinstance(value, float) else value, "unit": unit, **extra}
    print(json.dumps(row), flush=True)
    return row


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device, warmup: int, reps: int) -> float:
    """Median seconds per call."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_peak(dtype: torch.dtype, device: torch.device, n: int) -> float:
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    reps = 10 if (dtype == torch.float32 or device.type == "cuda" or native_bf16(True)) else 1  # emulated bf16 is slow
    seconds = min(timed(lambda: a @ b, device, 1, 1) for _ in range(reps))
    return 2 * n**3 / seconds


def prior_flops_per_token(prior: Prior) -> float:
    """Training FLOPs per position: 6 x (block weights + the one head the position goes through, averaged)
    + causal attention 6 x layers x dim x T (half of nanoGPT's 12, which counts the masked half too)."""
    cfg = prior.config
    blocks = sum(p.numel() for p in prior.blocks.parameters() if p.ndim >= 2)
    head = (
        cfg.text_len * prior.text_head.weight.numel() + cfg.num_image_tokens * prior.image_head.weight.numel()
    ) / cfg.seq_len
    return 6 * (blocks + head) + 6 * cfg.layers * cfg.dim * cfg.seq_len


def autocast(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


def prior_training(device: torch.device, batch: int, bf16: bool, reps: int) -> float:
    torch.manual_seed(0)
    prior = Prior(PRIOR).to(device)
    fused = device.type == "cuda"
    opt = torch.optim.AdamW(prior.parameters(), lr=3e-4, fused=fused, foreach=not fused)
    text = prior.text_tokens(torch.randint(1, 1000, (batch, 32), device=device), pad_id=0)
    images = torch.randint(0, 512, (batch, 64), device=device)

    def step():
        with autocast(device, bf16):
            loss = prior(text, images).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return batch * PRIOR.seq_len / timed(step, device, 3, reps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--plot", default="", help="write a PNG of sampling throughput against batch size")
    parser.add_argument(
        "--no-compile", action="store_true", help="skip the compiled sampling figures (compilation takes minutes)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cpu = device.type == "cpu"
    if not cpu:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    bf16 = native_bf16(cpu)
    machine = (
        torch.cuda.get_device_name(device) if not cpu else f"{os.cpu_count()} CPU cores, {args.threads} threads"
    ) + f", torch {torch.__version__}"
    emit("machine", machine, "", native_bf16=bf16)

    n = 4096 if not cpu else 1024
    peak32 = matmul_peak(torch.float32, device, n)
    peak16 = matmul_peak(torch.bfloat16, device, n)
    emit("matmul_peak_fp32", peak32 / 1e9, "GFLOP/s", n=n, tf32=not cpu)
    emit("matmul_peak_bf16", peak16 / 1e9, "GFLOP/s", n=n, native=bf16)

    flops = prior_flops_per_token(Prior(PRIOR))
    emit("prior_flops_per_token", flops / 1e6, "MFLOP")
    for batch in (16, 64):
        for use_bf16 in sorted({False, bf16}):
            rate = prior_training(device, batch, use_bf16, args.reps)
            emit(
                "prior_train_tokens_per_s",
                rate,
                "tok/s",
                batch_size=batch,
                precision="bf16" if use_bf16 else "fp32",
                mfu_vs_fp32_peak=round(rate * flops / peak32, 4),
                mfu_vs_bf16_peak=round(rate * flops / peak16, 4),
            )

    # ---- image tokenizer
    torch.manual_seed(0)
    vae = DiscreteVAE(TOKENIZER).to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, foreach=True)
    x32 = torch.rand(32, 3, 64, 64, device=device).contiguous(memory_format=torch.channels_last)
    x64 = torch.rand(64, 3, 64, 64, device=device)

    def vae_step():
        with autocast(device, bf16):
            loss = vae(x32, temperature=0.9, kl_weight=0.0).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    emit("tokenizer_train_images_per_s", 32 / timed(vae_step, device, 3, args.reps), "img/s", batch_size=32, bf16=bf16)
    vae.eval()
    with torch.no_grad(), autocast(device, bf16):
        codes = vae.encode(x64)
        emit("encode_images_per_s", 64 / timed(lambda: vae.encode(x64), device, 3, args.reps), "img/s", batch_size=64)
        emit("decode_images_per_s", 64 / timed(lambda: vae.decode(codes), device, 3, args.reps), "img/s", batch_size=64)

    # ---- sampling: 64 codes per image with the KV cache, then decode
    torch.manual_seed(0)
    sampler = Prior(PRIOR).to(device).eval()
    if bf16:
        sampler = sampler.to(torch.bfloat16)
    curve: dict[str, list[tuple[int, float]]] = {}
    for compiled in (False,) if args.no_compile else (False, True):
        for batch in (1, 8, 64):
            text = sampler.text_tokens(torch.randint(1, 1000, (batch, 32), device=device), pad_id=0)
            for scale in (1.0, 3.0):

                def run(text=text, scale=scale, compiled=compiled):
                    generator = torch.Generator(device).manual_seed(0)
                    c = sample_codes(
                        sampler, text, top_k=154, generator=generator, guidance_scale=scale, compile=compiled
                    )
                    with torch.no_grad(), autocast(device, bf16):
                        vae.decode(c)

                rate = batch * 64 / timed(run, device, 1, max(3, args.reps // 2))
                label = (
                    f"guidance {scale:g}" + (" (2 passes)" if scale != 1 else "") + (", compiled" if compiled else "")
                )
                curve.setdefault(label, []).append((batch, rate))
                emit(
                    "sample_image_tokens_per_s",
                    rate,
                    "img tok/s",
                    batch_size=batch,
                    guidance_scale=scale,
                    compiled=compiled,
                )

    peak_memory = (
        torch.cuda.max_memory_allocated(device)
        if not cpu
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )
    emit("peak_memory", peak_memory / 2**20, "MiB", kind="allocated" if not cpu else "max resident set")
    if args.plot:
        plot(curve, Path(args.plot), machine)


def plot(curve: dict[str, list[tuple[int, float]]], path: Path, machine: str) -> None:
    """A log-x line chart of image tokens/s against batch size, one line per setting (PIL only)."""
    import math

    from PIL import Image, ImageDraw

    width, height, left, bottom, top, right = 640, 400, 70, 50, 40, 20
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    batches = sorted({b for points in curve.values() for b, _ in points})
    ymax = max(r for points in curve.values() for _, r in points) * 1.1

    def xy(batch: int, rate: float) -> tuple[float, float]:
        fx = (math.log2(batch) - math.log2(batches[0])) / max(math.log2(batches[-1]) - math.log2(batches[0]), 1)
        return left + fx * (width - left - right), height - bottom - rate / ymax * (height - bottom - top)

    draw.line([(left, top), (left, height - bottom), (width - right, height - bottom)], fill="black")
    for b in batches:
        x, y = xy(b, 0)
        draw.text((x - 6, y + 8), str(b), fill="black")
    for i in range(5):
        rate = ymax * i / 4
        x, y = xy(batches[0], rate)
        draw.text((5, y - 6), f"{rate:,.0f}", fill="black")
        draw.line([(left, y), (width - right, y)], fill=(225, 225, 225))
    colours = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189)]
    for i, (label, points) in enumerate(curve.items()):
        colour = colours[i % len(colours)]
        coords = [xy(b, r) for b, r in points]
        draw.line(coords, fill=colour, width=3)
        for x, y in coords:
            draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=colour)
        draw.text((coords[-1][0] - 200, coords[-1][1] - 18), label, fill=colour)
    draw.text((left, 12), f"sampling image tokens/s (decode included) vs batch size - {machine}", fill="black")
    draw.text((width // 2 - 30, height - 22), "batch size", fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


if __name__ == "__main__":
    main()
