"""Stage 1's VQ-GAN objective and the collapse-proof quantizers (issue 16): the adaptive GAN weight against
a hand computation, the discriminator idle before its start step, bit-exact resume and 2-process
equivalence with the GAN, the saved tokenizer holding only what inference needs; FSQ's codes round-trip
and reach every level; VQ's l2-normalised lookup and k-means start; the decoder's mean-colour bias."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState
from safetensors.torch import load_file
from tiny_runs import tokenizer_argv

from minidalle.cli.train import train_tokenizer_main as train_main
from minidalle.errors import UserError
from minidalle.image_tokenizers import DiscreteVAE, DVAEConfig
from minidalle.image_tokenizers.adversarial import (
    PatchDiscriminator,
    adaptive_weight,
    balanced_generator_loss,
    frozen_call,
    hinge_d_loss,
)
from minidalle.image_tokenizers.losses import output_bias_for, output_to_image

ROOT = Path(__file__).resolve().parents[1]
SHAPES_IMAGES = 64
FSQ = dict(image_size=16, widths=[8, 16], res_blocks=0, quantizer="fsq", fsq_levels=[5, 4, 3])


def run(argv: list[str]) -> None:
    AcceleratorState._reset_state(reset_partial_state=True)
    train_main(argv)


def gan_args(data: Path, out: Path, *extra: str, **flags) -> list[str]:
    values = dict(quantizer="fsq", fsq_levels="5,4,3", recon_loss="l1", disc_weight=0.8, disc_width=8, disc_layers=2)
    values.update(eval_examples=8, checkpointing_steps=0, seed=3)
    values.update(flags)
    return tokenizer_argv(data, out, *extra, **values)


def log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------------------ adaptive weight
def test_adaptive_weight_is_the_ratio_of_the_two_gradient_norms_at_the_last_layer():
    w = torch.tensor([[1.0, -2.0], [0.5, 3.0]], requires_grad=True)
    x = torch.tensor([0.3, -1.2])
    y = w @ x  # (2,)
    nll = (y**2).sum()  # d/dw = 2 y x^T
    gan = -(y * torch.tensor([1.0, 4.0])).sum()  # d/dw = -[1, 4]^T x^T
    by_hand_nll = 2 * torch.outer(y.detach(), x)
    by_hand_gan = -torch.outer(torch.tensor([1.0, 4.0]), x)
    expected = by_hand_nll.norm() / (by_hand_gan.norm() + 1e-4)
    assert adaptive_weight(nll, gan, w).item() == pytest.approx(expected.item(), rel=1e-6)
    assert w.grad is None  # nothing accumulated: the step's backward pass is still to come
    tiny = -(y * 1e-9).sum()  # a vanishing GAN gradient: the weight is clamped, not infinite
    assert adaptive_weight(nll, tiny, w, max_weight=10.0).item() == 10.0


def test_the_balanced_loss_has_the_plain_forms_value_and_gradients():
    torch.manual_seed(0)
    last = torch.nn.Conv2d(4, 3, 3, padding=1)
    hidden = torch.randn(2, 4, 8, 8, requires_grad=True)  # stands for everything before the last layer

    def losses():
        decoded = last(hidden)
        return decoded, (torch.tanh(decoded) - 0.3).abs().mean(), -(decoded.sin() * decoded).mean()

    decoded, nll, gan = losses()
    weight = 0.8 * adaptive_weight(nll, gan, last.weight)
    (nll + weight * gan).backward()
    plain = [t.grad.clone() for t in (last.weight, last.bias, hidden)]
    for t in (last.weight, last.bias, hidden):
        t.grad = None
    decoded, nll, gan = losses()
    loss, balanced_weight = balanced_generator_loss(nll, gan, decoded, last.weight, 0.8)
    assert balanced_weight.item() == pytest.approx(weight.item(), rel=1e-6)
    assert loss.item() == pytest.approx((nll + weight * gan).item(), rel=1e-6)
    loss.backward()
    for a, b in zip(plain, (last.weight.grad, last.bias.grad, hidden.grad)):
        assert torch.allclose(a, b, atol=1e-7)


def test_the_generator_term_does_not_train_the_discriminator():
    disc = PatchDiscriminator(3, width=8, layers=2)
    fake = torch.rand(2, 3, 16, 16, requires_grad=True)
    (-frozen_call(disc, fake).mean()).backward()
    assert fake.grad is not None and fake.grad.abs().sum() > 0
    assert all(p.grad is None for p in disc.parameters())
    loss = hinge_d_loss(disc(torch.rand(2, 3, 16, 16)), disc(fake.detach()))
    loss.backward()
    assert all(p.grad is not None for p in disc.parameters())


def test_hinge_losses_are_zero_for_a_confident_discriminator():
    assert hinge_d_loss(torch.full((4,), 2.0), torch.full((4,), -2.0)).item() == 0.0
    assert hinge_d_loss(torch.zeros(4), torch.zeros(4)).item() == 1.0


# ------------------------------------------------------------------------------------------- trainer runs
def test_discriminator_is_idle_before_its_start_step(shapes_dir, tmp_path):
    a, b = tmp_path / "starts-at-3", tmp_path / "never"
    run(gan_args(shapes_dir, a, max_steps=6, disc_start=3, checkpointing_steps=3))
    run(gan_args(shapes_dir, b, max_steps=3, disc_start=1000, checkpointing_steps=3))
    rows = {r["step"]: r for r in log(a) if "loss" in r}
    assert all(rows[s]["disc_loss"] == 0 and rows[s]["gan_weight"] == 0 for s in (1, 2, 3))
    assert all(rows[s]["disc_loss"] > 0 and rows[s]["gan_weight"] > 0 for s in (4, 5, 6))
    # up to its start the run is the run without a discriminator, and the discriminator never moved
    for name in ("model.safetensors", "model_1.safetensors"):
        at3 = load_file(str(a / "checkpoints" / "step-0000003" / name))
        ref = load_file(str(b / "checkpoints" / "step-0000003" / name))
        assert all(torch.equal(at3[k], ref[k]) for k in ref), name
    at3 = load_file(str(a / "checkpoints" / "step-0000003" / "model_1.safetensors"))
    at6 = load_file(str(a / "checkpoints" / "step-0000006" / "model_1.safetensors"))
    assert any(not torch.equal(at3[k], at6[k]) for k in at3)  # and trains once started


def test_gan_run_resumes_bit_exactly_and_saves_only_the_tokenizer(shapes_dir, tmp_path):
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    run(gan_args(shapes_dir, full, max_steps=8, disc_start=2, checkpointing_steps=4, checkpoints_total_limit=5))
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(full / "checkpoints" / "step-0000004", resumed / "checkpoints" / "step-0000004")
    run(gan_args(shapes_dir, resumed, "--resume_from_checkpoint", "latest", max_steps=8, disc_start=2))
    for name in ("model.safetensors", "model_1.safetensors"):  # the tokenizer and the discriminator
        wa = load_file(str(full / "checkpoints" / "step-0000008" / name))
        wb = load_file(str(resumed / "checkpoints" / "step-0000008" / name))
        assert all(torch.equal(wa[k], wb[k]) for k in wa), name
    saved = load_file(str(full / "image_tokenizer" / "model.safetensors"))
    assert {k.split(".")[0] for k in saved} == {"encoder", "decoder", "quantizer"}  # no disc, no VGG
    assert {k for k in saved if k.startswith("quantizer")} == {"quantizer.norm.weight", "quantizer.norm.bias"}
    evaluation = json.loads((full / "eval.json").read_text())
    assert evaluation["eval_perceptual"] > 0  # the perceptual distance is reported beside PSNR


def test_gan_with_two_processes_follows_one_process(shapes_dir, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    run(gan_args(shapes_dir, one, max_steps=6, disc_start=2, batch_size=8))
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    argv = gan_args(shapes_dir, two, max_steps=6, disc_start=2, batch_size=4)
    result = subprocess.run([*launch, str(ROOT / "train_tokenizer.py"), *argv], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((two / "run_summary.json").read_text())
    assert summary["num_processes"] == 2 and summary["ranks_in_sync"] is True
    a = {r["step"]: r for r in log(one) if "loss" in r}
    b = {r["step"]: r for r in log(two) if "loss" in r}
    assert sorted(a) == sorted(b) == list(range(1, 7))
    for step in a:  # the adaptive weight is the whole batch's on both
        for key in ("loss", "recon", "gan_weight", "disc_loss", "logits_real"):  # sums over other splits: rounding
            assert b[step][key] == pytest.approx(a[step][key], rel=5e-4, abs=1e-6), (step, key)


def test_quantizer_flags_give_clear_errors(shapes_dir, tmp_path):
    with pytest.raises(UserError, match="--fsq_levels is for --quantizer fsq"):
        run(tokenizer_argv(shapes_dir, tmp_path / "a", quantizer="vq", fsq_levels="5,5"))
    with pytest.raises(UserError, match="drop --num_codes"):
        run(tokenizer_argv(shapes_dir, tmp_path / "b", quantizer="fsq", fsq_levels="5,5", num_codes=25))
    with pytest.raises(UserError, match="needs fsq_levels"):
        run(tokenizer_argv(shapes_dir, tmp_path / "c", quantizer="fsq"))
    for levels in ([5, 1], [5, 2]):  # 2 levels: the bound's shift would be NaN (fsq.py)
        with pytest.raises(UserError, match="at least 3"):
            DVAEConfig(**{**FSQ, "fsq_levels": levels})


# ---------------------------------------------------------------------------------------------------- FSQ
def test_fsq_codes_round_trip_and_every_level_is_reachable():
    torch.manual_seed(0)
    model = DiscreteVAE(DVAEConfig(**FSQ))
    assert model.num_codes == 60 and model.config.codebook_dim == 3
    q = model.quantizer
    # a sweep of encoder outputs reaches every level of every channel, hence every code
    sweep = torch.linspace(-6, 6, 41)
    h = torch.tensor(list(itertools.product(sweep, repeat=3))).T.reshape(1, 3, -1, 1)  # (1, 3, 41**3, 1)
    assert set(q.codes(h).flatten().tolist()) == set(range(60))
    for i, levels in enumerate([5, 4, 3]):
        assert set(q.digits(h)[:, i].flatten().tolist()) == set(range(levels))
    # codes -> decoder input -> codes is the identity, and training sees what inference decodes
    all_codes = torch.arange(60).reshape(1, 6, 10)
    z = q.embed(all_codes)
    assert z.abs().max() <= 1.0
    digits = torch.round(z * (q.levels // 2)[None, :, None, None]).long() + (q.levels // 2)[None, :, None, None]
    assert torch.equal((digits * q.basis[None, :, None, None]).sum(1), all_codes)
    h = torch.randn(2, 3, 4, 4) * 3
    out = q(h)
    assert torch.equal(out.codes, q.codes(h))
    assert torch.allclose(out.z, q.embed(out.codes), atol=1e-6)
    images = torch.rand(2, 3, 16, 16)
    assert torch.equal(model.encode(images), model.encoder_logits(images).argmax(1))


def test_fsq_gradient_passes_the_rounding():
    q = DiscreteVAE(DVAEConfig(**FSQ)).quantizer
    h = torch.randn(1, 3, 2, 2, requires_grad=True)
    q(h).z.sum().backward()
    assert h.grad is not None and (h.grad != 0).all()


# ----------------------------------------------------------------------------------------------------- VQ
def vq_model(**extra) -> DiscreteVAE:
    values = dict(image_size=16, widths=[8, 16], res_blocks=0, quantizer="vq", num_codes=16, codebook_dim=4)
    return DiscreteVAE(DVAEConfig(**{**values, **extra}))


def test_l2_vq_looks_up_unit_vectors_by_cosine():
    torch.manual_seed(0)
    model = vq_model(vq_l2=True)
    q = model.quantizer
    h = torch.randn(2, 4, 3, 3)
    z = q.embed(q.codes(h))
    assert torch.allclose(z.norm(dim=1), torch.ones(2, 3, 3), atol=1e-5)
    cosine = torch.einsum("bdhw,kd->bkhw", torch.nn.functional.normalize(h, dim=1), q._codes_table())
    assert torch.equal(q.codes(h), cosine.argmax(1))
    assert torch.equal(q.codes(h), q.codes(h * 7.0))  # the length of an encoder vector does not matter


def test_kmeans_init_starts_the_codebook_on_the_data_once():
    torch.manual_seed(0)
    model = vq_model(vq_kmeans_init=True).train()
    q = model.quantizer
    h = torch.randn(4, 4, 4, 4) + 5.0  # far from the random start codebook, which sits near 0
    assert len(set(q.codes(h).flatten().tolist())) <= 4  # before: a handful of codes take everything
    q(h)
    assert bool(q.initialised)
    assert len(set(q.codes(h).flatten().tolist())) >= 12  # after: the codes cover the data
    start = q.codebook.weight.detach().clone()
    q(h + 1.0)
    assert torch.equal(q.codebook.weight, start)  # initialised once, not at every batch
    assert "quantizer.initialised" in model.state_dict()  # so a loaded model does not start again


# ---------------------------------------------------------------------------------------- the output bias
@pytest.mark.parametrize("recon_loss", ["mse", "l1", "logit_laplace"])
def test_output_bias_decodes_to_the_mean_colour(recon_loss):
    mean = torch.tensor([0.9, 0.5, 0.2])
    bias = output_bias_for(mean, recon_loss, 3)
    out = bias[None, :, None, None].expand(1, -1, 2, 2)
    assert torch.allclose(output_to_image(out, recon_loss, 3)[0, :, 0, 0], mean, atol=1e-5)


def test_mean_bias_init_starts_the_decoder_at_the_data_colour(shapes_dir, tmp_path):
    out = tmp_path / "run"
    run(tokenizer_argv(shapes_dir, out, max_steps=1, learning_rate=1e-9, output_bias_init="mean"))
    model = DiscreteVAE.from_pretrained(out / "image_tokenizer")
    from minidalle.data import DataArguments, load_captioned_dataset, load_image_tensor

    args = DataArguments(data=str(shapes_dir), resolution=32)
    images = load_image_tensor(load_captioned_dataset(args, require_captions=False), args, progress=False)
    mean = images.float().mean((0, 2, 3)) / 255
    assert torch.allclose(model.decoder.net[-1].bias.detach(), mean.clamp(0.02, 0.98) * 2 - 1, atol=0.02)
