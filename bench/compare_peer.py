#!/usr/bin/env python
"""minidalle against lucidrains' dalle-pytorch 1.6.6, same config, same machine, same run.

    bash ../shared/peer/setup_peer_venv.sh                 # once: /tmp/peer-venv
    python bench/compare_peer.py [--peer-python /tmp/peer-venv/bin/python] [--rounds 2]

Config (the peer benchmark's): tokenizer 64x64 images, 512 codes, 3
down-samplings, width 64, 1 res-block; prior width 256, 4 layers, 8 heads of
32, 32 text tokens over a 1,000-token vocabulary, 8x8 image codes. Both sides
use 2 threads. Rounds alternate peer / ours; each figure is the best round of
each side. Prints one JSON line per figure:
{"metric", "ours", "peer", "unit", "ratio"}; ratio > 1 means minidalle is better.
Sampling is measured twice: eager (the default) and with `compile=True`
(`sample.py --compile`; the warm-up call compiles and is not timed).
Ours runs as a user would run it: `--mixed_precision auto` (bf16 autocast for training
and bf16 weights for sampling where the CPU runs bf16 natively, fp32 elsewhere); the
peer as shipped (fp32).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import torch  # noqa: E402
from run_all import PRIOR, TOKENIZER  # noqa: E402  (the peer benchmark's config, one definition)

from minidalle.image_tokenizers import DiscreteVAE  # noqa: E402
from minidalle.prior import Prior  # noqa: E402
from minidalle.prior.sampling import sample_codes  # noqa: E402
from minidalle.training.runtime import native_bf16  # noqa: E402

PEER_SCRIPT = ROOT.parent / "shared" / "peer" / "peer_dalle_pytorch.py"
BF16 = native_bf16(True)  # what --mixed_precision auto picks on this CPU
TOP_K = 154  # the peer's filter_thres=0.9 keeps int(0.1 * 1544) logits, all of them image logits


def timed(fn, warmup: int, reps: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def rate(items: float, times: list[float]) -> float:
    return items / statistics.median(times)


def ours(reps: int) -> dict[str, float]:
    torch.set_num_threads(2)
    torch.manual_seed(0)
    results = {}
    # ---- image tokenizer: the train_tokenizer.py step (bf16 autocast, channels-last, AdamW)
    vae = DiscreteVAE(TOKENIZER).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, foreach=True)
    x32 = torch.rand(32, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    x64 = torch.rand(64, 3, 64, 64)

    def vae_step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=BF16):
            loss = vae(x32, temperature=0.9, kl_weight=0.0).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    results["tokenizer_train_steps_per_s"] = rate(1, timed(vae_step, 3, reps))
    # `train_tokenizer.py --torch_compile`: the forward compiled in place (warm-up steps compile, not timed)
    vae_eager = vae
    vae = DiscreteVAE(TOKENIZER).to(memory_format=torch.channels_last)
    vae.compile()
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, foreach=True)
    results["tokenizer_train_steps_per_s_compiled"] = rate(1, timed(vae_step, 3, reps))
    vae = vae_eager
    vae.eval()
    codes = vae.encode(x64)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=BF16):
        results["encode_imgs_per_s_b64"] = rate(64, timed(lambda: vae.encode(x64), 3, reps))
        results["decode_imgs_per_s_b64"] = rate(64, timed(lambda: vae.decode(codes), 3, reps))

    # ---- prior training step, batch 16 (the train_prior.py step)
    prior = Prior(PRIOR)
    popt = torch.optim.AdamW(prior.parameters(), lr=3e-4, foreach=True)
    text = prior.text_tokens(torch.randint(1, 1000, (16, 32)), pad_id=0)
    img = torch.randint(0, 512, (16, 64))

    def prior_step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=BF16):
            loss = prior(text, img).loss
        loss.backward()
        popt.step()
        popt.zero_grad(set_to_none=True)

    results["prior_train_tokens_per_s"] = rate(16 * PRIOR.seq_len, timed(prior_step, 3, reps))

    # ---- sampling 8 images (64 codes each) + decode, as the pipeline does
    prior.eval()
    sampler = Prior(PRIOR).eval().to(torch.bfloat16 if BF16 else torch.float32)
    vae_bf16 = vae
    text8 = sampler.text_tokens(torch.randint(1, 1000, (8, 32)), pad_id=0)

    def generate(scale: float, compiled: bool = False):
        def run():
            g = torch.Generator().manual_seed(0)
            c = sample_codes(sampler, text8, top_k=TOP_K, generator=g, guidance_scale=scale, compile=compiled)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=BF16):
                vae_bf16.decode(c)

        return run

    results["sample_tokens_per_s_b8"] = rate(8 * 64, timed(generate(1.0), 1, max(5, reps // 2)))
    results["sample_tokens_per_s_b8_guided"] = rate(8 * 64, timed(generate(3.0), 1, max(5, reps // 2)))
    # `sample.py --compile`: the warm-up call compiles (not timed)
    results["sample_tokens_per_s_b8_compiled"] = rate(8 * 64, timed(generate(1.0, True), 1, max(5, reps // 2)))
    results["sample_tokens_per_s_b8_guided_compiled"] = rate(8 * 64, timed(generate(3.0, True), 1, max(5, reps // 2)))
    return results


def peer(python: str, reps: int) -> dict[str, float]:
    proc = subprocess.run([python, str(PEER_SCRIPT), "--reps", str(reps)], capture_output=True, text=True, check=True)
    values = {}
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            row = json.loads(line)
            values[row["metric"]] = row["value"]
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peer-python", default="/tmp/peer-venv/bin/python")
    parser.add_argument(
        "--rounds", type=int, default=2, help="alternating peer/ours rounds; the best of each side counts"
    )
    parser.add_argument("--reps", type=int, default=10)
    args = parser.parse_args()
    if not Path(args.peer_python).exists():
        sys.exit(f"no peer venv at {args.peer_python}: run bash ../shared/peer/setup_peer_venv.sh first")
    best_ours: dict[str, float] = {}
    best_peer: dict[str, float] = {}
    for _ in range(args.rounds):
        for key, value in peer(args.peer_python, args.reps).items():
            best_peer[key] = max(best_peer.get(key, value), value)  # rates only are used below
        for key, value in ours(args.reps).items():
            best_ours[key] = max(best_ours.get(key, value), value)
    rows = [
        (
            "sample_tokens_per_s_b8_vs_shipped",
            "sample_tokens_per_s_b8",
            "dalle_generate_img_tokens_per_s_b8",
            "img tok/s",
        ),
        (
            "sample_tokens_per_s_b8_vs_kvcache",
            "sample_tokens_per_s_b8",
            "dalle_generate_kvcache_path_img_tokens_per_s_b8",
            "img tok/s",
        ),
        (
            "sample_tokens_per_s_b8_compiled_vs_shipped",
            "sample_tokens_per_s_b8_compiled",
            "dalle_generate_img_tokens_per_s_b8",
            "img tok/s",
        ),
        (
            "sample_tokens_per_s_b8_compiled_vs_kvcache",
            "sample_tokens_per_s_b8_compiled",
            "dalle_generate_kvcache_path_img_tokens_per_s_b8",
            "img tok/s",
        ),
        ("prior_train_tokens_per_s", "prior_train_tokens_per_s", "dalle_train_tokens_per_s_b16", "tok/s"),
        ("tokenizer_train_steps_per_s", "tokenizer_train_steps_per_s", "vae_train_imgs_per_s_b32", "steps/s"),
        (
            "tokenizer_train_steps_per_s_compiled",
            "tokenizer_train_steps_per_s_compiled",
            "vae_train_imgs_per_s_b32",
            "steps/s",
        ),
        ("encode_imgs_per_s_b64", "encode_imgs_per_s_b64", "vae_encode_imgs_per_s_b64", "img/s"),
        ("decode_imgs_per_s_b64", "decode_imgs_per_s_b64", "vae_decode_imgs_per_s_b64", "img/s"),
    ]
    precision = "bf16" if BF16 else "fp32 (no native bf16)"
    machine = f"{os.cpu_count()} CPU cores, torch {torch.__version__}, 2 threads, {precision}"
    for metric, our_key, peer_key, unit in rows:
        peer_value = best_peer.get(peer_key)
        if peer_key == "vae_train_imgs_per_s_b32" and peer_value:
            peer_value /= 32  # images per second at batch 32 -> steps per second
        ours_value = best_ours[our_key]
        print(
            json.dumps(
                {
                    "metric": metric,
                    "ours": round(ours_value, 3),
                    "peer": round(peer_value, 3) if peer_value else None,
                    "unit": unit,
                    "ratio": round(ours_value / peer_value, 2) if peer_value else None,
                    "machine": machine,
                }
            )
        )
    for metric in ("sample_tokens_per_s_b8_guided", "sample_tokens_per_s_b8_guided_compiled"):
        print(
            json.dumps(
                {
                    "metric": metric,
                    "ours": round(best_ours[metric], 3),
                    "peer": None,
                    "unit": "img tok/s",
                    "ratio": None,
                    "machine": machine,
                }
            )
        )


if __name__ == "__main__":
    main()
