"""A small synthetic dataset in the exact layout of the Pixel Play'25 competition.

``write_demo_dataset(out)`` writes the competition root ``out/vlg-dataset/vlg-dataset/``
(``classes.txt``, ``predicates.txt``, the two predicate matrices, ``train/<class>/NNNNN.jpg``
for the 40 seen classes, a flat ``test/`` drawn from all 50), the labelled
``out/vlg-dataset/Special-Package/Special-Package/`` package, and, outside the root,
``out/answer_key.csv`` (the hidden test labels) and ``out/odd_files.txt`` (the files made
odd on purpose, for tests).

Every image is drawn from its class's AwA2 attribute vector, one attribute at a time
(habitats -> background and scenery, colours -> body and pattern colours, shape
attributes -> size, build, posture, legs, neck, horns, fins, wings, ...), so appearance
is a function of the attributes alone: a model that learns "attribute -> appearance" on
the 40 seen classes can recognise the 10 unseen ones, which exercises the zero-shot part
of the pipeline for real. Per-image randomness (placement, scale, flip, rotation, colour
jitter, noise) keeps it from being trivial. Images are drawn at most 128 or 224 px wide
and resized; large sizes get photo-like texture at full resolution so they compress like
photos. Everything is deterministic for a given ``seed``.
"""

from __future__ import annotations

import concurrent.futures
import csv
import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .data import bundled_attributes, fill_missing

UNSEEN = (
    "chimpanzee", "collie", "fox", "gorilla", "horse",
    "moose", "rabbit", "rhinoceros", "sheep", "squirrel",
)
UNSEEN_FRACTION = 0.2  # of the test images, as in the real test set
TRAILING_SPACE_CLASS = "blue+whale"  # the real classes.txt has "blue+whale " (sic)
JPEG_QUALITY = 90
N_SPECIAL = 10
TRAIN_ODD_KINDS = (
    "grayscale_jpeg", "cmyk_jpeg", "png_named_jpg", "palette_gif_named_jpg",
    "rgba_png_named_jpg", "gray16_png_named_jpg", "exif_rotated_jpeg",
    "truncated_jpeg", "empty_file",
)

COLOURS = {  # attribute -> RGB of the body
    "black": (28, 26, 24), "white": (236, 234, 228), "blue": (55, 85, 165),
    "brown": (125, 82, 45), "gray": (128, 128, 130), "orange": (230, 128, 38),
    "red": (178, 40, 34), "yellow": (226, 198, 60),
}
HABITATS = {  # attribute -> RGB of the ground
    "ocean": (28, 72, 150), "water": (52, 112, 172), "coastal": (150, 170, 170),
    "arctic": (238, 242, 248), "forest": (38, 96, 40), "jungle": (22, 124, 52),
    "tree": (72, 118, 42), "desert": (222, 192, 128), "plains": (190, 186, 96),
    "fields": (148, 180, 68), "bush": (126, 138, 70), "mountains": (128, 128, 134),
    "ground": (132, 100, 68), "cave": (66, 54, 44),
}
SKY = (150, 192, 232)
BONE = (222, 212, 182)


# --------------------------------------------------------------------------- attributes
def binary_matrix(continuous: np.ndarray) -> np.ndarray:
    """AwA's binary matrix: 1 where a value exceeds its column mean (-1 = missing = 0)."""
    valid = continuous >= 0
    means = np.where(valid, continuous, 0).sum(0) / np.maximum(valid.sum(0), 1)
    return (valid & (continuous > means)).astype(int)


def strengths(names: list[str], matrix: np.ndarray) -> list[dict[str, float]]:
    """Per class {attribute: strength 0..1}, missing values replaced by the column mean."""
    filled = fill_missing(matrix) / 100.0
    return [dict(zip(names, row.tolist(), strict=True)) for row in filled]


def _mix(weights: dict[str, float], palette: dict[str, tuple], power: float) -> np.ndarray:
    """The palette's colours averaged with weights ``weights[k] ** power``."""
    w = np.array([max(weights[k], 0.0) ** power for k in palette]) + 1e-6
    return (w[:, None] * np.array(list(palette.values()), float)).sum(0) / w.sum()


# --------------------------------------------------------------------------- background
def _ellipse(cx, cy, a, b, theta, n=28):
    """Polygon points of an ellipse with half-axes (a, b) rotated by ``theta`` radians."""
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    x, y = a * np.cos(t), b * np.sin(t)
    c, s = math.cos(theta), math.sin(theta)
    xs, ys = (cx + c * x - s * y).tolist(), (cy + s * x + c * y).tolist()
    return list(zip(xs, ys, strict=True))


def _rgb(c, alpha=255):
    """An RGBA fill tuple from a float RGB colour, clipped to 0..255."""
    return tuple(int(v) for v in np.clip(c, 0, 255)) + (alpha,)


def _background(att, rng, w, h):
    """Habitat-coloured sky and ground with scenery; returns (RGBA image, horizon y)."""
    ground = _mix(att, HABITATS, 2.0)
    wet = max(att["ocean"], att["water"])
    sky = np.array(SKY) * (1 - 0.6 * wet) + ground * (0.25 + 0.6 * wet)
    horizon = h * rng.uniform(0.25, 0.45)
    y = np.arange(h)[:, None, None]
    img = np.where(y < horizon, sky * (0.9 + 0.15 * y / h), ground * (1.1 - 0.3 * y / h))
    im = Image.fromarray(np.broadcast_to(img, (h, w, 3)).astype(np.uint8)).convert("RGBA")
    over = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    d = ImageDraw.Draw(over)
    _draw_blotches(d, att, rng, w, h, horizon)
    _draw_scenery(d, att, rng, w, h, horizon)
    _draw_fence(d, att, w, h, horizon)
    _draw_lookalikes(d, att, rng, w, h, horizon)
    im.alpha_composite(over)
    return im, horizon


def _draw_blotches(d, att, rng, w, h, horizon):
    """Translucent ground blotches whose colours are sampled from the habitat mix."""
    keys = list(HABITATS)
    p = np.array([max(att[k], 0.0) ** 2 for k in keys]) + 1e-6
    for _ in range(14):
        col = np.array(HABITATS[keys[rng.choice(len(keys), p=p / p.sum())]])
        col = col * rng.uniform(0.8, 1.15)
        x0, y0 = rng.uniform(-0.1, 1.0) * w, rng.uniform(horizon, h)
        rx, ry = rng.uniform(0.08, 0.3) * w, rng.uniform(0.03, 0.1) * h
        d.ellipse([x0 - rx, y0 - ry, x0 + rx, y0 + ry], fill=_rgb(col, 90))


def _draw_scenery(d, att, rng, w, h, horizon):
    """Snow-capped mountains (mountains), waves (ocean, water) and trees (woods)."""
    for _ in range(int(round(3 * att["mountains"] + rng.uniform(-0.3, 0.3)))):
        x0, mw = rng.uniform(0, w), rng.uniform(0.25, 0.5) * w
        top = horizon - rng.uniform(0.15, 0.3) * h
        d.polygon([(x0 - mw / 2, horizon), (x0, top), (x0 + mw / 2, horizon)],
                  fill=_rgb((112, 112, 120), 230))
        d.polygon([(x0 - mw / 8, top + (horizon - top) / 4), (x0, top),
                   (x0 + mw / 8, top + (horizon - top) / 4)], fill=(240, 240, 245, 230))
    wet = max(att["ocean"], att["water"])
    for _ in range(int(round(4 * wet + rng.uniform(-0.3, 0.3)))):
        y0, x0 = rng.uniform(horizon, h), rng.uniform(-0.2, 0.6) * w
        pts = [(x0 + k * w / 12, y0 + (k % 2) * h / 60) for k in range(8)]
        d.line(pts, fill=(200, 225, 245, 200), width=max(1, w // 80))
    woods = max(att["tree"], att["forest"], att["jungle"])
    for _ in range(int(round(3 * woods + rng.uniform(-0.3, 0.3)))):
        x0, tw = rng.uniform(0, w), w * rng.uniform(0.03, 0.05)
        y1 = horizon + rng.uniform(0.0, 0.15) * h
        d.rectangle([x0 - tw / 2, y1 - 0.3 * h, x0 + tw / 2, y1], fill=(88, 60, 34, 255))
        r = w * rng.uniform(0.08, 0.13)
        d.ellipse([x0 - r, y1 - 0.3 * h - r, x0 + r, y1 - 0.3 * h + r],
                  fill=_rgb(np.array((34, 110, 40)) * rng.uniform(0.8, 1.2), 245))


def _draw_fence(d, att, w, h, horizon):
    """A white fence along the horizon for ``domestic`` animals, opaque as it is strong."""
    if att["domestic"] <= 0.25:
        return
    alpha = int(255 * min(1.0, att["domestic"] * 1.5))
    yf, fh = horizon + 0.05 * h, 0.1 * h
    for k in range(9):
        d.rectangle([k * w / 8 - w / 80, yf - fh, k * w / 8 + w / 80, yf],
                    fill=(236, 230, 214, alpha))
    for yy in (yf - 0.8 * fh, yf - 0.4 * fh):
        d.rectangle([0, yy, w, yy + max(1, h / 90)], fill=(236, 230, 214, alpha))


def _draw_lookalikes(d, att, rng, w, h, horizon):
    """Small body-coloured animals in the distance, as many as ``group`` asks for."""
    body = _mix(att, COLOURS, 3.0)
    for _ in range(int(round(3 * att["group"] + rng.uniform(-0.4, 0.4)))):
        s = w * rng.uniform(0.06, 0.1)
        x0, y0 = rng.uniform(0.05, 0.95) * w, horizon + rng.uniform(0.0, 0.08) * h
        col = _rgb(body * rng.uniform(0.85, 1.1))
        for dx in (-0.6, -0.3, 0.3, 0.6):
            d.line([(x0 + dx * s, y0), (x0 + dx * s, y0 + s)], fill=col, width=max(1, w // 90))
        d.ellipse([x0 - s, y0 - s / 2, x0 + s, y0 + s / 2], fill=col)
        d.ellipse([x0 + 0.8 * s, y0 - 0.9 * s, x0 + 1.4 * s, y0 - 0.3 * s], fill=col)


# --------------------------------------------------------------------------- animal
@dataclass(frozen=True)
class _Frame:
    """The animal's body on its layer: an ellipse at (cx, cy), tilted by theta."""

    u: int  # min(layer width, height), px: the unit of all sizes
    cx: float
    cy: float
    a: float  # half-axes of the body ellipse, px
    b: float
    theta: float  # radians, negative = front end up (image y points down)
    upright: float  # 0 = on all fours .. 1 = bipedal
    lw: int  # limb width, px
    body: np.ndarray  # RGB
    dark: np.ndarray  # RGB of legs, tail, fins

    def at(self, x, y):
        """Body frame (x forward, y belly-down) -> layer coordinates."""
        ct, st = math.cos(self.theta), math.sin(self.theta)
        return self.cx + ct * x - st * y, self.cy + st * x + ct * y


def _frame(att, rng, w, h) -> _Frame:
    """Body colour (colours), size (big, small), build (bulbous, lean), posture (bipedal)."""
    u = min(w, h)
    body = _mix(att, COLOURS, 3.0) * rng.uniform(0.9, 1.1, 3)
    a = u * np.clip(0.17 + 0.2 * att["big"] - 0.08 * att["small"], 0.08, 0.36)
    a *= rng.uniform(0.85, 1.15)
    b = a * np.clip(0.42 + 0.3 * att["bulbous"] - 0.12 * att["lean"], 0.25, 0.8)
    upright = float(np.clip((att["bipedal"] - 0.25) / 0.45, 0, 1))
    lw = max(2, int(b * (0.25 + 0.15 * att["bulbous"])))
    return _Frame(u, w / 2, h / 2, a, b, -1.35 * upright, upright, lw, body, body * 0.7)


def _animal(att, rng, w, h):
    """The animal on a transparent (w, h) layer, centred, before flip/rotation/placement."""
    f = _frame(att, rng, w, h)
    layer = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    bottom = _draw_legs(d, att, f)
    _draw_tail_fins_wings_arms(d, att, f)
    head = _draw_body_and_head(d, att, f)
    _draw_patterns(layer, att, rng, f)
    over = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    _draw_skin(ImageDraw.Draw(over), att, f)
    _draw_face(ImageDraw.Draw(over), att, f, *head)
    layer.alpha_composite(over)
    arr = np.asarray(layer).astype(np.float32)  # fur grain inside the silhouette
    fur = rng.standard_normal((h, w, 1), dtype=np.float32) * (6 + 38 * att["furry"])
    arr[..., :3] += fur * (arr[..., 3:] > 0)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)), bottom


def _draw_legs(d, att, f: _Frame) -> float:
    """Legs (longleg, walks, 2 or 4) with hooves or paws; returns the lowest y below cy."""
    a, b, up, lw = f.a, f.b, f.upright, f.lw
    leg_len = f.u * (0.05 + 0.25 * att["longleg"]) * min(1.0, 1.4 * att["walks"] + 0.1)
    bottom = max(y for _, y in _ellipse(f.cx, f.cy, a, b, f.theta)) - f.cy
    if leg_len <= f.u * 0.02:
        return bottom
    four = att["quadrapedal"] >= att["bipedal"]
    for s in (0.6, 0.4, -0.45, -0.65) if four else (0.15, -0.15):
        x0, y0 = f.at(s * a * (1 - up) - 0.85 * a * up, 0.6 * b * (1 - up) + s * b * 2 * up)
        d.line([(x0, y0), (x0, y0 + leg_len)], fill=_rgb(f.dark), width=lw)
        bottom = max(bottom, y0 + leg_len - f.cy)
        foot = lw * 0.7
        if att["hooves"] > 0.3:
            d.rectangle([x0 - foot, y0 + leg_len - foot, x0 + foot, y0 + leg_len + foot * 0.5],
                        fill=(40, 30, 24, 255))
        elif max(att["paws"], att["pads"]) > 0.3:
            d.ellipse([x0 - foot * 1.3, y0 + leg_len - foot, x0 + foot * 1.3,
                       y0 + leg_len + foot], fill=_rgb(f.dark * 0.9))
    return bottom


def _draw_tail_fins_wings_arms(d, att, f: _Frame) -> None:
    """Tail (tail, furry), tail and belly fins (flippers), wings (flys), an arm (hands)."""
    a, b, dark = f.a, f.b, f.dark
    tail = f.u * (0.02 + 0.22 * att["tail"])
    x0, y0 = f.at(-0.95 * a, -0.1 * b)
    x1, y1 = x0 - tail * 0.8, y0 + tail * 0.6
    d.line([(x0, y0), (x1, y1)], fill=_rgb(dark), width=max(1, int(f.lw * (0.3 + att["furry"]))))
    if att["flippers"] > 0.2:
        s = a * 0.6 * att["flippers"]
        x0, y0 = f.at(-a, 0)
        d.polygon([(x0 + s * 0.3, y0), (x0 - s, y0 - s), (x0 - s, y0 + s)], fill=_rgb(dark))
        x0, y0 = f.at(0.2 * a, 0.8 * b)
        d.polygon([(x0 - s, y0), (x0 + s * 0.4, y0), (x0 - s * 0.6, y0 + s)], fill=_rgb(dark))
    if att["flys"] > 0.2:
        s = a * 1.4 * att["flys"]
        x0, y0 = f.at(0, -0.5 * b)
        for sx in (-1, 1):
            d.polygon([(x0, y0), (x0 + sx * s, y0 - s * 0.9), (x0 + sx * s * 0.6, y0 - 0.2 * s)],
                      fill=_rgb(dark * 0.8))
    if att["hands"] > 0.3:
        arm = a * (0.4 + 0.8 * att["hands"])
        x0, y0 = f.at(0.45 * a, 0.2 * b)
        d.line([(x0, y0), (x0 + arm * 0.7, y0 + arm * 0.6)], fill=_rgb(dark),
               width=max(2, f.lw // 2))


def _draw_body_and_head(d, att, f: _Frame) -> tuple[float, float, float]:
    """Neck (longneck), body and head; returns the head's centre x, y and radius."""
    neck = f.u * (0.02 + 0.3 * att["longneck"])
    phi = -0.85 + 0.5 * f.theta
    x0, y0 = f.at(0.8 * f.a, -0.2 * f.b)
    hx, hy = x0 + neck * math.cos(phi), y0 + neck * math.sin(phi)
    rh = float(np.clip(f.b * 0.55, f.u * 0.03, f.u * 0.12))
    d.line([(x0, y0), (hx, hy)], fill=_rgb(f.body), width=max(2, int(rh * 1.1)))
    d.polygon(_ellipse(f.cx, f.cy, f.a, f.b, f.theta), fill=_rgb(f.body))
    d.polygon(_ellipse(hx + rh * 0.3, hy, rh * 1.25, rh * 0.9, 0.25), fill=_rgb(f.body))
    return hx, hy, rh


def _draw_patterns(layer, att, rng, f: _Frame) -> None:
    """Stripes, spots and patches in the second colour, clipped to the silhouette."""
    a, b, u, cx, cy = f.a, f.b, f.u, f.cx, f.cy
    ranked = sorted(COLOURS, key=lambda k: -att[k])
    second = ranked[1] if att[ranked[1]] > 0.35 * att[ranked[0]] else None
    pattern = np.array(COLOURS[second]) if second else 255 - f.body
    pat = Image.new("RGBA", layer.size, (0, 0, 0, 0))
    dp = ImageDraw.Draw(pat)
    pcol = _rgb(pattern * rng.uniform(0.9, 1.1, 3))
    if att["stripes"] > 0.15:
        n = 5 + int(4 * att["stripes"])
        sw = a * 2.2 / n * (0.25 + 0.35 * att["stripes"])
        for k in range(n + 2):
            x = cx - 1.3 * a + k * 2.6 * a / n
            dp.polygon([(x, cy - u), (x + sw, cy - u), (x + sw + 0.2 * a, cy + u),
                        (x + 0.2 * a, cy + u)], fill=pcol)
    for _ in range(int(round(28 * att["spots"]))):
        r = u * rng.uniform(0.01, 0.022)
        x, y = f.at(rng.uniform(-1, 1) * a, rng.uniform(-1, 1) * b)
        dp.ellipse([x - r, y - r, x + r, y + r], fill=pcol)
    for _ in range(int(round(3.5 * att["patches"]))):
        x, y = f.at(rng.uniform(-0.8, 0.8) * a, rng.uniform(-0.8, 0.8) * b)
        rx, ry = a * rng.uniform(0.25, 0.45), b * rng.uniform(0.35, 0.7)
        dp.ellipse([x - rx, y - ry, x + rx, y + ry], fill=pcol)
    pa = np.minimum(np.asarray(pat.getchannel("A")), np.asarray(layer.getchannel("A")))
    pat.putalpha(Image.fromarray(pa))
    layer.alpha_composite(pat)


def _draw_skin(d, att, f: _Frame) -> None:
    """A sheen on the back (hairless, toughskin) and wrinkles on the flank (toughskin)."""
    shine = max(att["hairless"], 0.6 * att["toughskin"])
    if shine > 0.2:
        x, y = f.at(0.1 * f.a, -0.45 * f.b)
        d.polygon(_ellipse(x, y, f.a * 0.55, f.b * 0.22, f.theta),
                  fill=(255, 255, 255, int(110 * shine)))
    for k in range(int(round(5 * att["toughskin"]))):
        x, y = f.at((-0.6 + 0.3 * k) * f.a, 0.1 * f.b)
        d.arc([x - f.b * 0.2, y - f.b * 0.5, x + f.b * 0.2, y + f.b * 0.5], 240, 300,
              fill=_rgb(f.dark * 0.6, 220), width=max(1, f.lw // 4))


def _draw_face(d, att, f: _Frame, hx: float, hy: float, rh: float) -> None:
    """Horns (horns) and a tusk (tusks) in bone colour, and the eye, on the head."""
    if att["horns"] > 0.2:
        hl = f.u * (0.04 + 0.13 * att["horns"])
        for dx in (-0.4, 0.3):
            bx, by = hx + dx * rh, hy - 0.7 * rh
            d.polygon([(bx - rh * 0.22, by), (bx + rh * 0.22, by), (bx + dx * rh * 0.5, by - hl)],
                      fill=_rgb(BONE))
    if att["tusks"] > 0.2:
        tl = f.u * 0.12 * att["tusks"]
        d.line([(hx + rh * 0.6, hy + rh * 0.4), (hx + rh * 0.9, hy + rh * 0.4 + tl)],
               fill=_rgb(BONE), width=max(1, int(rh * 0.3)))
    e = max(1.0, rh * 0.18)
    d.ellipse([hx + rh * 0.4 - e, hy - rh * 0.3 - e, hx + rh * 0.4 + e, hy - rh * 0.3 + e],
              fill=(10, 10, 10, 255))


# --------------------------------------------------------------------------- whole image
def render(att: dict[str, float], rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """One RGB image of size (width, height) of an animal with attribute strengths ``att``."""
    width, height = size
    bw = 128 if width <= 256 else 224
    bh = max(16, round(bw * height / width))
    im, horizon = _background(att, rng, bw, bh)
    animal, bottom = _animal(att, rng, bw, bh)
    if rng.random() < 0.5:
        animal = animal.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    u = min(bw, bh)
    tx = rng.uniform(-0.18, 0.18) * bw
    ground = rng.uniform(max(horizon + 0.12 * bh, 0.55 * bh), 0.88 * bh)
    lift = u * 0.12 * att["hops"]
    ty = ground - bottom - lift - bh / 2
    if lift > u * 0.03:  # shadow under a hopping animal
        sh = Image.new("RGBA", (bw, bh), (0, 0, 0, 0))
        ImageDraw.Draw(sh).ellipse([bw / 2 + tx - 0.15 * u, ground - 0.03 * u,
                                    bw / 2 + tx + 0.15 * u, ground + 0.03 * u],
                                   fill=(0, 0, 0, 90))
        im.alpha_composite(sh)
    animal = animal.rotate(rng.uniform(-12, 12), resample=Image.Resampling.BILINEAR,
                           translate=(tx, ty))
    im.alpha_composite(animal)

    arr = np.asarray(im.convert("RGB")).astype(np.float32)
    arr *= (1 - 0.3 * att["nocturnal"]) * rng.uniform(0.85, 1.15) * rng.uniform(0.93, 1.07, 3)
    arr += rng.uniform(2, 6) * rng.standard_normal(arr.shape, dtype=np.float32)
    out = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    if (bw, bh) != (width, height):
        out = out.resize((width, height), Image.Resampling.BICUBIC)
    if width > 2 * bw:  # photo-like texture at full resolution
        out = _add_texture(out, rng)
    return out


def _add_texture(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Smooth lighting variation, mid-scale mottling and grain, one value per pixel."""
    w, h = im.size

    def smooth(cell: int, resample: Image.Resampling) -> np.ndarray:
        small = rng.standard_normal((max(2, h // cell), max(2, w // cell)), dtype=np.float32)
        return np.asarray(Image.fromarray(small, "F").resize((w, h), resample))

    noise = 10 * smooth(96, Image.Resampling.BICUBIC)
    noise += 5 * smooth(6, Image.Resampling.BILINEAR)
    noise += 3 * rng.standard_normal((h, w), dtype=np.float32)
    arr = np.asarray(im, np.int16) + noise.astype(np.int16)[..., None]
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


# --------------------------------------------------------------------------- writing
def _size(rng: np.random.Generator, width: tuple[int, int]) -> tuple[int, int]:
    """A random (width, height): width uniform in ``width``, height/width in 0.6..1.6."""
    w = int(rng.integers(width[0], width[1] + 1))
    return w, max(8, round(w * rng.uniform(0.6, 1.6)))


def _make_odd(path: Path, kind: str) -> None:
    """Rewrite the (valid, RGB) JPEG at ``path`` as an odd file of the given kind."""
    data = path.read_bytes()
    im = Image.open(io.BytesIO(data)).convert("RGB")
    if kind == "grayscale_jpeg":
        im.convert("L").save(path, "JPEG", quality=JPEG_QUALITY)
    elif kind == "cmyk_jpeg":
        im.convert("CMYK").save(path, "JPEG", quality=JPEG_QUALITY)
    elif kind == "png_named_jpg":
        im.save(path, "PNG")
    elif kind == "palette_gif_named_jpg":
        im.convert("P", palette=Image.Palette.ADAPTIVE, colors=64).save(path, "GIF")
    elif kind == "rgba_png_named_jpg":
        rgba = im.convert("RGBA")
        a = np.full((im.height, im.width), 255, np.uint8)
        a[: im.height // 5] = 0  # transparent band on top, colours kept underneath
        rgba.putalpha(Image.fromarray(a))
        rgba.save(path, "PNG")
    elif kind == "gray16_png_named_jpg":
        g = np.asarray(im.convert("L")).astype(np.uint16) * 257
        Image.fromarray(g).save(path, "PNG")  # mode I;16
    elif kind == "exif_rotated_jpeg":
        exif = Image.Exif()
        exif[0x0112] = 6  # Orientation: rotate 90 CW to display
        im.transpose(Image.Transpose.ROTATE_90).save(
            path, "JPEG", quality=JPEG_QUALITY, exif=exif.tobytes())
    elif kind == "truncated_jpeg":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "empty_file":
        path.write_bytes(b"")
    else:
        raise ValueError(kind)


# Draws one image of a class into a file: (class index, RNG stream, image number, path).
_Save = Callable[[int, int, int, Path], None]


def _draw(job: tuple[dict[str, float], tuple[int, int, int], tuple[int, int], Path]) -> None:
    """One image: (class strengths, RNG key (seed, stream, number), width range, path)."""
    att, key, width, path = job
    r = np.random.default_rng(key)  # own stream: images independent of order
    render(att, r, _size(r, width)).save(path, "JPEG", quality=JPEG_QUALITY)


def _write_class_files(root: Path, classes: list[str], predicates: list[str],
                       matrix: np.ndarray) -> None:
    """classes.txt, predicates.txt and the continuous and binary predicate matrices."""
    with open(root / "classes.txt", "w") as f:
        for i, c in enumerate(classes, 1):
            f.write(f"{i:6d}\t{c}{' ' if c == TRAILING_SPACE_CLASS else ''}\n")
    with open(root / "predicates.txt", "w") as f:
        f.writelines(f"{i:6d}\t{p}\n" for i, p in enumerate(predicates, 1))
    with open(root / "predicate-matrix-continuous.txt", "w") as f:
        f.writelines(" ".join(f"{v:.2f}" for v in row) + "\n" for row in matrix)
    with open(root / "predicate-matrix-binary.txt", "w") as f:
        f.writelines(" ".join(str(v) for v in row) + "\n" for row in binary_matrix(matrix))


def _write_train(root: Path, classes: list[str], seen: list[int], counts: np.ndarray,
                 save: _Save) -> dict[str, list[Path]]:
    """train/<class>/NNNNN.jpg, numbered across classes; returns the files per class."""
    train_files: dict[str, list[Path]] = {}
    number = 0
    for ci, n in zip(seen, counts.astype(int), strict=True):
        folder = root / "train" / classes[ci]
        folder.mkdir(parents=True, exist_ok=True)
        train_files[classes[ci]] = []
        for _ in range(n):
            number += 1
            path = folder / f"{number:05d}.jpg"
            save(ci, 1, number, path)
            train_files[classes[ci]].append(path)
    return train_files


def _write_test(out: Path, root: Path, classes: list[str], labels: np.ndarray,
                save: _Save) -> None:
    """test/NNNNN.jpg and their labels in out/answer_key.csv (image_id,class)."""
    (root / "test").mkdir(exist_ok=True)
    with open(out / "answer_key.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image_id", "class"])
        for k, ci in enumerate(labels, 1):
            save(ci, 2, k, root / "test" / f"{k:05d}.jpg")
            writer.writerow([f"{k:05d}.jpg", classes[ci]])


def _write_special(special: Path, classes: list[str], picks: np.ndarray, save: _Save) -> None:
    """The Special-Package: final_examples/NNNNN.jpg and labels.txt (name<TAB>class)."""
    (special / "final_examples").mkdir(parents=True, exist_ok=True)
    with open(special / "labels.txt", "w") as f:
        for k, ci in enumerate(picks, 1):
            save(int(ci), 3, k, special / "final_examples" / f"{k:05d}.jpg")
            f.write(f"{k:05d}.jpg\t{classes[ci]}\n")


def _make_odd_files(root: Path, train_files: dict[str, list[Path]], rng: np.random.Generator,
                    n_test: int) -> list[tuple[Path, str]]:
    """One train file per TRAIN_ODD_KINDS, junk files, a truncated test image: (path, kind)."""
    odd: list[tuple[Path, str]] = []
    names = sorted(train_files)
    for j, kind in enumerate(TRAIN_ODD_KINDS):  # each in the first file of its class
        path = train_files[names[(7 * j) % len(names)]][0]
        _make_odd(path, kind)
        odd.append((path, kind))
    for folder in (root / "train" / names[0], root / "test"):
        (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(64))
        (folder / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(56))
        odd += [(folder / ".DS_Store", "junk_file"), (folder / "Thumbs.db", "junk_file")]
    if n_test:
        path = root / "test" / f"{int(rng.integers(1, n_test + 1)):05d}.jpg"
        _make_odd(path, "truncated_jpeg")
        odd.append((path, "truncated_test_jpeg"))
    return odd


def write_demo_dataset(
    out: str | Path,
    *,
    train_per_class: int = 24,
    n_test: int = 300,
    width: tuple[int, int] = (72, 128),
    seed: int = 0,
    odd_files: bool = True,
    workers: int = 1,
) -> Path:
    """Write a synthetic Pixel Play'25 dataset under ``out``; return the competition root.

    The competition root is ``out/vlg-dataset/vlg-dataset`` (the folder holding
    ``classes.txt``, ``train/``, ``test/`` and the predicate files). The 40 seen classes
    get about ``train_per_class`` images each (0.6x-1.4x, seeded); ``n_test`` test images
    come from all 50 classes, about 20% from the 10 unseen ones. Image widths are uniform
    in ``width``, height/width ratios in 0.6-1.6. ``out/answer_key.csv`` (``image_id,class``)
    holds the test labels; with ``odd_files`` a few files are made odd (grayscale, CMYK,
    PNG/GIF under a .jpg name, RGBA, 16-bit, EXIF-rotated, truncated, empty, junk files)
    and listed in ``out/odd_files.txt`` as ``<path relative to out>\\t<kind>``.
    ``workers`` > 1 draws the images in that many processes (the same files).
    """
    out = Path(out)
    root = out / "vlg-dataset" / "vlg-dataset"
    root.mkdir(parents=True, exist_ok=True)
    classes, predicates, matrix = bundled_attributes()
    _write_class_files(root, classes, predicates, matrix)
    class_strengths = strengths(predicates, matrix)
    seen = [i for i, c in enumerate(classes) if c not in UNSEEN]
    unseen = [i for i, c in enumerate(classes) if c in UNSEEN]

    rng = np.random.default_rng(seed)
    counts = np.maximum(1, np.round(train_per_class * rng.uniform(0.6, 1.4, len(seen))))
    n_unseen = int(round(UNSEEN_FRACTION * n_test))
    test_labels = np.concatenate([
        rng.choice(seen, n_test - n_unseen),
        np.resize(rng.permutation(unseen), n_unseen),
    ]).astype(int)
    rng.shuffle(test_labels)

    jobs: list[tuple] = []  # the images are drawn after the folders and lists are written

    def save(ci: int, stream: int, k: int, path: Path) -> None:
        jobs.append((class_strengths[ci], (seed, stream, k), width, path))

    train_files = _write_train(root, classes, seen, counts, save)
    _write_test(out, root, classes, test_labels, save)
    special = out / "vlg-dataset" / "Special-Package" / "Special-Package"
    _write_special(special, classes, rng.choice(len(classes), N_SPECIAL), save)
    if workers > 1:  # each image has its own RNG stream: the same files in any order
        with concurrent.futures.ProcessPoolExecutor(workers) as pool:
            list(pool.map(_draw, jobs, chunksize=32))
    else:
        for job in jobs:
            _draw(job)
    odd = _make_odd_files(root, train_files, rng, n_test) if odd_files else []
    with open(out / "odd_files.txt", "w") as f:
        f.writelines(f"{p.relative_to(out).as_posix()}\t{k}\n" for p, k in odd)
    return root
