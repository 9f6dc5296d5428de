"""The page's sampler: `MiniDallePipeline.__call__`'s images, with the compiled step warmed up for a few batch shapes.

`torch.compile` specialises the sampling step to its batch shape, and compiling one shape takes 20-80 s on a
CPU: a server cannot do that while a request waits. So `WarmSampler.warm_up` compiles the step for a few row
counts at start-up, before the port opens, and each batch of a request is padded up to the smallest warm row
count (one that is too large for all of them runs eagerly). Each row draws from its own generator, seeded
`seed + row` as the pipeline does, so a row's image does not depend on the rows beside it: padding changes
nothing, and a request gives exactly the images of `pipe(prompts, ..., seed=seed)` and of sample.py with that
seed. Sampling keeps no state between calls (a fresh KV cache and fresh generators per call), so two requests
running at once cannot disturb each other.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from ..errors import UserError, require_cpu_compiler
from ..pipeline import MiniDallePipeline, PipelineOutput

logger = logging.getLogger("minidalle")

WARM_ROWS = (1, 4, 8, 16)  # row counts compiled at start-up: 1 or 4 images, alone or of 8 candidates (2 x 8)


@dataclass
class SamplingSettings:
    """One request's sampling settings (the names and defaults of `MiniDallePipeline.__call__` / sample.py)."""

    num_images_per_prompt: int = 4
    guidance_scale: float = 1.5
    temperature: float = 0.3
    top_k: int = 0
    top_p: float = 1.0
    num_candidates: int = 8


class WarmSampler:
    """Samples a pipeline's images in batches of `batch_size` rows (sample.py's default 16), each batch padded to
    a row count whose compiled step is warm."""

    def __init__(self, pipe: MiniDallePipeline, batch_size: int = 16) -> None:
        self.pipe = pipe
        self.batch_size = batch_size
        self.warm_steps: set[int] = set()  # batch sizes of the compiled step (rows, or 2x rows with guidance)

    def warm_up(self, rows: Sequence[int] = WARM_ROWS, guidance_scale: float = 1.5) -> float:
        """Compile the step for each row count (at `guidance_scale`'s branch count); returns the seconds it took."""
        started = time.perf_counter()
        for n in sorted({min(r, self.batch_size) for r in rows}):
            self.pipe(["warm-up"] * n, guidance_scale=guidance_scale, seed=0, batch_size=n, compile=True)
            self.warm_steps.add(self._step_batch(n, guidance_scale))
        return time.perf_counter() - started

    @staticmethod
    def _step_batch(rows: int, guidance_scale: float) -> int:
        return rows * (2 if guidance_scale != 1.0 else 1)  # guidance runs the empty caption in the same batch

    def _padded_rows(self, rows: int, guidance_scale: float) -> int | None:
        """The smallest row count >= `rows` whose compiled step is warm (None: run eagerly)."""
        for n in range(rows, self.batch_size + 1):
            if self._step_batch(n, guidance_scale) in self.warm_steps:
                return n
        return None

    def __call__(
        self,
        prompts: list[str],
        settings: SamplingSettings,
        seed: int,
        init_image: Image.Image | None = None,
        keep_rows: int = 0,
    ) -> PipelineOutput:
        """What `pipe(prompts, seed=seed, **settings)` gives (with `init_image`/`keep_rows`: completions)."""
        pipe, s = self.pipe, settings
        candidates = s.num_candidates
        every_row_primed = init_image is not None and keep_rows == pipe.prior.config.image_grid
        if candidates > 1 and (s.temperature <= 0 or every_row_primed):  # every candidate would be the same
            candidates = 1
        flat = [p for p in prompts for _ in range(s.num_images_per_prompt * candidates)]
        images, codes = [], []
        for start in range(0, len(flat), self.batch_size):
            batch = flat[start : start + self.batch_size]
            padded = self._padded_rows(len(batch), s.guidance_scale)
            out = pipe(
                batch + batch[-1:] * ((padded or len(batch)) - len(batch)),
                guidance_scale=s.guidance_scale,
                temperature=s.temperature,
                top_k=s.top_k,
                top_p=s.top_p,
                seed=seed + start,  # row i of the request draws from seed + i, as in one call of the pipeline
                batch_size=padded or len(batch),
                init_image=init_image,
                keep_rows=keep_rows,
                compile=padded is not None,
            )
            images += out.images[: len(batch)]
            codes.append(out.codes[: len(batch)])
        codes = torch.cat(codes)
        seeds = [seed + i for i in range(len(flat))]
        if candidates == 1:
            return PipelineOutput(images, codes, flat, seeds)
        # DALL-E's re-ranking as the pipeline does it: the highest pmi of the picture as shown, per image
        pmi = torch.tensor([r["pmi"] for r in pipe.score(images, flat, batch_size=self.batch_size)])
        pmi = pmi.view(-1, candidates)
        best = (torch.arange(len(pmi)) * candidates + pmi.argmax(1)).tolist()
        return PipelineOutput(
            [images[i] for i in best],
            codes[best],
            [flat[i] for i in best],
            [seeds[i] for i in best],
            pmi.max(1).values.tolist(),
        )


def warm_up_all(samplers: Sequence[WarmSampler], compile: bool, rows: Sequence[int] = WARM_ROWS) -> None:
    """Compile each sampler's step before the port opens, or say in one log line why sampling stays eager."""
    if not compile or not rows:
        logger.info("sampling runs eagerly (--no_compile)")
        return
    if any(sampler.pipe.device.type == "cpu" for sampler in samplers):
        try:
            require_cpu_compiler("--compile")
        except UserError:
            logger.warning(
                "sampling runs eagerly: torch.compile needs a C++ compiler on a CPU and none was found (g++, c++, "
                "clang++ or $CXX); install one for the compiled speed, or pass --no_compile"
            )
            return
    for sampler in samplers:
        sizes = ", ".join(str(n) for n in sorted({min(r, sampler.batch_size) for r in rows}))
        logger.info(
            "compiling the sampling step for batches of %s rows before the page opens (20-80 s per batch size on a "
            "CPU; torch caches the work for the next start; --no_compile skips this)",
            sizes,
        )
        logger.info("compiled the sampling step in %.0f s", sampler.warm_up(rows))
