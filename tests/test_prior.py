"""The prior: causal over text ++ image codes, masked logits, weighted loss, pads, dropout, persistence."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from minidalle.errors import UserError
from minidalle.image_tokenizers import DiscreteVAE, DVAEConfig
from minidalle.prior import Prior, PriorConfig

V, L, K, G = 50, 8, 32, 4
N = G * G


def tiny_config(**overrides) -> PriorConfig:
    values = dict(text_vocab_size=V, text_len=L, num_image_codes=K, image_grid=G, dim=32, layers=2, heads=2)
    return PriorConfig(**{**values, **overrides})


def make_prior(seed: int = 0, **overrides) -> Prior:
    torch.manual_seed(seed)
    return Prior(tiny_config(**overrides)).eval()


def random_inputs(prior: Prior, batch: int = 3, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Joint text tokens (some captions shorter than L, padded per position) and image codes."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, V, (batch, L), generator=g)
    ids[0, 5:] = 0  # pad id 0: a 5-token caption
    ids[1, 2:] = 0
    return prior.text_tokens(ids, pad_id=0), torch.randint(0, K, (batch, N), generator=g)


# --- causality -------------------------------------------------------------------------------


@pytest.mark.parametrize("j", [0, 5, N - 2])
def test_a_future_image_code_never_changes_earlier_logits(j):
    prior = make_prior()
    text, codes = random_inputs(prior)
    changed = codes.clone()
    changed[:, j] = (codes[:, j] + 1) % K
    with torch.no_grad():
        a, b = prior(text, codes), prior(text, changed)
    # image_logits[:, i] predicts code i from codes < i: code j is read by positions j+1.. only
    assert torch.equal(a.image_logits[:, : j + 1], b.image_logits[:, : j + 1])
    assert torch.equal(a.text_logits, b.text_logits)
    assert not torch.allclose(a.image_logits[:, j + 1 :], b.image_logits[:, j + 1 :])
    assert not torch.allclose(a.image_logits[:, j + 1], b.image_logits[:, j + 1])  # the very next one too


def test_the_last_image_code_is_only_a_target():
    prior = make_prior()
    text, codes = random_inputs(prior)
    changed = codes.clone()
    changed[:, -1] = (codes[:, -1] + 1) % K
    with torch.no_grad():
        a, b = prior(text, codes), prior(text, changed)
    assert torch.equal(a.image_logits, b.image_logits)
    assert a.loss != b.loss


def test_a_text_token_changes_the_image_logits_and_later_text_logits_only():
    prior = make_prior()
    text, codes = random_inputs(prior)
    k = 3
    changed = text.clone()
    changed[:, k] = (text[:, k] % (V - 1)) + 1  # another real text id
    assert not torch.equal(changed[:, k], text[:, k])
    with torch.no_grad():
        a, b = prior(text, codes), prior(changed, codes)
    assert not torch.allclose(a.image_logits, b.image_logits)
    for i in range(N):  # every image position reads the caption
        assert not torch.allclose(a.image_logits[:, i], b.image_logits[:, i])
    # text_logits[:, i] predicts token i from <bos> + tokens < i
    assert torch.equal(a.text_logits[:, : k + 1], b.text_logits[:, : k + 1])
    assert not torch.allclose(a.text_logits[:, k + 1 :], b.text_logits[:, k + 1 :])


# --- logits and loss -------------------------------------------------------------------------


def test_joint_logits_put_zero_probability_outside_each_positions_vocabulary():
    prior = make_prior()
    cfg = prior.config
    text, codes = random_inputs(prior, batch=2)
    with torch.no_grad():
        out = prior(text, codes)
    logits = out.logits
    assert logits.shape == (2, L + N, cfg.vocab_size)
    assert out.text_logits.shape == (2, L, V + L)
    assert out.image_logits.shape == (2, N, K)
    text_part, image_part = logits[:, :L], logits[:, L:]
    # text positions: text ids and per-position pads only; no <bos>, no image id
    assert torch.isneginf(text_part[..., cfg.bos_id :]).all()
    assert torch.isfinite(text_part[..., : cfg.bos_id]).all()
    assert torch.equal(text_part[..., : cfg.bos_id], out.text_logits)
    # image positions: image ids only
    assert torch.isneginf(image_part[..., : cfg.image_offset]).all()
    assert torch.isfinite(image_part[..., cfg.image_offset :]).all()
    assert torch.equal(image_part[..., cfg.image_offset :], out.image_logits)
    probs = logits.softmax(-1)
    assert (probs[:, :L, cfg.image_offset :] == 0).all()
    assert (probs[:, L:, : cfg.image_offset] == 0).all()
    assert torch.allclose(probs.sum(-1), torch.ones(2, L + N))


@pytest.mark.parametrize("w", [7.0, 1.0])
def test_loss_is_the_weighted_mean_of_text_and_image_cross_entropy(w):
    prior = make_prior(loss_img_weight=w)
    text, codes = random_inputs(prior)
    with torch.no_grad():
        out = prior(text, codes)
    loss_text = F.cross_entropy(out.text_logits.reshape(-1, V + L), text.reshape(-1))
    loss_image = F.cross_entropy(out.image_logits.reshape(-1, K), codes.reshape(-1))
    assert out.loss_text.item() == pytest.approx(loss_text.item(), rel=1e-6)
    assert out.loss_image.item() == pytest.approx(loss_image.item(), rel=1e-6)
    assert out.loss.item() == pytest.approx(((loss_text + w * loss_image) / (1 + w)).item(), rel=1e-6)
    # the same from the joint-vocabulary view (-inf outside the part contributes nothing)
    joint_targets = torch.cat([text, codes + prior.config.image_offset], dim=1)
    per_token = F.cross_entropy(
        out.logits.reshape(-1, prior.config.vocab_size), joint_targets.reshape(-1), reduction="none"
    ).view(3, -1)
    by_hand = (per_token[:, :L].mean() + w * per_token[:, L:].mean()) / (1 + w)
    assert out.loss.item() == pytest.approx(by_hand.item(), rel=1e-6)


def test_no_loss_when_not_asked():
    prior = make_prior()
    text, codes = random_inputs(prior)
    out = prior(text, codes, compute_loss=False)
    assert out.loss is None and out.loss_text is None and out.loss_image is None
    assert out.image_logits.shape == (3, N, K)


def test_image_nll_is_the_negative_sum_of_gathered_log_softmax():
    prior = make_prior()
    text, codes = random_inputs(prior)
    with torch.no_grad():
        logits = prior(text, codes).image_logits
    logp = torch.log_softmax(logits, -1)
    expected = -torch.stack([sum(logp[b, i, codes[b, i]] for i in range(N)) for b in range(3)])
    nll = prior.image_nll(text, codes)
    assert nll.shape == (3,)
    assert torch.allclose(nll, expected, atol=1e-5)
    # and its mean per token is the image loss
    assert (nll.mean() / N).item() == pytest.approx(prior(text, codes).loss_image.item(), rel=1e-5)


# --- per-position pads and caption dropout ---------------------------------------------------


def test_pad_ids_become_a_distinct_pad_token_per_position():
    prior = make_prior()
    ids = torch.tensor([[7, 3, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 0], [1, 2, 3, 4, 5, 6, 7, 49]])
    tokens = prior.text_tokens(ids, pad_id=0)
    assert tokens[0].tolist() == [7, 3, V + 2, V + 3, V + 4, V + 5, V + 6, V + 7]
    assert tokens[1].tolist() == [V + i for i in range(L)]
    assert len(set(tokens[1].tolist())) == L
    assert torch.equal(tokens[2], ids[2])  # no pads: unchanged
    # the pad id is whatever the text tokenizer says, not always 0
    assert prior.text_tokens(torch.tensor([[5, 9, 9]]), pad_id=9).tolist() == [[5, V + 1, V + 2]]
    assert (tokens < prior.config.bos_id).all()


def test_drop_captions_replaces_about_p_of_the_rows_by_the_empty_caption():
    prior = make_prior()
    rows = 20_000
    text = torch.randint(0, V, (rows, L), generator=torch.Generator().manual_seed(0))
    empty = torch.arange(V, V + L)
    out = prior.drop_captions(text, 0.15, generator=torch.Generator().manual_seed(1))
    dropped = (out != text).any(dim=1)
    assert abs(dropped.float().mean().item() - 0.15) < 0.01
    assert (out[dropped] == empty).all()  # a dropped row is exactly the empty caption
    assert torch.equal(out[~dropped], text[~dropped])  # the others are untouched
    empty_caption = prior.text_tokens(torch.zeros(1, L, dtype=torch.long), pad_id=0)
    assert torch.equal(empty_caption[0], empty)
    assert torch.equal(prior.drop_captions(text, 0.0), text)
    assert (prior.drop_captions(text[:10], 1.0) == empty).all()


def test_caption_dropout_applies_only_in_train_mode():
    prior = make_prior(caption_dropout=1.0)  # every caption dropped while training
    text, codes = random_inputs(prior)
    empty = prior.text_tokens(torch.zeros_like(text), pad_id=0)
    with torch.no_grad():
        prior.eval()
        eval_out = prior(text, codes)
        empty_out = prior(empty, codes)
        prior.train()
        train_out = prior(text, codes)
    assert not torch.allclose(eval_out.image_logits, empty_out.image_logits)
    assert torch.allclose(train_out.image_logits, empty_out.image_logits)  # trained on the empty caption
    assert train_out.loss_text.item() == pytest.approx(empty_out.loss_text.item(), rel=1e-6)  # targets are the pads too
    no_dropout = make_prior(caption_dropout=0.0).train()
    with torch.no_grad():
        assert torch.allclose(no_dropout(text, codes).image_logits, make_prior()(text, codes).image_logits)


def test_dropout_acts_only_while_training():
    text, codes = random_inputs(make_prior())
    plain, dropped = make_prior(seed=6, caption_dropout=0.0), make_prior(seed=6, caption_dropout=0.0, dropout=0.5)
    with torch.no_grad():
        assert torch.equal(plain(text, codes).image_logits, dropped(text, codes).image_logits)  # eval: no dropout
        dropped.train()
        torch.manual_seed(0)
        a = dropped(text, codes).image_logits
        b = dropped(text, codes).image_logits
        torch.manual_seed(0)
        c = dropped(text, codes).image_logits
    assert not torch.allclose(a, b)  # a fresh mask each pass
    assert torch.equal(a, c)  # drawn from the global RNG (a resumed run restores it)
    assert not torch.allclose(a, plain(text, codes).image_logits)
    # every residual branch and the embeddings drop: with p = 1 the blocks add nothing to an all-zero input
    gone = make_prior(seed=6, caption_dropout=0.0, dropout=1.0).train()
    with torch.no_grad():
        x = gone.ln_f(torch.zeros(1, 1, gone.config.dim))
        out = gone(text, codes)
    assert torch.allclose(out.text_logits[:, :1], gone.text_head(x).expand_as(out.text_logits[:, :1]), atol=1e-6)
    # the config is the one switch (a fine-tune sets it): at 0 every block trains without dropout
    dropped.config.dropout = 0.0
    with torch.no_grad():
        assert torch.equal(dropped(text, codes).image_logits, plain.train()(text, codes).image_logits)


# --- persistence -----------------------------------------------------------------------------


def test_save_and_load_give_identical_logits_and_hash(tmp_path):
    prior = make_prior(seed=3, image_tokenizer_hash="abc123", loss_img_weight=3.0)
    text, codes = random_inputs(prior)
    folder = prior.save_pretrained(tmp_path / "prior")
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    loaded = Prior.from_pretrained(folder)
    assert not loaded.training
    assert loaded.config == prior.config
    assert loaded.content_hash() == prior.content_hash()
    with torch.no_grad():
        a, b = prior(text, codes), loaded(text, codes)
    assert torch.equal(a.text_logits, b.text_logits)
    assert torch.equal(a.image_logits, b.image_logits)
    assert make_prior(seed=4).content_hash() != prior.content_hash()  # other weights, other hash


def test_from_pretrained_on_an_image_tokenizer_folder_is_a_user_error(tmp_path):
    torch.manual_seed(0)
    dvae = DiscreteVAE(DVAEConfig(image_size=16, num_codes=K, codebook_dim=8, widths=[8, 8], res_blocks=0))
    folder = dvae.save_pretrained(tmp_path / "image_tokenizer")
    with pytest.raises(UserError, match="image tokenizer"):
        Prior.from_pretrained(folder)
    with pytest.raises(UserError, match="no such folder"):
        Prior.from_pretrained(tmp_path / "missing")


def test_weights_that_do_not_match_the_config_are_a_user_error(tmp_path):
    folder = make_prior().save_pretrained(tmp_path / "prior")
    other = make_prior(layers=3).save_pretrained(tmp_path / "other")
    (folder / "model.safetensors").write_bytes((other / "model.safetensors").read_bytes())
    with pytest.raises(UserError, match="do not match"):
        Prior.from_pretrained(folder)


# --- gradient checkpointing, shapes, config --------------------------------------------------


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    text, codes = random_inputs(make_prior())
    results = []
    for flag in (False, True):
        prior = make_prior(seed=5, caption_dropout=0.0, gradient_checkpointing=flag).train()
        out = prior(text, codes)
        out.loss.backward()
        results.append((out.loss.detach(), {n: p.grad.clone() for n, p in prior.named_parameters()}))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert torch.allclose(loss_a, loss_b, atol=1e-6)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        assert torch.allclose(grads_a[name], grads_b[name], atol=1e-6), name
    assert grads_a["blocks.0.qkv.weight"].abs().sum() > 0


@pytest.mark.parametrize(
    "text_shape, codes_shape",
    [((2, L - 1), (2, N)), ((2, L + 1), (2, N)), ((2, L), (2, N - 1)), ((2, L), (2, N + 1))],
)
def test_bad_input_shapes_are_a_value_error(text_shape, codes_shape):
    prior = make_prior()
    with pytest.raises(ValueError, match=f"expected text \\(B, {L}\\) and codes \\(B, {N}\\)"):
        prior(torch.zeros(text_shape, dtype=torch.long), torch.zeros(codes_shape, dtype=torch.long))


def test_vocabulary_layout_and_bad_configs():
    cfg = tiny_config()
    assert cfg.seq_len == L + N
    assert cfg.bos_id == V + L
    assert cfg.image_offset == V + L + 1
    assert cfg.vocab_size == V + L + 1 + K
    with pytest.raises(UserError, match="divisible"):
        tiny_config(dim=30, heads=4)
    with pytest.raises(UserError, match="text_len"):
        tiny_config(text_len=0)
    with pytest.raises(UserError, match="unknown field"):
        PriorConfig.from_dict({**vars(cfg), "depth": 3})


# --- growing the text length (a fine-tune on longer captions) ----------------------------------------------


def test_growing_the_text_length_keeps_every_learned_row_and_copies_the_last_position():
    prior = make_prior(seed=3)
    grown = prior.with_text_len(L + 3)
    old, new = prior.state_dict(), grown.state_dict()
    c, g = prior.config, grown.config
    assert g.text_len == L + 3 and g.seq_len == c.seq_len + 3 and g.vocab_size == c.vocab_size + 3
    emb, grown_emb = old["token_emb.weight"], new["token_emb.weight"]
    assert torch.equal(grown_emb[: V + L], emb[: V + L])  # text ids and the old per-position pads
    assert torch.equal(grown_emb[V + L : V + L + 3], emb[V + L - 1].expand(3, -1))  # new pads: the last pad
    assert torch.equal(grown_emb[g.bos_id], emb[c.bos_id])
    assert torch.equal(grown_emb[g.image_offset :], emb[c.image_offset :])  # every image code, at its new id
    assert torch.equal(new["text_pos.weight"][: L + 1], old["text_pos.weight"])
    assert torch.equal(new["text_pos.weight"][L + 1 :], old["text_pos.weight"][L].expand(3, -1))
    assert torch.equal(new["text_head.weight"][: V + L], old["text_head.weight"])
    for key in old:
        if key not in ("token_emb.weight", "text_pos.weight", "text_head.weight"):
            assert torch.equal(old[key], new[key]), key
    text, codes = random_inputs(prior)
    longer = grown.text_tokens(torch.cat([torch.where(text < V, text, 0), torch.zeros(3, 3, dtype=text.dtype)], 1), 0)
    out = grown(longer, codes)
    assert out.image_logits.shape == (3, N, K) and torch.isfinite(out.loss)
    assert prior.with_text_len(L) is prior
    with pytest.raises(UserError, match=f"--text_len {L - 1}: the prior has {L} text positions"):
        prior.with_text_len(L - 1)


# --- factorised image codes (an FSQ tokenizer's digits) -------------------------------------------

LEVELS = [2, 4, 4]  # 32 codes = K


def test_factorised_logits_are_the_sum_of_each_digits_log_softmax():
    prior = make_prior(image_code_levels=LEVELS)
    text, codes = random_inputs(prior)
    with torch.no_grad():
        out = prior(text, codes, compute_loss=False)
        hidden = prior.image_head.weight  # (sum(levels), C): the digit logits are a linear map of the states
        assert hidden.shape == (sum(LEVELS), 32)
        joint = out.image_logits  # (B, N, K), normalised log-probabilities
        assert torch.allclose(joint.logsumexp(-1), torch.zeros(()), atol=1e-5)
        # the digits' marginals of the joint: code k = d0 + 2*d1 + 8*d2 (FSQ's mixed radix)
        p = joint.exp().view(*joint.shape[:2], 4, 4, 2)  # (B, N, d2, d1, d0)
        marginals = [p.sum((2, 3)), p.sum((2, 4)), p.sum((3, 4))]
        for k in (0, 1, 13, 31):
            digits = (k % 2, k // 2 % 4, k // 8)
            product = marginals[0][..., digits[0]] * marginals[1][..., digits[1]] * marginals[2][..., digits[2]]
            assert torch.allclose(joint[..., k].exp(), product, atol=1e-6)


def test_factorised_training_loss_equals_the_cross_entropy_of_the_joint_logits():
    prior = make_prior(image_code_levels=LEVELS, caption_dropout=0.0).train()
    text, codes = random_inputs(prior)
    out = prior(text, codes)
    assert out.image_logits is None  # the training loss never builds the (B, N, K) logits
    joint = prior(text, codes, compute_loss=False).image_logits
    assert torch.allclose(out.loss_image, F.cross_entropy(joint.flatten(0, 1), codes.flatten()), atol=1e-5)
    out.loss.backward()
    assert prior.digit_emb.weight.grad.abs().sum() > 0 and prior.image_head.weight.grad.abs().sum() > 0
    assert prior.token_emb.weight.shape[0] == prior.config.image_offset  # no row per code: digits embed them


def test_factorised_kv_cache_steps_agree_with_the_full_pass():
    prior = make_prior(image_code_levels=LEVELS)
    text, codes = random_inputs(prior)
    with torch.no_grad():
        full = prior(text, codes, compute_loss=False).image_logits
        cache = prior.new_cache(text.shape[0])
        logits = [prior.prefill(text, None, cache)]
        for i in range(N - 1):
            logits.append(prior.step(codes[:, i : i + 1], torch.tensor(L + 1 + i), cache))
    assert torch.allclose(torch.stack(logits, 1), full, atol=1e-5)


@pytest.mark.parametrize("levels", [[], LEVELS])
def test_a_code_absent_from_training_is_reachable_only_with_factorised_codes(levels):
    """Train on codes whose digit combination (d0=1, d1=3, d2=3: code 31) never occurs, though each of its
    digits does: a head over whole codes learns ~0 for it, the factorised head the product of its digits'."""
    prior = make_prior(image_code_levels=levels, caption_dropout=0.0).train()
    g = torch.Generator().manual_seed(0)
    text = prior.text_tokens(torch.randint(1, V, (32, L), generator=g), pad_id=0)
    optimizer = torch.optim.AdamW(prior.parameters(), lr=3e-3)
    for _ in range(100):  # fresh codes every step: the prior learns their distribution, not the sequences
        codes = torch.randint(0, K - 1, (32, N), generator=g)  # every code but 31
        optimizer.zero_grad()
        prior(text, codes).loss.backward()
        optimizer.step()
    with torch.no_grad():
        p = prior(text, codes, compute_loss=False).image_logits.softmax(-1)[..., 31].mean().item()
    if levels:  # its digits' product in the data: 15/31 * 7/31 * 7/31 = 0.025 (0.8 / K)
        assert p > 0.4 / K
    else:
        assert p < 0.1 / K


def test_factorised_priors_save_and_load_and_refuse_levels_that_do_not_make_k(tmp_path):
    prior = make_prior(image_code_levels=LEVELS)
    text, codes = random_inputs(prior)
    loaded = Prior.from_pretrained(prior.save_pretrained(tmp_path / "prior"))
    assert loaded.config.image_code_levels == LEVELS
    with torch.no_grad():
        assert torch.equal(prior(text, codes).loss, loaded(text, codes).loss)
    with pytest.raises(UserError, match="image_code_levels"):
        tiny_config(image_code_levels=[4, 4])
    with pytest.raises(UserError, match="image_code_levels"):
        tiny_config(image_code_levels=[1, 32])
