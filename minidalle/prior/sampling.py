"""Next-latent sampling from the prior: the loop, top-k / top-p, temperature, guidance.

The caption (and any primed image rows) is run through the prior once
(`Prior.prefill`); then every new image code costs one position's work
(`Prior.step`): its key and value are written into a pre-allocated cache and
attention reads the cached prefix. The model owns those two passes; this
module only filters, guides and loops.

Classifier-free guidance runs the caption and the empty caption as one batch
of 2B and mixes `uncond + s * (cond - uncond)` before sampling (s = 1: off).

The per-code step (`Prior.step`) has static shapes: the cache is full-length
and a mask hides the positions not yet written, so `compile=True` turns it
into one `torch.compile` graph (inductor, weights frozen into the graph,
GEMMs autotuned). That pays where framework overhead and small-batch GEMMs
dominate (a CPU at small batches: measured 2-3x at batch 1 and 1.6-1.8x at batch 8
on the peer config, see the README's Performance), costs 20-50 s of
compilation per batch shape on first use (guidance doubles the batch; a
smaller last batch is another shape), and bakes the weights into the graph:
a new prior object is compiled afresh, and weights changed in place after a
compiled call are noticed and compiled again (`compiled_step_for`).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence

import torch

from ..errors import require_cpu_compiler
from .model import Prior

logger = logging.getLogger("minidalle")


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Keep the `top_k` largest logits and the smallest set with probability >= `top_p`; others -> -inf."""
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        remove = cumulative - sorted_logits.softmax(-1) >= top_p  # keep the token that crosses top_p
        logits = logits.masked_fill(remove.scatter(-1, order, remove), float("-inf"))
    return logits


def _draw(probs: torch.Tensor, generator) -> torch.Tensor:
    """One index per row of `probs` (B, n) -> (B, 1): from one generator, or each row from its own (a list), so
    that a row's draws do not depend on the other rows of its batch."""
    if isinstance(generator, (list, tuple)):
        return torch.cat([torch.multinomial(row[None], 1, generator=g) for row, g in zip(probs, generator)])
    return torch.multinomial(probs, 1, generator=generator)


def _sample(logits: torch.Tensor, temperature: float, top_k: int, top_p: float, generator) -> torch.Tensor:
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k and top_k < logits.shape[-1]:
        # draw among the k candidates only (top-p applied within them): the distribution of
        # filtering all K logits (up to ties at the k-th value: topk keeps exactly k, filter_logits
        # all tied ones), with the softmax and the sampler's noise over k values instead of K
        values, indices = torch.topk(logits, top_k, dim=-1)
        choice = _draw(filter_logits(values, 0, top_p).softmax(-1), generator)
        return indices.gather(-1, choice).squeeze(-1)
    return _draw(filter_logits(logits, 0, top_p).softmax(-1), generator).squeeze(-1)


def decode_step(prior: Prior, codes: torch.Tensor, pos: torch.Tensor, cache) -> torch.Tensor:
    """`prior.step` as a plain function of the prior: what `compiled_decode_step` compiles."""
    return prior.step(codes, pos, cache)


@functools.cache
def compiled_decode_step():
    """`decode_step` through `torch.compile` (made once; dynamo re-specialises per prior and batch shape)."""
    import torch._inductor.config as inductor_config

    graph = torch.compile(decode_step, dynamic=False)

    def run(*args):
        # set around the call, not through `options=`: freezing is read outside that patch
        # (measured: with `options` the weights were not frozen and the step was ~1.6x slower)
        with inductor_config.patch(
            freezing=True, max_autotune=True, autotune_num_choices_displayed=0, max_autotune_report_choices_stats=False
        ):  # no autotuning tables on stderr
            return graph(*args)

    return run


# id(prior) -> the weights (storage and in-place version of each parameter) its compiled graphs froze
_FROZEN_WEIGHTS: dict[int, tuple] = {}


def compiled_step_for(prior: Prior):
    """The compiled step, for `prior`'s current weights.

    The compiled graph holds the weights it was built with (freezing). When the prior's parameters were
    changed in place since (an optimizer step, `load_state_dict`, `p.mul_`), every compiled graph is
    dropped (`torch._dynamo.reset()`) and the step is compiled again, with a log line, so that sampling
    never runs stale weights."""
    weights = tuple((p.data_ptr(), p._version) for p in prior.parameters())
    if _FROZEN_WEIGHTS.get(id(prior), weights) != weights:
        logger.warning("the prior's weights changed since its sampling step was compiled: compiling it again")
        torch._dynamo.reset()
        compiled_decode_step.cache_clear()
        _FROZEN_WEIGHTS.clear()
    _FROZEN_WEIGHTS[id(prior)] = weights
    return compiled_decode_step()


@torch.inference_mode()
def sample_codes(
    prior: Prior,
    text_tokens: torch.Tensor,
    *,
    guidance_scale: float = 1.0,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | list[torch.Generator] | None = None,
    init_codes: torch.Tensor | None = None,
    use_cache: bool = True,
    compile: bool = False,
    negative_text_tokens: Sequence[torch.Tensor] = (),
    negative_scales: Sequence[float] = (),
) -> torch.Tensor:
    """Sample image codes (B, N) given joint text tokens (B, L) (see `Prior.text_tokens`).

    Guidance: the logits are `uncond + guidance_scale * (cond - uncond)` (classifier-free, against the empty
    caption), plus `scale * (cond - neg)` for each (B, L) tensor of `negative_text_tokens` and its scale in
    `negative_scales`: guidance away from other captions (composable guidance with negatives, Liu et al. 2022),
    e.g. the caption with one of its parts left out, to stress that part. Each negative is one more branch in
    the batch.

    `generator` is one generator for the batch, or a list of one per row: then each row's codes depend on
    its own generator only, whatever else is in the batch (`MiniDallePipeline` gives each image its seed).
    `init_codes` (B, n) primes the first n codes (image completion); they are kept as given.
    `use_cache=False` re-runs the whole sequence for every code (slow; for checking the cache).
    `compile=True` runs each cached step as one compiled graph (see the module docstring).
    """
    cfg = prior.config
    b, n_total = text_tokens.shape[0], cfg.num_image_tokens
    if len(negative_text_tokens) != len(negative_scales):
        raise ValueError(f"{len(negative_text_tokens)} negative captions but {len(negative_scales)} scales")
    guided = guidance_scale != 1.0
    if guided:
        text_tokens = torch.cat([text_tokens, prior.empty_text_tokens(b, text_tokens.device)])
    if negative_text_tokens:
        text_tokens = torch.cat([text_tokens, *(t.to(text_tokens.device) for t in negative_text_tokens)])
    branches = text_tokens.shape[0] // b
    bb = text_tokens.shape[0]
    codes = torch.zeros(b, n_total, dtype=torch.long, device=text_tokens.device)
    start = 0
    if init_codes is not None and init_codes.shape[1]:
        start = init_codes.shape[1]
        codes[:, :start] = init_codes
    if start >= n_total:  # every code primed (keep_rows = grid): nothing to sample, and no room in the cache
        return codes
    cache = prior.new_cache(bb, text_tokens.device) if use_cache else None
    if compile and use_cache and text_tokens.device.type == "cpu":
        require_cpu_compiler("compile=True (sample.py --compile)")
    step = compiled_step_for(prior) if compile and use_cache else decode_step

    def every_branch(c: torch.Tensor) -> torch.Tensor:  # the conditional, unconditional and negative rows share codes
        return c.repeat(branches, 1) if branches > 1 else c

    logits = prior.prefill(text_tokens, every_branch(codes[:, :start]), cache)  # (bb, K): the prompt in one pass
    pos = torch.tensor(text_tokens.shape[1] + 1 + start, device=text_tokens.device)
    for j in range(start, n_total):
        if branches > 1:
            cond, first_negative = logits[:b], (2 if guided else 1) * b
            if guided:
                uncond = logits[b : 2 * b]
                combined = uncond + guidance_scale * (cond - uncond)
            else:
                combined = cond
            for i, scale in enumerate(negative_scales):
                negative = logits[first_negative + i * b : first_negative + (i + 1) * b]
                combined = combined + scale * (cond - negative)
            logits = combined
        codes[:, j] = _sample(logits, temperature, top_k, top_p, generator)
        if j == n_total - 1:
            break
        if use_cache:
            logits = step(prior, every_branch(codes[:, j : j + 1]), pos, cache)
            pos += 1
        else:
            logits = prior.prefill(text_tokens, every_branch(codes[:, : j + 1]))
    return codes
