"""The speed paths give the baseline's results: augmentation, cache reuse, AMP/channels-last.

Tolerance of the augmentation comparison (fast uint8 path vs the baseline's PIL path, both
fed the same image at the same resolution and the same parameters, compared after
ImageNet normalisation):
  * without rotation, every element within one grey level: |diff| <= 1 / (255 x 0.224)
    = 0.0175 (antialiased bilinear resizes that round differently by at most 1/255);
  * with rotation, at least 99.5% of the elements of each view within that bound and the mean
    |diff| below 0.005 (nearest-neighbour rotation: a pixel whose source lies on a rounding
    tie or on the image border may take the neighbouring source pixel or the black fill).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from pixelplay_lib import pipeline
from pixelplay_lib.config import make_config
from pixelplay_lib.data import bundled_attributes
from pixelplay_lib.demo import render, strengths
from pixelplay_lib.model import build_model
from pixelplay_lib.pipeline import Views, build_cache
from pixelplay_lib.runtime import Runtime, make_runtime
from pixelplay_lib.transforms import (
    augment,
    flip_rotate,
    normalize,
    reference_augment,
    sample_params,
    sample_rng,
)

ONE_LEVEL = 1 / (255 * 0.224) + 1e-6  # one grey level after Normalize (smallest std: 0.224)


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    """A photo-like picture at the size the cache stores (short side 345 = 300 x 1.15)."""
    classes, predicates, matrix = bundled_attributes()
    att = strengths(predicates, matrix)[classes.index("zebra")]
    return render(att, np.random.default_rng(3), (460, 345))


def as_tensor(img: Image.Image) -> torch.Tensor:
    """As Views hands images to `augment`: a CxHxW view of HxWx3 uint8 memory."""
    return torch.from_numpy(np.array(img)).permute(2, 0, 1)


def all_params(img: Image.Image, n: int = 12):
    return [sample_params(sample_rng(0, 0, i), img.height, img.width, 0.7, 30.0)
            for i in range(n)]


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "torchvision"])
def test_augment_matches_reference_without_rotation(photo, fast):
    x = as_tensor(photo)
    for p in all_params(photo):
        p = dataclasses.replace(p, angle=0.0)
        ref = reference_augment(photo, p, 300)
        out = normalize(augment(x, p, 300, fast=fast)[None])[0]
        assert out.shape == ref.shape == (3, 300, 300)
        assert (out - ref).abs().max() <= ONE_LEVEL, p


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "torchvision"])
def test_augment_matches_reference(photo, fast):
    x = as_tensor(photo)
    params = all_params(photo)
    assert any(p.flip for p in params) and not all(p.flip for p in params)
    for p in params:
        ref = reference_augment(photo, p, 300)
        diff = (normalize(augment(x, p, 300, fast=fast)[None])[0] - ref).abs()
        assert (diff <= ONE_LEVEL).float().mean() >= 0.995, p
        assert diff.mean() < 0.005, p


def test_one_gather_flip_rotate_is_torchvisions_rotate(photo):
    x = TF.resize(as_tensor(photo), [300, 300], antialias=True).contiguous()
    for angle in (0.0, 0.5, -7.25, 13.0, 29.9, -30.0):
        for flip in (False, True):
            expected = TF.rotate(TF.hflip(x) if flip else x, angle)
            got = torch.from_numpy(flip_rotate(x.numpy(), flip, angle))
            assert (got != expected).any(0).float().mean() <= 1e-3, (angle, flip)


def test_views_switch(photo, tmp_path):
    path = tmp_path / "a.jpg"
    photo.save(path, quality=95)
    images = build_cache([path], 345, tmp_path / "cache", workers=0)
    fast = Views(images, [0], 300, "test", 0, votes=3)[(0, -1)][0]
    slow = Views(images, [0], 300, "test", 0, votes=3, fast_augment=False)[(0, -1)][0]
    assert fast.shape == slow.shape == (4, 3, 300, 300) and fast.dtype == torch.uint8
    assert (fast.int() - slow.int()).abs().float().mean() < 1.0  # grey levels


def test_normalize_is_the_reference_formula():
    x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255
    assert torch.equal(normalize(x), (x.float() - mean) / std)
    f = x.float()
    normalize(f)
    assert torch.equal(f, x.float())  # a float input is not modified in place


# ------------------------------------------------------------------ cache invalidation
@pytest.fixture()
def counted(monkeypatch):
    calls = []
    decode = pipeline._decode_into

    def counting(args):
        calls.append(args[1])
        return decode(args)

    monkeypatch.setattr(pipeline, "_decode_into", counting)
    return calls


def write_jpeg(path: Path, colour: tuple[int, int, int], size=(80, 60)) -> None:
    Image.new("RGB", size, colour).save(path, quality=95)


def test_cache_reused_when_nothing_changed(tmp_path, counted):
    paths = [tmp_path / f"{i}.jpg" for i in range(3)]
    for i, p in enumerate(paths):
        write_jpeg(p, (40 * i, 100, 200))
    first = build_cache(paths, 32, tmp_path / "cache", workers=0)
    assert len(counted) == 3
    again = build_cache(paths, 32, tmp_path / "cache", workers=0)
    assert len(counted) == 3  # nothing decoded
    assert again.folder == first.folder
    assert np.array_equal(again.get(1), first.get(1))


@pytest.mark.parametrize("change", ["content", "same-size-content", "mtime", "size"])
def test_cache_rebuilt_when_a_source_changes(tmp_path, counted, change):
    paths = [tmp_path / f"{i}.jpg" for i in range(3)]
    for i, p in enumerate(paths):
        write_jpeg(p, (40 * i, 100, 200))
    first = build_cache(paths, 32, tmp_path / "cache", workers=0)
    st = paths[1].stat()
    if change == "content":
        write_jpeg(paths[1], (250, 0, 0))
        os.utime(paths[1], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    elif change == "same-size-content":
        data = bytearray(paths[1].read_bytes())
        data[-200:-2] = bytes(198)  # inside the entropy-coded data; the size stays
        paths[1].write_bytes(bytes(data))
        assert paths[1].stat().st_size == st.st_size
        os.utime(paths[1], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    elif change == "mtime":
        os.utime(paths[1], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    else:
        write_jpeg(paths[1], (40, 100, 200), size=(90, 60))
        os.utime(paths[1], ns=(st.st_atime_ns, st.st_mtime_ns))  # same mtime, other size
    second = build_cache(paths, 32, tmp_path / "cache", workers=0)
    assert second.folder != first.folder
    assert len(counted) == 6  # rebuilt
    if change == "content":
        assert not np.array_equal(second.get(1), first.get(1))
        assert second.get(1)[..., 0].mean() > 200  # the new red picture
    third = build_cache(paths, 32, tmp_path / "cache", workers=0)
    assert third.folder == second.folder and len(counted) == 6


# ------------------------------------------------------------------ AMP and channels-last
@pytest.mark.parametrize("amp", ["auto", "off", "fp16", "bf16"])
@pytest.mark.parametrize("channels_last", ["auto", "on", "off"])
def test_amp_and_channels_last_off_on_cpu(amp, channels_last):
    rt = make_runtime(make_config(amp=amp, channels_last=channels_last, devices="cpu"))
    assert rt.device.type == "cpu"
    assert rt.amp_dtype is None
    assert rt.channels_last is False


def test_channels_last_gives_the_same_outputs():
    """The NHWC path (on for tensor-core GPUs) is a memory layout, not another computation:
    on CPU, where it can run, the network's outputs agree with NCHW."""
    torch.manual_seed(0)
    net = build_model("resnet18", 10, "none", "layer4,fc").eval()
    x = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    nchw = Runtime(torch.device("cpu"), None, False).to_device(x)
    nhwc = Runtime(torch.device("cpu"), None, True).to_device(x)
    assert nhwc.is_contiguous(memory_format=torch.channels_last)
    assert not nchw.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        a = net.forward_both(nchw)
        b = net.to(memory_format=torch.channels_last).forward_both(nhwc)
    for u, v in zip(a, b, strict=True):
        assert torch.allclose(u, v, atol=1e-4)
