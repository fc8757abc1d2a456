"""NYUv2: 13-class semantic segmentation, depth and surface normals from indoor RGB images.

Reads the preprocessed layout public multitask code uses (MTAN, LibMTL):

    ROOT/train/image/0.npy   (H, W, 3) float RGB
    ROOT/train/label/0.npy   (H, W) class index in 0..12, -1 where unlabelled
    ROOT/train/depth/0.npy   (H, W, 1) depth in metres, 0 where missing
    ROOT/train/normal/0.npy  (H, W, 3) unit normals, 0 where missing
    ROOT/val/...             the same (LibMTL's 654 test images)

`val/` is our test split; a seeded fraction of `train/` is held out as validation. ROOT is the
`root` option, or the BENCH_NYUV2 environment variable, or data/nyuv2. The data is not shipped;
it runs wherever a user has it (a GPU is advisable at full resolution: `scale` < 1 shrinks the
images for a quick look).

Model: a small SegNet-style encoder-decoder (three 3 x 3 convolution stages with max-pooling,
two with upsampling; the decoder's last convolution is the last shared layer) and a 3 x 3
convolution head per task. Losses, as in the paper's tasks: cross-entropy over labelled pixels
(normaliser log 13), L1 depth error over valid pixels (normaliser 1 m), 1 - cosine similarity of
normals over valid pixels (normaliser 1). Metrics: mIoU and pixel accuracy; depth RMS;
mean normal angle error in degrees.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.errors import ConfigError
from bench.problems.base import DataSplits, MultiTaskModel, Problem, Split, TaskSpec
from bench.problems.layers import StackedConv2d, per_image, seeded_generators
from bench.problems.metrics import accuracy_metric, angle_error_metric, masked_rms_metric, mean_iou_metric
from bench.problems.losses import cross_entropy

CLASSES = 13
PARTS = ("image", "label", "depth", "normal")


def default_root() -> str:
    return os.environ.get("BENCH_NYUV2") or "data/nyuv2"  # set empty (BENCH_NYUV2= in a script): unset


def depth_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Mean absolute error over pixels with a depth (target > 0), per run."""
    R = pred.shape[0]
    valid = (target > 0).reshape(R, -1)
    err = ((pred - target).abs().reshape(R, -1) * valid).sum(dim=1)
    return err / valid.sum(dim=1).clamp_min(1)


def normal_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Mean 1 - cos(predicted, true normal) over pixels with a normal, per run (channels on dim 2)."""
    R = pred.shape[0]
    valid = (target.abs().sum(dim=2) > 0).reshape(R, -1)
    cos = F.cosine_similarity(pred, target, dim=2).reshape(R, -1)
    return ((1 - cos) * valid).sum(dim=1) / valid.sum(dim=1).clamp_min(1)


# Channels of each part's arrays: (H, W, C), or (H, W) for the label map.
PART_CHANNELS = {"image": 3, "label": None, "depth": 1, "normal": 3}


def _read(path: Path, part: str, size: tuple[int, ...] | None) -> np.ndarray:
    """One array of the layout, channels first; a ConfigError naming the file if it is missing,
    unreadable or of another shape (`size`: the first image's (H, W), which every array shares)."""
    channels = PART_CHANNELS[part]
    want = "(H, W)" if channels is None else f"(H, W, {channels})"
    if size is not None:
        want += f" with (H, W) = {tuple(size)} as in the first image"

    def wrong(what: str) -> ConfigError:
        return ConfigError("problem.root", f"NYUv2 {part} arrays of shape {want}", f"{path}: {what}")

    try:
        array = np.load(path)
    except FileNotFoundError:
        raise wrong("missing") from None
    except (OSError, ValueError) as err:
        raise wrong(f"not a readable .npy file ({err})") from None
    ndim = 2 if channels is None else 3
    if (array.ndim != ndim or (channels is not None and array.shape[2] != channels)
            or (size is not None and array.shape[:2] != tuple(size))):
        raise wrong(f"shape {array.shape}")
    return array if channels is None else array.transpose(2, 0, 1)


def load_folder(folder: Path, scale: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    files = sorted((folder / "image").glob("*.npy"), key=lambda p: int(p.stem))
    images, labels, depths, normals = [], [], [], []
    size = None
    for f in files:
        images.append(_read(f, "image", size))
        size = images[0].shape[1:]
        labels.append(_read(folder / "label" / f.name, "label", size))
        depths.append(_read(folder / "depth" / f.name, "depth", size))
        normals.append(_read(folder / "normal" / f.name, "normal", size))
    x = torch.as_tensor(np.stack(images), dtype=torch.float32)
    seg = torch.as_tensor(np.stack(labels), dtype=torch.int64)
    depth = torch.as_tensor(np.stack(depths), dtype=torch.float32)
    normal = torch.as_tensor(np.stack(normals), dtype=torch.float32)
    if scale != 1.0:
        size = (max(8, round(x.shape[2] * scale)), max(8, round(x.shape[3] * scale)))
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        seg = F.interpolate(seg[:, None].float(), size=size, mode="nearest")[:, 0].long()
        depth = F.interpolate(depth, size=size, mode="nearest")
        normal = F.interpolate(normal, size=size, mode="nearest")
    return x, seg, depth, normal


@dataclass(frozen=True)
class NYUv2Params:
    root: str | None = None
    val_fraction: float = 0.1
    scale: float = 1.0
    channels: tuple[int, ...] = (32, 64, 128)

    def validate(self) -> None:
        if not 0 < self.val_fraction < 1:
            raise ConfigError("val_fraction", "a number in (0, 1)", self.val_fraction)
        if not 0 < self.scale <= 1:
            raise ConfigError("scale", "a number in (0, 1]", self.scale)
        if len(self.channels) != 3 or min(self.channels) < 1:
            raise ConfigError("channels", "three channel counts >= 1", list(self.channels))


class SegNetBody(nn.Module):
    """Encoder (conv-ReLU, pool) x 2, conv-ReLU; decoder upsample, conv-ReLU, upsample."""

    def __init__(self, channels: Sequence[int], generators: Sequence[torch.Generator]) -> None:
        super().__init__()
        a, b, c = channels
        self.enc1 = StackedConv2d(3, a, 3, generators, padding=1)
        self.enc2 = StackedConv2d(a, b, 3, generators, padding=1)
        self.enc3 = StackedConv2d(b, c, 3, generators, padding=1)
        self.dec1 = StackedConv2d(c, b, 3, generators, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        h1 = torch.relu(self.enc1(x))
        h2 = torch.relu(self.enc2(per_image(F.max_pool2d, h1, 2)))
        h3 = torch.relu(self.enc3(per_image(F.max_pool2d, h2, 2)))
        up = per_image(F.interpolate, h3, size=h2.shape[-2:], mode="bilinear", align_corners=False)
        d1 = torch.relu(self.dec1(up))
        return per_image(F.interpolate, d1, size=size, mode="bilinear", align_corners=False)


class NYUv2Problem(Problem):
    name = "nyuv2"
    Params = NYUv2Params
    description = "NYUv2 segmentation, depth and normals (preprocessed .npy layout; user data)"
    supports_stacking = False  # full-resolution images: one run at a time
    params: NYUv2Params

    @property
    def root(self) -> Path:
        return Path(self.params.root or default_root()).expanduser()  # a study file's root = "~/data/nyuv2"

    def _check(self) -> None:
        missing = [self.root / split / part for split in ("train", "val") for part in PARTS
                   if not (self.root / split / part / "0.npy").is_file()]
        if missing:
            raise ConfigError("problem.root", "the preprocessed NYUv2 data (ROOT/train|val/image|label|depth|"
                              f"normal/N.npy, as MTAN and LibMTL use); missing {missing[0]}. Put it there, "
                              "or give its folder in the BENCH_NYUV2 environment variable (or as root in the study's "
                              "[problem] table; bench train: -p root=...)", str(self.root))

    def _tasks(self) -> list[TaskSpec]:
        return [
            TaskSpec("segmentation", "classification", loss=cross_entropy, normaliser=math.log(CLASSES),
                     n_classes=CLASSES, metrics=(mean_iou_metric(CLASSES), accuracy_metric("pixel_accuracy"))),
            TaskSpec("depth", "dense", loss=depth_loss, normaliser=1.0, metrics=(masked_rms_metric(),)),
            TaskSpec("normal", "dense", loss=normal_loss, normaliser=1.0, metrics=(angle_error_metric(),)),
        ]

    def _load(self, data_seed: int) -> DataSplits:
        self._check()
        x, seg, depth, normal = load_folder(self.root / "train", self.params.scale)
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(int(data_seed)))
        n_val = max(1, round(self.params.val_fraction * len(x)))
        if n_val >= len(x):
            raise ConfigError("problem.root", "at least 2 NYUv2 training images (a fraction val_fraction "
                              "of them is held out for validation)", f"{len(x)} in {self.root / 'train'}")
        val, train = order[:n_val], order[n_val:]
        tx, tseg, tdepth, tnormal = load_folder(self.root / "val", self.params.scale)
        return DataSplits(
            train=Split(x[train], (seg[train], depth[train], normal[train])),
            val=Split(x[val], (seg[val], depth[val], normal[val])),
            test=Split(tx, (tseg, tdepth, tnormal)),
        )

    def build_model(self, init_seeds: Sequence[int]) -> MultiTaskModel:
        gens = seeded_generators(init_seeds)
        a, b, _ = self.params.channels
        body = SegNetBody(self.params.channels, gens)
        last = StackedConv2d(b, a, 3, gens, padding=1)
        heads = [StackedConv2d(a, CLASSES, 3, gens, padding=1), StackedConv2d(a, 1, 3, gens, padding=1),
                 StackedConv2d(a, 3, 3, gens, padding=1)]
        return MultiTaskModel(body, last, heads, n_runs=len(init_seeds), activation=nn.ReLU())
