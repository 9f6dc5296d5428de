"""Sampling from the prior: the KV cache changes nothing, guidance, priming, seeds, filtering."""

from __future__ import annotations

import math

import pytest
import torch

from minidalle.prior import Prior, PriorConfig
from minidalle.prior.sampling import _sample, filter_logits, sample_codes

V, L, K, G = 50, 8, 32, 4
N = G * G


@pytest.fixture(scope="module")
def prior() -> Prior:
    torch.manual_seed(0)
    model = Prior(
        PriorConfig(text_vocab_size=V, text_len=L, num_image_codes=K, image_grid=G, dim=32, layers=2, heads=2)
    ).eval()
    with torch.no_grad():  # sharper, caption-dependent distributions than a fresh init gives
        model.image_head.weight.mul_(20)
        model.token_emb.weight.mul_(10)
    return model


@pytest.fixture(scope="module")
def text(prior) -> torch.Tensor:
    ids = torch.randint(1, V, (3, L), generator=torch.Generator().manual_seed(1))
    ids[0, 4:] = 0
    return prior.text_tokens(ids, pad_id=0)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def empty_caption(batch: int) -> torch.Tensor:
    return (V + torch.arange(L)).expand(batch, -1)


@torch.no_grad()
def manual_sample(prior, text, guidance_scale=1.0, temperature=1.0, generator=None, init=None) -> torch.Tensor:
    """The reference: one full forward pass per code, guidance mixed by hand, no cache."""
    b = text.shape[0]
    codes = torch.zeros(b, N, dtype=torch.long)
    start = 0 if init is None else init.shape[1]
    if init is not None:
        codes[:, :start] = init
    for j in range(start, N):
        logits = prior(text, codes, compute_loss=False).image_logits[:, j]
        if guidance_scale != 1.0:
            uncond = prior(empty_caption(b), codes, compute_loss=False).image_logits[:, j]
            logits = uncond + guidance_scale * (logits - uncond)
        if temperature == 0:
            codes[:, j] = logits.argmax(-1)
        else:
            codes[:, j] = torch.multinomial((logits / temperature).softmax(-1), 1, generator=generator).squeeze(-1)
    return codes


# --- the cache -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        dict(guidance_scale=1.0),
        dict(guidance_scale=3.0),
        dict(guidance_scale=1.0, top_k=5),
        dict(guidance_scale=3.0, top_k=5),
        dict(guidance_scale=1.0, top_p=0.8),
        dict(guidance_scale=3.0, top_p=0.8, temperature=0.7),
    ],
)
def test_cached_and_uncached_sampling_give_identical_codes(prior, text, options):
    cached = sample_codes(prior, text, generator=gen(0), **options)
    uncached = sample_codes(prior, text, generator=gen(0), use_cache=False, **options)
    assert cached.shape == (3, N)
    assert torch.equal(cached, uncached)


def test_cached_and_uncached_agree_with_primed_codes(prior, text):
    init = torch.randint(0, K, (3, 5), generator=gen(7))
    for scale in (1.0, 3.0):
        cached = sample_codes(prior, text, guidance_scale=scale, generator=gen(2), init_codes=init)
        uncached = sample_codes(prior, text, guidance_scale=scale, generator=gen(2), init_codes=init, use_cache=False)
        assert torch.equal(cached, uncached)


def test_compiled_decode_step_matches_eager(prior, text, cxx_compiler):
    """compile=True: the compiled step gives the eager step's logits, so the same codes."""
    from minidalle.prior.sampling import compiled_decode_step, decode_step

    init = torch.randint(0, K, (3, 5), generator=gen(4))
    eager = sample_codes(prior, text, guidance_scale=3.0, temperature=0.0, init_codes=init)
    compiled = sample_codes(prior, text, guidance_scale=3.0, temperature=0.0, init_codes=init, compile=True)
    assert torch.equal(compiled, eager)
    # one step on its own, from the same cache state: logits agree to float rounding
    torch.manual_seed(5)
    shape = (6, 2, L + N, 16)
    caches = [(torch.randn(shape), torch.randn(shape)) for _ in prior.blocks]
    copies = [(k.clone(), v.clone()) for k, v in caches]
    codes, pos = torch.randint(0, K, (6, 1)), torch.tensor(L + 7)
    before = caches[0][0][:, :, L + 7].clone()
    with torch.inference_mode():
        want = decode_step(prior, codes, pos, caches)
        got = compiled_decode_step()(prior, codes, pos, copies)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    for (k, v), (k2, v2) in zip(caches, copies):  # the step wrote the same key/value into the cache
        torch.testing.assert_close(k2, k, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(v2, v, atol=1e-5, rtol=1e-5)
    assert not torch.equal(caches[0][0][:, :, L + 7], before)  # the new key was written at `pos`


def test_the_compiled_step_notices_weights_changed_in_place(text, cxx_compiler, caplog):
    """The compiled graph freezes the weights: after an in-place change it is compiled again, never stale."""
    torch.manual_seed(3)
    model = Prior(
        PriorConfig(text_vocab_size=V, text_len=L, num_image_codes=K, image_grid=G, dim=16, layers=1, heads=2)
    )
    model.eval()
    with torch.no_grad():
        model.image_head.weight.mul_(20)
    first = sample_codes(model, text, temperature=0.0, compile=True)
    assert torch.equal(first, sample_codes(model, text, temperature=0.0))
    with torch.no_grad():  # as an optimizer step or load_state_dict would
        model.image_head.weight.copy_(torch.randn_like(model.image_head.weight) * 20)
    eager = sample_codes(model, text, temperature=0.0)
    assert not torch.equal(eager, first)  # the change matters
    assert torch.equal(sample_codes(model, text, temperature=0.0, compile=True), eager)
    assert "weights changed since its sampling step was compiled" in caplog.text


# --- guidance --------------------------------------------------------------------------------


def test_guidance_scale_one_is_plain_conditional_sampling(prior, text):
    expected = manual_sample(prior, text, generator=gen(3))
    assert torch.equal(sample_codes(prior, text, guidance_scale=1.0, generator=gen(3)), expected)


def test_guidance_scale_one_runs_no_doubled_batch(prior, text, monkeypatch):
    batches = []
    original = Prior.embed_prefix

    def recording(self, tokens):
        batches.append(tokens.shape[0])
        return original(self, tokens)

    monkeypatch.setattr(Prior, "embed_prefix", recording)
    sample_codes(prior, text, guidance_scale=1.0, generator=gen(0))
    assert batches == [3]
    batches.clear()
    sample_codes(prior, text, guidance_scale=2.0, generator=gen(0))
    assert batches == [6]  # caption + empty caption in one batch


@pytest.mark.parametrize("scale", [0.0, 3.0])
def test_guidance_mixes_conditional_and_unconditional_logits(prior, text, scale):
    for temperature, seed in ((0.0, 0), (1.0, 4)):
        expected = manual_sample(prior, text, guidance_scale=scale, temperature=temperature, generator=gen(seed))
        got = sample_codes(prior, text, guidance_scale=scale, temperature=temperature, generator=gen(seed))
        assert torch.equal(got, expected)
    # scale 0 is unconditional sampling: the caption is ignored
    if scale == 0.0:
        uncond = sample_codes(prior, empty_caption(3), guidance_scale=1.0, temperature=0.0)
        assert torch.equal(sample_codes(prior, text, guidance_scale=0.0, temperature=0.0), uncond)


def test_guidance_changes_the_samples(prior, text):
    plain = sample_codes(prior, text, guidance_scale=1.0, generator=gen(0))
    guided = sample_codes(prior, text, guidance_scale=3.0, generator=gen(0))
    assert not torch.equal(plain, guided)


# --- priming ---------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 7, N - 1, N])
def test_primed_codes_are_kept_exactly(prior, text, n):
    init = torch.randint(0, K, (3, n), generator=gen(5))
    for scale in (1.0, 3.0):
        codes = sample_codes(prior, text, guidance_scale=scale, generator=gen(1), init_codes=init)
        assert codes.shape == (3, N)
        assert torch.equal(codes[:, :n], init)


def test_primed_codes_condition_what_follows(prior, text):
    init = torch.randint(0, K, (3, 6), generator=gen(6))
    assert torch.equal(
        sample_codes(prior, text, temperature=0.0, init_codes=init),
        manual_sample(prior, text, temperature=0.0, init=init),
    )
    # priming with the start of a greedy sample continues it exactly
    greedy = sample_codes(prior, text, temperature=0.0)
    assert torch.equal(sample_codes(prior, text, temperature=0.0, init_codes=greedy[:, :9]), greedy)
    # an empty prime is no prime
    assert torch.equal(sample_codes(prior, text, temperature=0.0, init_codes=greedy[:, :0]), greedy)


# --- seeds, temperature, range ----------------------------------------------------------------


def test_the_same_seed_reproduces_and_different_seeds_differ(prior, text):
    a = sample_codes(prior, text, guidance_scale=3.0, generator=gen(11))
    b = sample_codes(prior, text, guidance_scale=3.0, generator=gen(11))
    c = sample_codes(prior, text, guidance_scale=3.0, generator=gen(12))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_temperature_zero_is_greedy_argmax(prior, text):
    greedy = sample_codes(prior, text, temperature=0.0, generator=gen(0))
    assert torch.equal(greedy, sample_codes(prior, text, temperature=0.0, generator=gen(99)))  # no randomness
    assert torch.equal(greedy, manual_sample(prior, text, temperature=0.0))
    assert torch.equal(greedy, sample_codes(prior, text, temperature=0.0, use_cache=False))
    assert torch.equal(greedy, sample_codes(prior, text, top_k=1, generator=gen(5)))  # top_k = 1 is greedy too


def test_samples_lie_in_the_codebook(prior, text):
    codes = sample_codes(prior, text.repeat(4, 1), temperature=5.0, guidance_scale=2.0, generator=gen(0))
    assert codes.dtype == torch.long
    assert codes.min() >= 0 and codes.max() < K
    assert len(codes.unique()) > K // 2  # a hot temperature visits most of the codebook


# --- filter_logits ---------------------------------------------------------------------------

PROBS = torch.tensor([0.15, 0.05, 0.5, 0.1, 0.2])  # sorted: 0.5 (2), 0.2 (4), 0.15 (0), 0.1 (3), 0.05 (1)


def kept(logits: torch.Tensor) -> list[int]:
    return torch.isfinite(logits).nonzero().flatten().tolist()


def test_top_k_keeps_exactly_the_k_largest():
    logits = PROBS.log()
    assert kept(filter_logits(logits, top_k=1)) == [2]
    assert kept(filter_logits(logits, top_k=2)) == [2, 4]
    assert kept(filter_logits(logits, top_k=3)) == [0, 2, 4]
    assert torch.equal(filter_logits(logits, top_k=0), logits)  # 0: off
    assert torch.equal(filter_logits(logits, top_k=5), logits)
    assert torch.equal(filter_logits(logits, top_k=9), logits)
    out = filter_logits(logits, top_k=2)
    assert torch.equal(out[[2, 4]], logits[[2, 4]])  # kept logits are unchanged


@pytest.mark.parametrize(
    "top_p, expected",
    [(0.3, [2]), (0.6, [2, 4]), (0.69, [2, 4]), (0.8, [0, 2, 4]), (0.9, [0, 2, 3, 4]), (0.99, [0, 1, 2, 3, 4])],
)
def test_top_p_keeps_the_smallest_nucleus_reaching_p(top_p, expected):
    assert kept(filter_logits(PROBS.log(), top_p=top_p)) == expected


def test_top_k_and_top_p_together_and_per_row():
    logits = torch.stack([PROBS.log(), PROBS.flip(0).log()])  # (2, 5): the second row is reversed
    out = filter_logits(logits, top_k=3, top_p=0.6)
    assert kept(out[0]) == [2, 4]
    assert kept(out[1]) == [0, 2]  # positions 4 and 0 of the first row, reversed
    # top-p after top-k renormalises over the k survivors: 0.5 / 0.85 > 0.55
    assert kept(filter_logits(PROBS.log(), top_k=3, top_p=0.55)) == [2]
    assert kept(filter_logits(PROBS.log(), top_k=3, top_p=0.6)) == [2, 4]
    # the survivors form a distribution over the nucleus
    probs = filter_logits(PROBS.log(), top_p=0.8).softmax(-1)
    assert probs.sum().item() == pytest.approx(1.0)
    assert probs[2].item() == pytest.approx(0.5 / 0.85)
    assert math.isclose(probs[[1, 3]].sum().item(), 0.0)


@pytest.mark.parametrize(
    "top_k, top_p, temperature", [(4, 1.0, 1.0), (4, 0.7, 0.5), (0, 0.8, 1.0), (0, 1.0, 2.0), (12, 1.0, 1.0)]
)
def test_sampled_frequencies_follow_the_filtered_distribution(top_k, top_p, temperature):
    """The sampler (which draws among the top-k candidates only) has the law of softmax(filter_logits(logits / T))."""
    logits = torch.tensor([[0.3, 2.0, -1.0, 1.5, 0.9, 1.2, -0.2, 0.0, 1.9, -3.0]])
    n = 40_000
    draws = _sample(logits.expand(n, -1), temperature, top_k, top_p, gen(0))
    freq = torch.bincount(draws, minlength=10).double() / n
    want = filter_logits(logits / temperature, top_k, top_p).softmax(-1)[0].double()
    assert torch.all(freq[want == 0] == 0)  # nothing outside the filter
    torch.testing.assert_close(freq, want, atol=0.01, rtol=0)


def test_a_negative_caption_guides_away_from_it(prior, text):
    """logits + s (cond - neg): away from the empty caption it is classifier-free guidance of g + s; away from
    the prompt itself, or at scale 0, nothing changes; away from another caption, its likelihood falls."""
    empty = prior.empty_text_tokens(len(text), text.device)

    def greedy(guidance=2.0, negatives=(), scales=()):
        return sample_codes(
            prior,
            text,
            guidance_scale=guidance,
            temperature=0.0,
            negative_text_tokens=negatives,
            negative_scales=scales,
        )

    plain = greedy()
    assert torch.equal(greedy(negatives=[text], scales=[3.0]), plain)
    assert torch.equal(greedy(negatives=[empty], scales=[0.0]), plain)
    stronger = greedy(guidance=5.0)
    assert not torch.equal(stronger, plain)  # the guidance scale matters for these captions
    assert torch.equal(greedy(negatives=[empty], scales=[3.0]), stronger)
    assert torch.equal(greedy(guidance=1.0, negatives=[empty], scales=[1.0]), greedy(guidance=2.0))  # no CFG branch
    # sampled with a generator per row, two negatives: each row's codes still depend on its own generator only
    other = prior.text_tokens(torch.randint(1, V, (3, L), generator=gen(7)), pad_id=0)
    kwargs = dict(guidance_scale=2.0, temperature=1.0, negative_text_tokens=[other, empty], negative_scales=[1.0, 0.5])
    rows = sample_codes(prior, text, generator=[gen(s) for s in (1, 2, 3)], **kwargs)
    alone = sample_codes(
        prior, text[1:2], generator=[gen(2)], **{**kwargs, "negative_text_tokens": [other[1:2], empty[1:2]]}
    )
    assert torch.equal(alone[0], rows[1])
    with torch.no_grad():
        away = greedy(negatives=[other], scales=[4.0])
        assert prior.image_nll(other, away).mean() > prior.image_nll(other, plain).mean()
    with pytest.raises(ValueError, match="1 negative captions but 0 scales"):
        greedy(negatives=[other])
