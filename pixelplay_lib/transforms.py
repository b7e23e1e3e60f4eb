"""The baseline's augmentation, with its randomness made explicit.

Baseline: RandomResizedCrop(300, scale=(0.7, 1)), RandomHorizontalFlip, RandomRotation(30),
ToTensor, ImageNet Normalize. torchvision draws those parameters from the global RNG, so the
result depends on which worker ran which sample. Here the parameters are drawn from a
generator seeded by (seed, epoch, sample, vote): the same sample gets the same crop whatever
the worker, the order or a resume in between. The draw follows torchvision's own algorithm,
so the distribution is the baseline's.

Images travel as uint8 (4x less to copy and pin than float) and are normalised on the device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torchvision.transforms.functional as TF
import torchvision.transforms.v2.functional as TF2
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class AugmentParams:
    top: int
    left: int
    height: int
    width: int
    flip: bool
    angle: float


def sample_rng(seed: int, epoch: int, index: int, vote: int = 0) -> np.random.Generator:
    """Independent stream per (seed, epoch, sample, vote); votes use epoch = -1."""
    return np.random.default_rng([seed & 0xFFFFFFFF, epoch + 1, index, vote])


def sample_params(rng: np.random.Generator, height: int, width: int, scale_min: float,
                  rotation: float) -> AugmentParams:
    """torchvision's RandomResizedCrop.get_params (ratio 3/4..4/3), flip and rotation."""
    area = height * width
    log_lo, log_hi = math.log(3 / 4), math.log(4 / 3)
    box = None
    for _ in range(10):
        target = area * rng.uniform(scale_min, 1.0)
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            box = (int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w)
            break
    if box is None:  # torchvision's fallback: the central crop at a clamped ratio
        ratio = width / height
        if ratio < 3 / 4:
            w, h = width, int(round(width / (3 / 4)))
        elif ratio > 4 / 3:
            h, w = height, int(round(height * (4 / 3)))
        else:
            w, h = width, height
        h, w = min(h, height), min(w, width)
        box = ((height - h) // 2, (width - w) // 2, h, w)
    flip = bool(rng.random() < 0.5)
    angle = float(rng.uniform(-rotation, rotation)) if rotation else 0.0
    return AugmentParams(*box, flip=flip, angle=angle)


def augment(img: torch.Tensor, p: AugmentParams, size: int, fast: bool = True) -> torch.Tensor:
    """uint8 CxHxW -> uint8 Cx size x size: crop+resize, flip, rotate (nearest, black fill).

    fast=True (the default): the crop is resized by torch's native uint8 antialiased bilinear
    kernel (no float round trip; closer to PIL's than the float path) and the flip and the
    rotation are one nearest-neighbour gather with the index map TF.rotate would sample;
    about 4x cheaper per view. fast=False: the torchvision tensor ops, as before.
    Both match `reference_augment` within the tolerance stated in tests/test_speed.py.
    """
    if not fast:
        x = TF.resized_crop(img, p.top, p.left, p.height, p.width, [size, size], antialias=True)
        if p.flip:
            x = TF.hflip(x)
        if p.angle:
            x = TF.rotate(x, p.angle)
        return x
    crop = img[..., p.top:p.top + p.height, p.left:p.left + p.width]
    x = resize_uint8(crop, [size, size])
    if not (p.flip or p.angle):
        return x
    return torch.from_numpy(flip_rotate(x.numpy(), p.flip, p.angle))


def resize_uint8(img: torch.Tensor, size: list[int]) -> torch.Tensor:
    """Antialiased bilinear resize that stays uint8 on CPU (torch's native kernel; torchvision
    falls back to float where the CPU lacks it). `size`: [h, w], or [short side]."""
    return TF2.resize(img, size, antialias=True).contiguous()


def flip_rotate(x: np.ndarray, flip: bool, angle: float) -> np.ndarray:
    """uint8 CxHxW: hflip then rotate by `angle` degrees about the centre, nearest neighbour,
    black outside: TF.rotate(TF.hflip(x), angle) as one gather.

    Source pixel of output (i, j), as torchvision computes it (affine grid on pixel centres,
    grid_sample nearest with align_corners=False, ties to even): round(M @ (j, i) centred).
    """
    c, h, w = x.shape
    m = TF._get_inverse_affine_matrix([0.0, 0.0], -angle, [0.0, 0.0], 1.0, [0.0, 0.0])
    xs = np.arange(w, dtype=np.float32) - np.float32(w * 0.5 - 0.5)
    ys = (np.arange(h, dtype=np.float32) - np.float32(h * 0.5 - 0.5))[:, None]
    sx = np.rint(np.float32(m[0]) * xs + (np.float32(m[1]) * ys
                                         + np.float32(m[2] + w * 0.5 - 0.5))).astype(np.int32)
    sy = np.rint(np.float32(m[3]) * xs + (np.float32(m[4]) * ys
                                         + np.float32(m[5] + h * 0.5 - 0.5))).astype(np.int32)
    inside = (sx >= 0) & (sx < w) & (sy >= 0) & (sy < h)
    if flip:
        sx = (w - 1) - sx
    index = np.where(inside, sy * w + sx, h * w)  # h * w: the black pixel appended below
    padded = np.zeros((c, h * w + 1), dtype=x.dtype)
    padded[:, :-1] = x.reshape(c, -1)
    return np.take(padded, index.reshape(-1), axis=1).reshape(c, h, w)


def center_view(img: torch.Tensor, size: int, fast: bool = True) -> torch.Tensor:
    """The deterministic view used for validation and features: short side, central square.
    fast: resize in uint8 (see `augment`)."""
    x = resize_uint8(img, [size]) if fast else TF.resize(img, [size], antialias=True)
    return TF.center_crop(x, [size, size])


def reference_augment(img: Image.Image, p: AugmentParams, size: int) -> torch.Tensor:
    """The baseline's path: the same parameters applied with PIL ops, then ToTensor+Normalize.

    Kept as the reference the fast path is tested and benchmarked against.
    """
    x = TF.resized_crop(img, p.top, p.left, p.height, p.width, [size, size])
    if p.flip:
        x = TF.hflip(x)
    if p.angle:
        x = TF.rotate(x, p.angle)
    return TF.normalize(TF.to_tensor(x), IMAGENET_MEAN, IMAGENET_STD)


def normalize(batch: torch.Tensor, mean: torch.Tensor | None = None,
              std: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 NxCxHxW (on any device) -> float, normalised by mean / std (0..255 scale,
    shaped 1xCx1x1; default: ImageNet's, the torchvision backbones' normalisation)."""
    if mean is None or std is None:
        mean = torch.tensor(IMAGENET_MEAN, device=batch.device).view(1, 3, 1, 1) * 255
        std = torch.tensor(IMAGENET_STD, device=batch.device).view(1, 3, 1, 1) * 255
    # In place on the one new float tensor: the same values as (x - mean) / std, without two
    # more batch-sized allocations (on CPU those page faults cost ~15x the arithmetic).
    return batch.to(torch.float32, copy=True).sub_(mean).div_(std)
