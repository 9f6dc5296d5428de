#!/usr/bin/env python
"""Request latency of the web page, prompt -> images shown, in a real browser: eager and compiled sampling.

    python bench/webui_latency.py [--model shapes] [--reps 5] [--modes eager,compiled] [--screenshots docs]

Starts `minidalle serve`'s page in this process on a free loopback port, drives it with Debian's Chromium
(minidalle.webui.browser: apt-get install -y chromium chromium-driver; pip install selenium) and times each
request from the click on Generate until every image of the gallery has loaded, for 1 and 4 images with the
page's default 8 candidates and with 1. "compiled" first compiles the sampling step for the batch sizes
`minidalle serve` warms up (the seconds that takes are printed too); then the modes take turns, request by
request, so that the machine's changing load falls on both alike. Prints one JSON object per figure.
With --screenshots DIR it also writes DIR/webui-{generate,score,complete}.png, one per tab.
"""

from __future__ import annotations

import argparse
import json
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from PIL import Image

from minidalle.data.shapes.generate import generate_scene, render_scene
from minidalle.webui import Handlers, launch, load_models, resolve_models
from minidalle.webui.browser import Page, missing_browser, start_browser
from minidalle.webui.sampling import WARM_ROWS

PROMPT = "a green circle above a yellow square"


def machine() -> str:
    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines()
        return next(line.split(":", 1)[1].strip() for line in lines if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor() or platform.machine()


def scene_image(folder: Path, words: str, split: str = "train") -> tuple[Path, str]:
    """The first shapes scene of `split` whose caption contains `words`, saved as a PNG: (path, caption)."""
    index = next(i for i in range(10_000) if words in generate_scene(split, 0, i).caption)
    scene = generate_scene(split, 0, index)
    path = folder / f"{split}-{index}.png"
    Image.fromarray(render_scene(scene)).save(path)
    return path, scene.caption


def measure(page: Page, sampler, warm: dict[str, set[int]], reps: int) -> None:
    """For each setting, the modes take turns request by request (eager, compiled, eager, ...), so that a
    change in the machine's load falls on both alike."""
    for images in (1, 4):
        for candidates in (8, 1):
            runs: dict[str, list[tuple[float, str, list[str]]]] = {mode: [] for mode in warm}
            for rep in range(reps + 1):  # the first round warms up (and is left out)
                for mode, steps in warm.items():
                    sampler.warm_steps = steps
                    run = page.generate(PROMPT, images, images=images, candidates=candidates, seed="")
                    if rep:
                        runs[mode].append(run)
            for mode, done in runs.items():
                server = [float(status.split(" in ")[1].split(" s")[0]) for _, status, _ in done]
                record = {
                    "metric": "webui_latency_s",
                    "mode": mode,
                    "images": images,
                    "candidates": candidates,
                    "median_s": round(statistics.median(s for s, _, _ in done), 3),
                    "runs_s": [round(s, 3) for s, _, _ in done],
                    "server_median_s": round(statistics.median(server), 3),  # the handler's own time (the page's)
                }
                print(json.dumps(record), flush=True)


def screenshots(page: Page, folder: Path, scratch: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    page.generate(f"{PROMPT}\na small cyan diamond in the center", 8, images=4, candidates=8, seed=0)
    page.screenshot(folder / "webui-generate.png")
    page.tab("Score")
    image, caption = scene_image(scratch, "cyan diamond", "zeroshot")
    page.upload("score-image", image)
    colours = ("cyan", "green", "blue", "purple", "white")
    page.type("captions", "\n".join(caption.replace("cyan", colour) for colour in colours))
    page.run("score", "score-button", None, None)
    page.screenshot(folder / "webui-score.png")
    page.tab("Complete")
    image, caption = scene_image(scratch, " above a ")
    page.upload("complete-image", image)
    page.type("complete-prompt", caption)
    page.type("complete-seed", "0")
    page.run("complete", "complete-button", "completions", 4)
    page.screenshot(folder / "webui-complete.png")
    page.tab("Generate")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes", help="a bundled model's name or a pipeline folder")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--modes", default="eager,compiled")
    parser.add_argument("--screenshots", default="", help="write the three tabs' screenshots into this folder")
    args = parser.parse_args()
    if reason := missing_browser():
        raise SystemExit(f"error: {reason}")
    models = load_models(resolve_models([args.model]))
    sampler = next(iter(models.values())).sampler
    print(json.dumps({"machine": machine(), "torch_threads": torch.get_num_threads(), "model": args.model}))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app, url = launch(Handlers(models), "127.0.0.1", port, block=False)
    driver = start_browser(1200, 1150)
    try:
        page = Page(driver, url, timeout=600)
        with tempfile.TemporaryDirectory() as scratch:
            if args.screenshots:
                screenshots(page, Path(args.screenshots), Path(scratch))
        warm = {}
        for mode in args.modes.split(","):
            if mode == "compiled":
                seconds = sampler.warm_up(WARM_ROWS)
                print(json.dumps({"metric": "compile_s", "rows": list(WARM_ROWS), "seconds": round(seconds, 1)}))
            warm[mode] = set(sampler.warm_steps) if mode == "compiled" else set()
        measure(page, sampler, warm, args.reps)
        offline = page.requests_off_loopback()
        print(json.dumps({"requests_off_loopback": offline}))
    finally:
        driver.quit()
        app.close()


if __name__ == "__main__":
    main()
