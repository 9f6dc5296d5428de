"""The image tokenizer (dVAE / VQ-VAE): shapes, gradients, losses, persistence, learning."""

from __future__ import annotations

import json
import math
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from minidalle.data.shapes import generate_scene, render_scene
from minidalle.errors import UserError
from minidalle.image_tokenizers import DiscreteVAE, DVAEConfig, tokenizer_loss
from minidalle.image_tokenizers.losses import reconstruction_loss


def tiny(**overrides) -> DiscreteVAE:
    values = dict(image_size=16, num_codes=16, codebook_dim=8, widths=[8, 16], res_blocks=1)
    values.update(overrides)
    torch.manual_seed(overrides.pop("seed", 0))
    return DiscreteVAE(DVAEConfig(**values))


def train_pass(
    model: DiscreteVAE, x: torch.Tensor, temperature: float = 1.0, kl_weight: float = 0.0
) -> SimpleNamespace:
    """A training forward pass and its objective, as the trainer computes them."""
    out = model(x, temperature=temperature)
    objective = tokenizer_loss(model, out, x, kl_weight)
    return SimpleNamespace(
        **vars(out),
        loss=objective.loss,
        recon_loss=objective.recon_loss,
        kl=objective.terms.get("kl"),
        commitment=objective.terms.get("commitment"),
        codebook=objective.terms.get("codebook"),
    )


def images(n: int = 4, size: int = 16, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g)


def first_conv(model: DiscreteVAE) -> torch.nn.Conv2d:
    conv = model.encoder.net[0]
    assert isinstance(conv, torch.nn.Conv2d) and conv.in_channels == 3
    return conv


def last_encoder_conv(model: DiscreteVAE) -> torch.nn.Conv2d:
    conv = model.encoder.net[-1]
    assert isinstance(conv, torch.nn.Conv2d)
    return conv


QUANTIZERS = [dict(quantizer="gumbel"), dict(quantizer="vq"), dict(quantizer="vq", vq_ema=True)]
QUANTIZER_IDS = ["gumbel", "vq", "vq-ema"]

# --- encode / decode -------------------------------------------------------------------


@pytest.mark.parametrize("size,widths,grid", [(16, [8, 16], 4), (32, [8, 16], 8), (32, [8], 16), (16, [8, 8, 8, 8], 1)])
@pytest.mark.parametrize("quantizer", QUANTIZERS, ids=QUANTIZER_IDS)
def test_encode_gives_int64_codes_on_the_grid(size, widths, grid, quantizer):
    model = tiny(image_size=size, widths=widths, **quantizer).eval()
    assert model.grid_size == grid == size // 2 ** len(widths)
    codes = model.encode(images(3, size))
    assert codes.dtype == torch.int64
    assert codes.shape == (3, grid, grid)
    assert int(codes.min()) >= 0 and int(codes.max()) < model.num_codes
    flat = model.get_codebook_indices(images(3, size))
    assert flat.shape == (3, grid * grid) and flat.dtype == torch.int64
    assert torch.equal(flat, codes.flatten(1))


@pytest.mark.parametrize("quantizer", QUANTIZERS, ids=QUANTIZER_IDS)
def test_encode_is_the_argmax_or_nearest_code(quantizer):
    model = tiny(**quantizer).eval()
    x = images()
    codes = model.encode(x)
    with torch.no_grad():
        h = model.encoder(x * 2 - 1)  # (B, K or D, h, w)
        if model.config.quantizer == "gumbel":
            expected = h.argmax(1)
        else:
            d = ((h.permute(0, 2, 3, 1)[..., None, :] - model.codebook.weight) ** 2).sum(-1)  # (B, h, w, K)
            expected = d.argmin(-1)
    assert torch.equal(codes, expected)


@pytest.mark.parametrize("quantizer", QUANTIZERS, ids=QUANTIZER_IDS)
def test_decode_accepts_grid_or_flat_codes_and_gives_images_in_unit_range(quantizer):
    model = tiny(**quantizer).eval()
    g, k = model.grid_size, model.num_codes
    codes = torch.randint(0, k, (5, g, g), generator=torch.Generator().manual_seed(0))
    grid = model.decode(codes)
    flat = model.decode(codes.flatten(1))
    assert grid.shape == (5, 3, 16, 16) and grid.dtype == torch.float32
    assert torch.equal(grid, flat)
    assert float(grid.min()) >= 0.0 and float(grid.max()) <= 1.0
    # the cached dtype (int16) decodes the same as int64
    assert torch.equal(model.decode(codes.to(torch.int16)), grid)
    # the image depends on the codes
    assert not torch.equal(model.decode(torch.zeros_like(codes)), model.decode(torch.full_like(codes, k - 1)))


@pytest.mark.parametrize("quantizer", QUANTIZERS, ids=QUANTIZER_IDS)
def test_encode_is_deterministic_even_in_train_mode(quantizer):
    model = tiny(**quantizer)
    x = images(6)
    model.train()
    first, second = model.encode(x), model.encode(x)
    assert torch.equal(first, second)
    model.eval()
    assert torch.equal(model.encode(x), first)
    assert torch.equal(model.get_codebook_indices(x), first.flatten(1))


def test_forward_codes_match_encode():
    model = tiny(quantizer="gumbel")
    x = images()
    torch.manual_seed(5)
    out = model(x, temperature=1.0)
    assert torch.equal(out.codes, model.encode(x))  # the noise affects z, never the reported codes


@pytest.mark.parametrize(
    "shape", [(2, 3, 8, 8), (2, 3, 16, 8), (2, 1, 16, 16), (2, 4, 16, 16), (3, 16, 16), (2, 3, 32, 32)]
)
def test_wrong_image_shapes_raise_value_error(shape):
    model = tiny()
    with pytest.raises(ValueError, match=r"\(B, 3, 16, 16\)"):
        model.encode(torch.rand(*shape))
    with pytest.raises(ValueError):
        model(torch.rand(*shape))


def test_bad_codes_raise_value_error():
    model = tiny().eval()
    g, k = model.grid_size, model.num_codes
    good = torch.zeros(2, g, g, dtype=torch.long)
    for bad in (good + k, good - 1, torch.full((2, g * g), k)):
        with pytest.raises(ValueError, match=rf"\[0, {k}\)"):
            model.decode(bad)
    for shape in ((2, g * g + 1), (2, 5), (2, g, g + 1), (2, g + 1, g + 1), (g * g,), (1, 2, g, g)):
        with pytest.raises(ValueError, match="expected codes of shape"):
            model.decode(torch.zeros(*shape, dtype=torch.long))
    with pytest.raises(ValueError, match="integers"):
        model.decode(good.float())


# --- gradients -------------------------------------------------------------------------


@pytest.mark.parametrize("straight_through", [False, True], ids=["soft", "straight-through"])
def test_gumbel_gradients_reach_encoder_and_codebook(straight_through):
    model = tiny(quantizer="gumbel", straight_through=straight_through)
    torch.manual_seed(0)
    out = train_pass(
        model, images(), temperature=0.9, kl_weight=0.0
    )  # no KL: the encoder learns only through the relaxation
    out.loss.backward()
    for name, grad in (("encoder", first_conv(model).weight.grad), ("codebook", model.codebook.weight.grad)):
        assert grad is not None, name
        assert torch.isfinite(grad).all(), name
        assert grad.abs().sum() > 0, name


def test_gumbel_straight_through_forward_is_one_hot():
    model = tiny(quantizer="gumbel", straight_through=True)
    # with one-hot mixing, the decoder sees exactly codebook vectors: z is a row of the codebook
    seen = {}

    def keep_input(module, inputs):
        seen["z"] = inputs[0].detach()

    model.decoder.register_forward_pre_hook(keep_input)
    torch.manual_seed(0)
    model(images(), temperature=1.0)
    z = seen["z"].permute(0, 2, 3, 1).reshape(-1, model.config.codebook_dim)  # (B*h*w, D)
    gap = (z[:, None, :] - model.codebook.weight.detach()[None]).abs().amax(-1)  # (B*h*w, K)
    assert torch.all(gap.min(1).values < 1e-5)


def test_vq_straight_through_reaches_encoder_and_codebook_loss_reaches_codebook():
    model = tiny(quantizer="vq")
    out = train_pass(
        model, images(), kl_weight=0.0
    )  # beta 0: the encoder gets gradient only through the straight-through path
    out.loss.backward()
    grad = first_conv(model).weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    cb = model.codebook.weight.grad
    assert cb is not None and cb.abs().sum() > 0
    # only the codes in use get codebook gradient
    used = set(out.codes.flatten().tolist())
    unused = [k for k in range(model.num_codes) if k not in used]
    assert all(cb[k].abs().sum() == 0 for k in unused)
    assert all(cb[k].abs().sum() > 0 for k in used)


def test_vq_loss_is_recon_plus_codebook_plus_beta_commitment():
    model = tiny(quantizer="vq")
    beta = 0.25
    out = train_pass(model, images(), kl_weight=beta)
    # without EMA: ||sg[z]-e||^2 + beta*||z-sg[e]||^2, both equal to the reported commitment in value
    assert set(tokenizer_loss(model, model(images()), images()).terms) == {"codebook", "commitment"}
    assert out.loss.item() == pytest.approx(out.recon_loss.item() + (1 + beta) * out.commitment.item(), rel=1e-5)
    assert out.codebook.item() == pytest.approx(out.commitment.item(), rel=1e-6)
    ema = tiny(quantizer="vq", vq_ema=True)
    out = train_pass(ema, images(), kl_weight=beta)
    assert out.codebook is None  # the EMA updates the codebook: no codebook loss
    assert out.loss.item() == pytest.approx(out.recon_loss.item() + beta * out.commitment.item(), rel=1e-5)


def test_vq_ema_updates_the_codebook_in_training_only():
    model = tiny(quantizer="vq", vq_ema=True, vq_ema_decay=0.9)
    assert model.codebook.weight.requires_grad is False
    assert all(p is not model.codebook.weight for p in model.parameters() if p.requires_grad)
    x = images(8)
    model.eval()
    before = model.codebook.weight.detach().clone()
    count_before = model.quantizer.ema_count.clone()
    train_pass(model, x, kl_weight=0.25)
    assert torch.equal(model.codebook.weight, before)
    assert torch.equal(model.quantizer.ema_count, count_before)

    model.train()
    out = train_pass(model, x, kl_weight=0.25)
    after = model.codebook.weight.detach()
    assert not torch.equal(after, before)
    assert torch.isfinite(after).all()
    # used codes moved towards the encoder outputs; the counts decayed towards the batch counts
    counts = torch.bincount(out.codes.flatten(), minlength=model.num_codes).float()
    assert torch.allclose(model.quantizer.ema_count, 0.9 * count_before + 0.1 * counts)
    # the encoder still learns (straight-through), the codebook does not get gradient
    out.loss.backward()
    assert first_conv(model).weight.grad.abs().sum() > 0
    assert model.codebook.weight.grad is None


def test_vq_ema_restart_reseeds_dead_codes_from_encoder_outputs():
    model = tiny(quantizer="vq", vq_ema=True, vq_restart_dead=True, num_codes=64)
    model.train()
    model.quantizer.ema_count.fill_(1.0)
    model.quantizer.ema_count[10:] = 0.0  # pretend codes 10.. have been unused for a long time
    with torch.no_grad():
        train_pass(model, images(8), kl_weight=0.25)
    assert torch.all(model.quantizer.ema_count[10:] > 0)  # re-seeded, so no longer dead
    assert torch.isfinite(model.codebook.weight).all()


# --- the KL term -------------------------------------------------------------------------


def test_kl_is_zero_for_uniform_logits_and_log_k_for_peaked():
    model = tiny(quantizer="gumbel", num_codes=32)
    conv = last_encoder_conv(model)
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
    out = train_pass(model, images(), temperature=1.0, kl_weight=1.0)
    assert out.kl.item() == pytest.approx(0.0, abs=1e-6)
    assert out.loss.item() == pytest.approx(out.recon_loss.item(), abs=1e-6)

    with torch.no_grad():
        conv.bias[7] = 40.0
    out = train_pass(model, images(), temperature=1.0, kl_weight=1.0)
    assert out.kl.item() == pytest.approx(math.log(32), rel=1e-4)
    assert torch.all(out.codes == 7)

    # an arbitrary known distribution: KL = sum p log p + log K
    p = torch.softmax(torch.linspace(-2, 3, 32), 0)
    with torch.no_grad():
        conv.bias.copy_(p.log())
    out = train_pass(model, images(), temperature=1.0, kl_weight=1.0)
    assert out.kl.item() == pytest.approx(float((p * p.log()).sum()) + math.log(32), rel=1e-4)


def test_gumbel_loss_matches_a_hand_computation():
    model = tiny(quantizer="gumbel", res_blocks=1)
    x = images(3)
    beta, tau = 2.5, 0.7
    torch.manual_seed(123)
    out = train_pass(model, x, temperature=tau, kl_weight=beta)

    torch.manual_seed(123)  # the same Gumbel noise
    logits = model.encoder(x * 2 - 1).permute(0, 2, 3, 1)  # (B, h, w, K)
    soft = F.gumbel_softmax(logits, tau=tau, hard=False, dim=-1)
    z = (soft @ model.codebook.weight).permute(0, 3, 1, 2)
    recon = F.mse_loss(model.decoder(z) * 0.5 + 0.5, x)
    q = logits.softmax(-1)
    kl = (q * (q.log() + math.log(model.num_codes))).sum(-1).mean()  # KL(q || uniform) per cell
    cells, pixels = model.grid_size**2, 3 * 16 * 16

    assert out.recon_loss.item() == pytest.approx(recon.item(), rel=1e-5)
    assert out.kl.item() == pytest.approx(kl.item(), rel=1e-5)
    assert out.loss.item() == pytest.approx(out.recon_loss.item() + beta * out.kl.item() * cells / pixels, rel=1e-5)
    assert out.loss.item() == pytest.approx(recon.item() + beta * kl.item() / 48, rel=1e-5)
    assert out.kl.item() > 0


def test_kl_scale_is_the_papers_beta_over_192_at_64px_on_8x8():
    model = tiny(quantizer="gumbel", image_size=64, widths=[4, 4, 4], res_blocks=0)
    assert model.grid_size == 8
    out = train_pass(model, images(2, 64), temperature=1.0, kl_weight=3.0)
    assert (out.loss - out.recon_loss).item() == pytest.approx(3.0 * out.kl.item() / 192, rel=1e-5)


def test_mse_and_reconstruction_are_consistent():
    model = tiny()
    x = images()
    out = model(x, temperature=1.0)
    assert out.reconstruction.shape == x.shape
    assert float(out.reconstruction.min()) >= 0 and float(out.reconstruction.max()) <= 1
    assert out.mse.item() == pytest.approx(F.mse_loss(out.reconstruction, x).item(), rel=1e-6)


# --- logit-Laplace -----------------------------------------------------------------------


@pytest.mark.parametrize("quantizer", ["gumbel", "vq"])
def test_logit_laplace_runs_with_six_output_channels(quantizer):
    model = tiny(quantizer=quantizer, recon_loss="logit_laplace")
    assert model.decoder.net[-1].out_channels == 6
    x = images()
    out = train_pass(model, x, temperature=1.0, kl_weight=0.1)
    assert torch.isfinite(out.recon_loss) and torch.isfinite(out.loss)
    out.loss.backward()
    assert torch.isfinite(first_conv(model).weight.grad).all()
    assert out.reconstruction.shape == (4, 3, 16, 16)
    model.eval()
    decoded = model.decode(model.encode(x))
    assert decoded.shape == (4, 3, 16, 16)
    assert float(decoded.min()) >= 0 and float(decoded.max()) <= 1
    mse_model = tiny(quantizer=quantizer)
    assert mse_model.decoder.net[-1].out_channels == 3


def test_logit_laplace_loss_prefers_the_right_mean():
    """The NLL is lowest when the predicted mean (first 3 channels) is logit of the squashed pixel."""
    model = tiny(recon_loss="logit_laplace")
    x = images(2)
    eps = 0.1
    target = torch.logit(x * (1 - 2 * eps) + eps)
    scale = torch.zeros_like(x)
    exact = reconstruction_loss(torch.cat([target, scale], 1), x, "logit_laplace", 3)
    off = reconstruction_loss(torch.cat([target + 0.5, scale], 1), x, "logit_laplace", 3)
    assert torch.isfinite(exact) and exact < off
    # at mu = logit(x'), log b = 0: nll = log 2 + log(x'(1-x'))
    xs = x * (1 - 2 * eps) + eps
    assert exact.item() == pytest.approx((math.log(2) + torch.log(xs * (1 - xs))).mean().item(), rel=1e-5)
    # and the decoded mean maps back to the pixel
    assert torch.allclose(model._to_image(torch.cat([target, scale], 1)), x, atol=1e-5)


# --- persistence -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        dict(quantizer="gumbel"),
        dict(quantizer="vq", vq_ema=True),
        dict(recon_loss="logit_laplace", straight_through=True),
    ],
    ids=["gumbel", "vq-ema", "logit-laplace"],
)
def test_save_and_load_round_trip(tmp_path, overrides):
    model = tiny(**overrides)
    if model.config.vq_ema:
        model.train()
        train_pass(model, images(8), kl_weight=0.25)  # move the EMA buffers away from their initial values
    model.eval()
    folder = model.save_pretrained(tmp_path / "tok")
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    loaded = DiscreteVAE.from_pretrained(folder)
    assert loaded.config == model.config
    assert not loaded.training
    x = images()
    codes = model.encode(x)
    assert torch.equal(loaded.encode(x), codes)
    assert torch.equal(loaded.decode(codes), model.decode(codes))
    assert loaded.content_hash() == model.content_hash()
    assert set(loaded.state_dict()) == set(model.state_dict())
    # saving again over the same folder works and keeps it loadable
    loaded.save_pretrained(folder)
    assert DiscreteVAE.from_pretrained(folder).content_hash() == model.content_hash()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok"]  # no temporary folders left behind


def test_content_hash_changes_with_any_weight_or_config():
    model = tiny()
    h = model.content_hash()
    assert h == model.content_hash() and isinstance(h, str) and len(h) >= 8
    assert tiny().content_hash() == h  # same seed, same weights
    with torch.no_grad():
        model.decoder.net[-1].bias[0] += 1e-4
    assert model.content_hash() != h
    with torch.no_grad():
        model.decoder.net[-1].bias[0] -= 1e-4
    other = tiny()
    other.config.vq_ema_decay = 0.5  # the config takes part even when the weights are equal
    assert other.content_hash() != h


@pytest.fixture
def saved(tmp_path):
    folder = tiny().save_pretrained(tmp_path / "tok")
    return folder


def _expect_user_error(folder):
    with pytest.raises(UserError) as info:
        DiscreteVAE.from_pretrained(folder)
    assert str(folder) in str(info.value)
    return str(info.value)


def test_load_wrong_kind_raises_user_error(saved):
    config = json.loads((saved / "config.json").read_text())
    config["kind"] = "minidalle prior"
    (saved / "config.json").write_text(json.dumps(config))
    assert "prior" in _expect_user_error(saved)


def test_load_missing_kind_raises_user_error(saved):
    config = json.loads((saved / "config.json").read_text())
    del config["kind"]
    (saved / "config.json").write_text(json.dumps(config))
    _expect_user_error(saved)


def test_load_missing_weights_raises_user_error(saved):
    (saved / "model.safetensors").unlink()
    assert "model.safetensors" in _expect_user_error(saved)


def test_load_corrupt_weights_raises_user_error(saved):
    (saved / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    _expect_user_error(saved)


@pytest.mark.parametrize("text", ["{not json", "", "[1, 2]", "\xff\xfe"])
def test_load_corrupt_config_raises_user_error(saved, text):
    (saved / "config.json").write_text(text, encoding="latin-1")
    _expect_user_error(saved)


def test_load_missing_config_or_folder_raises_user_error(saved, tmp_path):
    _expect_user_error(tmp_path / "nowhere")
    (saved / "config.json").unlink()
    assert "config.json" in _expect_user_error(saved)


def test_load_weights_of_another_shape_raises_user_error(saved, tmp_path):
    other = tiny(num_codes=32).save_pretrained(tmp_path / "other")
    shutil.copy(other / "model.safetensors", saved / "model.safetensors")
    message = _expect_user_error(saved)
    assert "codebook" in message or "encoder" in message


def test_load_weights_of_another_quantizer_raises_user_error(saved, tmp_path):
    other = tiny(quantizer="vq", vq_ema=True).save_pretrained(tmp_path / "other")
    shutil.copy(other / "model.safetensors", saved / "model.safetensors")
    _expect_user_error(saved)


@pytest.mark.parametrize("change", ["missing", "extra"])
def test_load_weights_with_missing_or_extra_tensors_raises_user_error(saved, change):
    from safetensors.torch import load_file, save_file

    weights = load_file(str(saved / "model.safetensors"))
    if change == "missing":
        del weights["quantizer.codebook.weight"]
    else:
        weights["quantizer.ema_count"] = torch.ones(16)
    save_file(weights, str(saved / "model.safetensors"))
    assert ("quantizer.codebook.weight" if change == "missing" else "ema_count") in _expect_user_error(saved)


@pytest.mark.parametrize(
    "overrides,match",
    [
        (dict(quantizer="kmeans"), "quantizer"),
        (dict(recon_loss="l2"), "recon_loss"),
        (dict(image_size=18), "divisible"),
        (dict(image_size=16, widths=[8, 8, 8, 8, 8]), "divisible"),
        (dict(widths=[]), "widths"),
        (dict(num_codes=1), "num_codes"),
    ],
)
def test_config_validation_raises_user_error(overrides, match):
    values = dict(image_size=16, num_codes=16, codebook_dim=8, widths=[8, 16], res_blocks=0)
    values.update(overrides)
    with pytest.raises(UserError, match=match):
        DVAEConfig(**values)


def test_config_from_dict_rejects_unknown_fields():
    with pytest.raises(UserError, match="colour_space"):
        DVAEConfig.from_dict({"image_size": 16, "widths": [8, 16], "colour_space": "lab"})
    assert DVAEConfig.from_dict({"image_size": 16, "widths": [8, 16]}).grid_size == 4


def test_from_pretrained_with_invalid_config_raises_user_error(saved):
    config = json.loads((saved / "config.json").read_text())
    config["quantizer"] = "kmeans"
    (saved / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="quantizer"):
        DiscreteVAE.from_pretrained(saved)


# --- learning ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shapes_images() -> torch.Tensor:
    array = np.stack([render_scene(generate_scene("train", 0, i)) for i in range(64)])  # (64, 64, 64, 3) uint8
    return torch.from_numpy(array).permute(0, 3, 1, 2).float() / 255.0


@pytest.mark.parametrize("quantizer", ["gumbel", "vq"])
def test_loss_falls_on_shapes(shapes_images, quantizer):
    torch.manual_seed(0)
    model = DiscreteVAE(
        DVAEConfig(image_size=64, num_codes=32, codebook_dim=16, widths=[8, 16, 16], res_blocks=0, quantizer=quantizer)
    )
    x = shapes_images
    model.eval()
    mse_before = F.mse_loss(model.reconstruct(x), x).item()
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for step in range(60):
        batch = x[(step * 16) % 64 :][:16]
        out = train_pass(model, batch, temperature=1.0, kl_weight=0.0 if quantizer == "gumbel" else 0.25)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        assert math.isfinite(out.loss.item())
        losses.append(out.mse.item())  # the reconstruction error on this batch
    model.eval()
    mse_after = F.mse_loss(model.reconstruct(x), x).item()
    assert np.mean(losses[-8:]) < 0.5 * np.mean(losses[:8]), losses
    assert mse_after < 0.4 * mse_before, (mse_before, mse_after)
