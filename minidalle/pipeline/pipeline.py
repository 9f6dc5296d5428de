"""MiniDallePipeline: prompts in, PIL images out (the diffusers habit), plus likelihood.

from minidalle import MiniDallePipeline
pipe = MiniDallePipeline.from_pretrained()            # the bundled shapes model
out = pipe(["a small red circle in the top left"], num_images_per_prompt=4, seed=0)
out.images[0].save("circle.png")
pipe.score(out.images[:1], ["a small red circle in the top left"])   # bits/dim
pipe.rank_captions(image, ["a red circle", "a blue circle"])        # zero-shot classification
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..data import ImageTransform
from ..errors import UserError
from ..images import to_pil
from ..metrics import bits_per_dim
from ..prior import sample_codes
from ..text import MAX_CAPTION_CHARS, encode_captions
from .io import load_pipeline_parts, read_sampling_defaults

logger = logging.getLogger("minidalle")

PACKAGE_DIR = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = PACKAGE_DIR / "default_model"  # shapes: synthetic, no third-party art
EMOJI_MODEL = PACKAGE_DIR / "emoji_model"  # emoji-styles: seven open emoji sets (its ATTRIBUTION.md beside it)
# the bundled models by name ("default": what sample.py's manifest calls the model used without --model)
BUNDLED_MODELS = {"shapes": DEFAULT_MODEL, "emoji": EMOJI_MODEL, "default": DEFAULT_MODEL}
# how sample.py samples (and the prior trainer's preview grids, so that they show what sample.py gives) when the
# model folder does not say (its model_index.json's "sampling_defaults" do: see `read_sampling_defaults`);
# a library call of the pipeline takes the same settings but samples plainly: one candidate, no re-ranking
SAMPLING_DEFAULTS = {"guidance_scale": 1.5, "temperature": 0.3, "top_k": 0, "top_p": 1.0, "num_candidates": 8}


BUNDLED_NAMES = tuple(name for name in BUNDLED_MODELS if name != "default")  # the names users are shown


def resolve_model(model: str | Path | None) -> Path:
    """A pipeline folder, or a bundled model's name (`shapes`, `emoji`, `default`); None: the bundled default.
    A folder of that name is taken over the bundled model only when it holds a model (a pipeline's
    model_index.json or a model's config.json): `--data shapes --init_from shapes` means the bundled one.
    Neither a folder nor a bundled name: a `UserError` listing the names."""
    if model is None or model == "":
        return DEFAULT_MODEL
    folder = Path(model)
    holds_a_model = (folder / "model_index.json").is_file() or (folder / "config.json").is_file()
    if str(model) in BUNDLED_MODELS and not holds_a_model:
        bundled = BUNDLED_MODELS[str(model)]
        if not (bundled / "model_index.json").is_file():
            raise UserError(f"the bundled model {str(model)!r} is missing from this installation ({bundled})")
        return bundled
    if not folder.exists():
        raise UserError(
            f"{model}: no such model folder, and no bundled model of that name (bundled: {', '.join(BUNDLED_NAMES)})"
        )
    return folder


@dataclass
class PipelineOutput:
    images: list[Image.Image]  # num_images_per_prompt per prompt, prompt-major
    codes: torch.Tensor  # (len(images), h*w) image codes
    prompts: list[str]  # the prompt of each image
    seeds: list[int]  # each image's own seed: `pipe(prompt, seed=seeds[i], num_candidates=1)` reproduces image i
    scores: list[float] | None = None  # with num_candidates > 1: the `pmi` each image won by (see `score`): of the
    # tokenizer's codes of the decoded picture, which may differ from `codes`, the codes as sampled


def check_prompts(prompts: Sequence[str] | str) -> list[str]:
    """Validate prompts: a clear error for empty ones, a logged cut for over-long ones."""
    if isinstance(prompts, str):
        prompts = [prompts]
    checked = []
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise UserError(f"prompt {i + 1} is not text ({type(prompt).__name__})")
        prompt = " ".join(prompt.replace("\x00", " ").split())  # control whitespace and runs of spaces -> one space
        if not prompt:
            raise UserError(f"prompt {i + 1} is empty; give a caption such as 'a small red circle in the top left'")
        if len(prompt) > MAX_CAPTION_CHARS:
            logger.warning(
                "prompt %d has %d characters; only the first %d are read", i + 1, len(prompt), MAX_CAPTION_CHARS
            )
            prompt = prompt[:MAX_CAPTION_CHARS].rstrip()
        checked.append(prompt)
    if not checked:
        raise UserError("no prompts given")
    return checked


class MiniDallePipeline:
    """Image tokenizer + text tokenizer + prior, ready to sample, reconstruct and score."""

    def __init__(self, image_tokenizer, text_tokenizer, prior, device: str | torch.device = "cpu") -> None:
        self.image_tokenizer = image_tokenizer.eval()
        self.text_tokenizer = text_tokenizer
        self.prior = prior.eval()
        self.transform = ImageTransform(image_tokenizer.image_size)
        # how this model samples best (from its folder's model_index.json, else SAMPLING_DEFAULTS): what
        # `__call__` uses for settings not given, and sample.py for flags not given
        self.sampling_defaults = dict(SAMPLING_DEFAULTS)
        self.to(device)

    def to(self, device: str | torch.device) -> MiniDallePipeline:
        """Move the image tokenizer and the prior to `device` (diffusers' `pipe.to("cuda")`); returns the pipeline."""
        self.device = torch.device(device)
        self.image_tokenizer.to(self.device)
        self.prior.to(self.device)
        return self

    @classmethod
    def from_pretrained(
        cls, folder: str | Path | None = None, device: str | torch.device | None = None
    ) -> MiniDallePipeline:
        """Load a pipeline folder (`train_prior.py`'s OUTPUT_DIR/pipeline) or a bundled model by name
        (`BUNDLED_MODELS`); None: the bundled default model."""
        folder = resolve_model(folder)
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        image_tokenizer, text_tokenizer, prior = load_pipeline_parts(folder)
        pipe = cls(image_tokenizer.float(), text_tokenizer, prior.float(), device)
        pipe.sampling_defaults.update(read_sampling_defaults(folder))
        return pipe

    # -------------------------------------------------------------- helpers
    def _text_tokens(self, prompts: list[str]) -> torch.Tensor:
        ids, _ = encode_captions(self.text_tokenizer, prompts, self.prior.config.text_len, warn=False)
        return self.prior.text_tokens(ids.to(self.device), self.text_tokenizer.pad_token_id)

    def _warn_long_prompts(self, prompts: list[str]) -> None:
        """One warning per call for the distinct prompts longer than the prior's text length (they are cut)."""
        _, truncated = encode_captions(
            self.text_tokenizer, list(dict.fromkeys(prompts)), self.prior.config.text_len, warn=False
        )
        if truncated:
            logger.warning(
                "%d prompt(s) longer than %d text tokens were truncated", truncated, self.prior.config.text_len
            )

    def _pixels(self, images) -> torch.Tensor:
        """PIL images or (H, W, 3) uint8 arrays (or a (B, 3, H, W) tensor in [0, 1]) -> model input on the device."""
        if isinstance(images, torch.Tensor):
            return images.to(self.device)
        if isinstance(images, (Image.Image, np.ndarray)):
            images = [images]
        images = [Image.fromarray(im) if isinstance(im, np.ndarray) else im for im in images]
        return torch.stack([self.transform(im) for im in images]).to(self.device)

    to_pil = staticmethod(to_pil)  # (B, 3, H, W) in [0, 1] -> PIL images

    # ------------------------------------------------------------- sampling
    @torch.inference_mode()
    def __call__(
        self,
        prompts: Sequence[str] | str,
        num_images_per_prompt: int = 1,
        guidance_scale: float | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        batch_size: int = 16,
        init_image=None,
        keep_rows: int = 0,
        progress: bool = False,
        compile: bool = False,
        num_candidates: int = 1,
        generator: torch.Generator | None = None,
    ) -> PipelineOutput:
        """Sample `num_images_per_prompt` images for each prompt.

        `guidance_scale`, `temperature`, `top_k`, `top_p` left at None are the model's own
        (`self.sampling_defaults`: its folder's model_index.json, else SAMPLING_DEFAULTS).

        Seeds: image (or candidate) i is drawn from its own generator seeded `seed + i`, so
        `PipelineOutput.seeds[i]` reproduces it alone, whatever the batch size, pixel for pixel
        (images are decoded one at a time, so no other image in the batch changes a rounding). `seed=None` (the
        default) draws a fresh base seed (from `generator` when one is given), so repeated calls
        give new images; sample.py's `--seed 0` is fixed.

        With `init_image` and `keep_rows`, the top `keep_rows` rows of the
        image's codes are kept and the rest completed (DALL-E, Fig. 2).
        `compile=True` runs the per-code step through `torch.compile`: each
        step is faster, after 20-50 s of compilation (a short last batch is
        padded so that there is one batch shape); the weights are baked into
        the compiled graph, so do not change `self.prior`'s weights in place
        afterwards (see `minidalle.prior.sampling`).

        `num_candidates=N` samples N candidates for each image and keeps the one
        the model itself finds best explained by its prompt: the highest `pmi`
        (see `score`) of the tokenizer's codes of the decoded candidate, i.e. of
        the picture as shown, so a decoding that drifts from the prompt counts
        against it. This is DALL-E's re-ranking of samples, with the prior's
        own likelihood in place of CLIP. The candidates are exactly the images
        that `num_images_per_prompt * N` with `num_candidates=1` would give, in
        groups of N (`batch_size` counts candidates); sampling and decoding cost N
        times as much, plus one scoring pass. The default here is 1 (plain
        sampling); sample.py's is 8. Where every candidate would be the same
        (temperature 0, or every row primed) one is sampled.
        """
        from tqdm.auto import tqdm

        prompts = check_prompts(prompts)
        given = dict(guidance_scale=guidance_scale, temperature=temperature, top_k=top_k, top_p=top_p)
        settings = {k: self.sampling_defaults[k] if v is None else v for k, v in given.items()}
        guidance_scale, temperature, top_k, top_p = (settings[k] for k in given)
        if num_images_per_prompt < 1 or batch_size < 1 or num_candidates < 1:
            raise UserError("num_images_per_prompt, batch_size and num_candidates must be >= 1")
        g = self.prior.config.image_grid
        if not 0 <= keep_rows <= g:
            raise UserError(f"keep_rows must be between 0 and {g}")
        primed = None
        if init_image is not None and keep_rows:
            primed = self.image_tokenizer.encode(self._pixels(init_image)[:1]).flatten(1)[:, : keep_rows * g]
        if num_candidates > 1 and (temperature <= 0 or (primed is not None and keep_rows == g)):
            logger.info(
                "every candidate would be the same (temperature 0 or every row primed): sampling one, not %d",
                num_candidates,
            )
            num_candidates = 1
        self._warn_long_prompts(prompts)
        flat = [p for p in prompts for _ in range(num_images_per_prompt * num_candidates)]
        if seed is None:
            seed = (
                secrets.randbelow(2**31 - 1)
                if generator is None
                else int(torch.randint(0, 2**31 - 1, (), generator=generator))
            )
        seeds = [int(seed) + i for i in range(len(flat))]
        codes = []
        chunks = range(0, len(flat), batch_size)
        for start in tqdm(chunks, desc="sampling", disable=not progress or len(chunks) < 2, leave=False):
            batch = flat[start : start + batch_size]
            n = len(batch)
            generators = [torch.Generator(device=self.device).manual_seed(s) for s in seeds[start : start + n]]
            if compile and len(chunks) > 1:  # pad a short last batch: one compiled shape, not two
                batch = batch + batch[-1:] * (batch_size - n)
                generators += [torch.Generator(device=self.device) for _ in range(batch_size - n)]
            init = primed.expand(len(batch), -1) if primed is not None else None
            codes.append(
                sample_codes(
                    self.prior,
                    self._text_tokens(batch),
                    guidance_scale=guidance_scale,
                    temperature=temperature,
                    top_k=top_k,
                    top_p=top_p,
                    generator=generators,
                    init_codes=init,
                    compile=compile,
                )[:n]
            )
        codes = torch.cat(codes)
        images = self.decode(codes)
        if num_candidates == 1:
            return PipelineOutput(images, codes.cpu(), flat, seeds)
        pmi = torch.tensor([s["pmi"] for s in self._score(images, flat, batch_size, pmi=True, progress=progress)]).view(
            -1, num_candidates
        )
        best = (torch.arange(len(pmi)) * num_candidates + pmi.argmax(1)).tolist()
        return PipelineOutput(
            [images[i] for i in best],
            codes[best].cpu(),
            [flat[i] for i in best],
            [seeds[i] for i in best],
            pmi.max(1).values.tolist(),
        )

    @torch.inference_mode()
    def decode(self, codes: torch.Tensor) -> list[Image.Image]:
        """Image codes (B, N) -> PIL images through the image tokenizer's decoder.

        One image at a time: a batched convolution may round an image's last bits differently with other
        images beside it, and then an image's own seed would not redraw it pixel for pixel."""
        return self.to_pil(torch.cat([self.image_tokenizer.decode(c) for c in codes.to(self.device).split(1)]))

    @torch.inference_mode()
    def reconstruct(self, images) -> list[Image.Image]:
        """Images after a round trip through the image tokenizer (encode -> decode)."""
        return self.to_pil(self.image_tokenizer.reconstruct(self._pixels(images)))

    # ----------------------------------------------------------- likelihood
    @torch.inference_mode()
    def score(self, images, captions: Sequence[str] | str, batch_size: int = 64, pmi: bool = True) -> list[dict]:
        """How likely each image is given its caption, and how much the caption explains it.

        For each (image, caption) pair: `log_prob` = log p(image codes | caption) in nats,
        `bits_per_dim` = -log2 of it divided by 3*H*W (the cost of the image under the prior
        given its tokenizer codes, a bound on the pixel likelihood), `log_prob_unconditional`
        = log p(codes | the empty caption), and `pmi` = their difference, the pointwise mutual
        information of caption and image: the log-ratio by which the caption makes this image
        more likely (the implicit classifier of classifier-free guidance). `pmi` is what
        `__call__(num_candidates=...)` ranks samples by. `pmi=False` skips the empty-caption
        pass (half the work) and leaves out those two fields.
        """
        if isinstance(images, (Image.Image, np.ndarray)):
            images = [images]
        captions = check_prompts(captions)
        if len(captions) == 1 and len(images) > 1:
            captions = captions * len(images)
        if len(captions) != len(images):
            raise UserError(f"score: {len(images)} images but {len(captions)} captions")
        self._warn_long_prompts(captions)
        return self._score(images, captions, batch_size, pmi)

    def _score(self, images, captions: list[str], batch_size: int, pmi: bool, progress: bool = False) -> list[dict]:
        """`score` for checked captions, one per image; images are brought to the device a batch at a time."""
        from tqdm.auto import tqdm

        results = []
        chunks = range(0, len(images), batch_size)
        for start in tqdm(chunks, desc="re-ranking", disable=not progress or len(chunks) < 2, leave=False):
            codes = self.image_tokenizer.encode(self._pixels(images[start : start + batch_size])).flatten(1)
            results += self._score_codes(codes, captions[start : start + batch_size], pmi)
        return results

    def _score_codes(self, codes: torch.Tensor, captions: list[str], pmi: bool) -> list[dict]:
        """`score`'s figures for image codes (b, N), one caption each, in one batched pass of the prior."""
        b, dims = len(codes), 3 * self.image_tokenizer.image_size**2
        text = self._text_tokens(captions)
        if pmi:  # the caption and the empty caption in one batch
            text, codes = torch.cat([text, self.prior.empty_text_tokens(b, self.device)]), codes.repeat(2, 1)
        nll = self.prior.image_nll(text, codes.to(self.device)).tolist()
        results = []
        for i, caption in enumerate(captions):
            result = {"caption": caption, "log_prob": -nll[i], "bits_per_dim": bits_per_dim(nll[i], dims)}
            if pmi:
                result.update(log_prob_unconditional=-nll[b + i], pmi=nll[b + i] - nll[i])
            results.append(result)
        return results

    def rank_captions(self, image, candidates: Sequence[str]) -> list[tuple[str, float]]:
        """Candidates ordered from most to least likely for `image`: (caption, log p(codes | caption))."""
        captions = check_prompts(list(candidates))
        self._warn_long_prompts(captions)
        # one image, encoded once; log p given the empty caption is the same for every candidate, so log p
        # ranks as pmi does
        codes = self.image_tokenizer.encode(self._pixels(image)[:1]).flatten(1)
        scores = []
        for start in range(0, len(captions), 64):
            chunk = captions[start : start + 64]
            scores += self._score_codes(codes.expand(len(chunk), -1), chunk, pmi=False)
        return sorted(((s["caption"], s["log_prob"]) for s in scores), key=lambda pair: -pair[1])
