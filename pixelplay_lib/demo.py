"""A small synthetic dataset in the exact layout of the Pixel Play'25 competition.

``write_demo_dataset(out)`` writes ``out/vlg-dataset/vlg-dataset/`` (``classes.txt``,
``predicates.txt``, the two predicate matrices, ``train/<class>/NNNNN.jpg`` for the 40
seen classes, a flat ``test/`` drawn from all 50), the extra labelled
``out/vlg-dataset/Special-Package/Special-Package/`` package, and, outside the
competition root, ``out/answer_key.csv`` (the hidden labels of the test images) and
``out/odd_files.txt`` (which files were made odd on purpose, for tests).

Why the pictures look the way they do: every image is *drawn from its class's AwA2
attribute vector*, one attribute at a time, so that appearance is a compositional
function of the attributes and nothing else about the class. The habitat attributes
(ocean, arctic, forest, desert, plains, mountains, cave, ...) mix the background
colour and add scenery (trees, mountains, waves, a fence for ``domestic``, look-alikes
for ``group``); the colour attributes mix the body colour and pick the colour of the
stripes / spots / patches, whose amounts follow their own attributes; shape attributes
set size (big, small), build (bulbous, lean), posture (bipedal), legs (longleg, walks),
neck, horns, tusks, tail, flippers, wings and arms (hands); ``furry`` adds fur grain,
``hairless`` / ``toughskin`` a sheen and wrinkles; ``hops`` lifts the animal off the
ground and ``nocturnal`` darkens the scene. A model that learns "attribute ->
appearance" on the 40 seen classes can therefore recognise the 10 unseen ones from their
attribute vectors alone: the demo exercises the zero-shot part of the pipeline for real.
Per-image randomness (position, scale, flip, rotation, colour jitter, background
blotches, noise) keeps it from being trivial.

Images are drawn at a low resolution (at most 128 or 224 px wide) with PIL and resized
to their final size; large sizes (``width=(500, 1600)``, for benchmarks) get smooth
lighting variation plus grain added at full resolution, so they compress like photos
rather than like flat colour. Everything is deterministic for a given ``seed``.
"""

from __future__ import annotations

import csv
import io
import math
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
    w = np.array([max(weights[k], 0.0) ** power for k in palette]) + 1e-6
    return (w[:, None] * np.array(list(palette.values()), float)).sum(0) / w.sum()


# --------------------------------------------------------------------------- rendering
def _ellipse(cx, cy, a, b, theta, n=28):
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    x, y = a * np.cos(t), b * np.sin(t)
    c, s = math.cos(theta), math.sin(theta)
    xs, ys = (cx + c * x - s * y).tolist(), (cy + s * x + c * y).tolist()
    return list(zip(xs, ys, strict=True))


def _rgb(c, alpha=255):
    return tuple(int(v) for v in np.clip(c, 0, 255)) + (alpha,)


def _background(att, rng, w, h):
    """Habitat colours, scenery and look-alikes (group) on an RGB image."""
    ground = _mix(att, HABITATS, 2.0)
    wet = max(att["ocean"], att["water"])
    sky = np.array(SKY) * (1 - 0.6 * wet) + ground * (0.25 + 0.6 * wet)
    horizon = h * rng.uniform(0.25, 0.45)
    y = np.arange(h)[:, None, None]
    img = np.where(y < horizon, sky * (0.9 + 0.15 * y / h), ground * (1.1 - 0.3 * y / h))
    img = np.broadcast_to(img, (h, w, 3)).astype(np.uint8)
    im = Image.fromarray(img).convert("RGBA")
    over = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    d = ImageDraw.Draw(over)
    keys = list(HABITATS)
    p = np.array([max(att[k], 0.0) ** 2 for k in keys]) + 1e-6
    for _ in range(14):  # blotches sampled from the habitat mix
        col = np.array(HABITATS[keys[rng.choice(len(keys), p=p / p.sum())]])
        col = col * rng.uniform(0.8, 1.15)
        x0, y0 = rng.uniform(-0.1, 1.0) * w, rng.uniform(horizon, h)
        rx, ry = rng.uniform(0.08, 0.3) * w, rng.uniform(0.03, 0.1) * h
        d.ellipse([x0 - rx, y0 - ry, x0 + rx, y0 + ry], fill=_rgb(col, 90))
    for _ in range(int(round(3 * att["mountains"] + rng.uniform(-0.3, 0.3)))):
        x0, mw = rng.uniform(0, w), rng.uniform(0.25, 0.5) * w
        top = horizon - rng.uniform(0.15, 0.3) * h
        d.polygon([(x0 - mw / 2, horizon), (x0, top), (x0 + mw / 2, horizon)],
                  fill=_rgb((112, 112, 120), 230))
        d.polygon([(x0 - mw / 8, top + (horizon - top) / 4), (x0, top),
                   (x0 + mw / 8, top + (horizon - top) / 4)], fill=(240, 240, 245, 230))
    for _ in range(int(round(4 * wet + rng.uniform(-0.3, 0.3)))):  # waves
        y0, x0 = rng.uniform(horizon, h), rng.uniform(-0.2, 0.6) * w
        pts = [(x0 + k * w / 12, y0 + (k % 2) * h / 60) for k in range(8)]
        d.line(pts, fill=(200, 225, 245, 200), width=max(1, w // 80))
    woods = max(att["tree"], att["forest"], att["jungle"])
    for _ in range(int(round(3 * woods + rng.uniform(-0.3, 0.3)))):  # trees
        x0, tw = rng.uniform(0, w), w * rng.uniform(0.03, 0.05)
        y1 = horizon + rng.uniform(0.0, 0.15) * h
        d.rectangle([x0 - tw / 2, y1 - 0.3 * h, x0 + tw / 2, y1], fill=(88, 60, 34, 255))
        r = w * rng.uniform(0.08, 0.13)
        d.ellipse([x0 - r, y1 - 0.3 * h - r, x0 + r, y1 - 0.3 * h + r],
                  fill=_rgb(np.array((34, 110, 40)) * rng.uniform(0.8, 1.2), 245))
    if att["domestic"] > 0.25:  # a fence
        alpha = int(255 * min(1.0, att["domestic"] * 1.5))
        yf, fh = horizon + 0.05 * h, 0.1 * h
        for k in range(9):
            d.rectangle([k * w / 8 - w / 80, yf - fh, k * w / 8 + w / 80, yf],
                        fill=(236, 230, 214, alpha))
        for yy in (yf - 0.8 * fh, yf - 0.4 * fh):
            d.rectangle([0, yy, w, yy + max(1, h / 90)], fill=(236, 230, 214, alpha))
    body = _mix(att, COLOURS, 3.0)
    for _ in range(int(round(3 * att["group"] + rng.uniform(-0.4, 0.4)))):  # look-alikes
        s = w * rng.uniform(0.06, 0.1)
        x0, y0 = rng.uniform(0.05, 0.95) * w, horizon + rng.uniform(0.0, 0.08) * h
        col = _rgb(body * rng.uniform(0.85, 1.1))
        for dx in (-0.6, -0.3, 0.3, 0.6):
            d.line([(x0 + dx * s, y0), (x0 + dx * s, y0 + s)], fill=col, width=max(1, w // 90))
        d.ellipse([x0 - s, y0 - s / 2, x0 + s, y0 + s / 2], fill=col)
        d.ellipse([x0 + 0.8 * s, y0 - 0.9 * s, x0 + 1.4 * s, y0 - 0.3 * s], fill=col)
    im.alpha_composite(over)
    return im, horizon


def _animal(att, rng, w, h):
    """The animal on a transparent (w, h) layer, centred, before flip/rotation/placement."""
    u = min(w, h)
    layer = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    cx, cy = w / 2, h / 2
    ranked = sorted(COLOURS, key=lambda k: -att[k])
    body = _mix(att, COLOURS, 3.0) * rng.uniform(0.9, 1.1, 3)
    second = ranked[1] if att[ranked[1]] > 0.35 * att[ranked[0]] else None
    pattern = np.array(COLOURS[second]) if second else 255 - body
    dark = body * 0.7

    a = u * np.clip(0.17 + 0.2 * att["big"] - 0.08 * att["small"], 0.08, 0.36) / 1.0
    a *= rng.uniform(0.85, 1.15)
    b = a * np.clip(0.42 + 0.3 * att["bulbous"] - 0.12 * att["lean"], 0.25, 0.8)
    upright = float(np.clip((att["bipedal"] - 0.25) / 0.45, 0, 1))
    theta = -1.35 * upright  # front end up, radians (image y points down)
    ct, st = math.cos(theta), math.sin(theta)

    def at(x, y):  # body frame (x forward, y belly-down) -> layer coordinates
        return cx + ct * x - st * y, cy + st * x + ct * y

    lw = max(2, int(b * (0.25 + 0.15 * att["bulbous"])))
    # legs
    leg_len = u * (0.05 + 0.25 * att["longleg"]) * min(1.0, 1.4 * att["walks"] + 0.1)
    n_legs = 4 if att["quadrapedal"] >= att["bipedal"] else 2
    xs = (0.6, 0.4, -0.45, -0.65) if n_legs == 4 else (0.15, -0.15)
    bottom = max(y for _, y in _ellipse(cx, cy, a, b, theta)) - cy
    for s in xs:
        bx = s * a * (1 - upright) - 0.85 * a * upright
        by = 0.6 * b * (1 - upright) + s * b * 2 * upright
        x0, y0 = at(bx, by)
        if leg_len > u * 0.02:
            d.line([(x0, y0), (x0, y0 + leg_len)], fill=_rgb(dark), width=lw)
            bottom = max(bottom, y0 + leg_len - cy)
            foot = lw * 0.7
            if att["hooves"] > 0.3:
                d.rectangle([x0 - foot, y0 + leg_len - foot, x0 + foot, y0 + leg_len + foot * 0.5],
                            fill=(40, 30, 24, 255))
            elif max(att["paws"], att["pads"]) > 0.3:
                d.ellipse([x0 - foot * 1.3, y0 + leg_len - foot, x0 + foot * 1.3,
                           y0 + leg_len + foot], fill=_rgb(dark * 0.9))
    # tail
    tail = u * (0.02 + 0.22 * att["tail"])
    x0, y0 = at(-0.95 * a, -0.1 * b)
    x1, y1 = x0 - tail * 0.8, y0 + tail * 0.6
    d.line([(x0, y0), (x1, y1)], fill=_rgb(dark), width=max(1, int(lw * (0.3 + att["furry"]))))
    # flippers: tail fin and belly fin
    if att["flippers"] > 0.2:
        f = a * 0.6 * att["flippers"]
        x0, y0 = at(-a, 0)
        d.polygon([(x0 + f * 0.3, y0), (x0 - f, y0 - f), (x0 - f, y0 + f)], fill=_rgb(dark))
        x0, y0 = at(0.2 * a, 0.8 * b)
        d.polygon([(x0 - f, y0), (x0 + f * 0.4, y0), (x0 - f * 0.6, y0 + f)], fill=_rgb(dark))
    # wings
    if att["flys"] > 0.2:
        f = a * 1.4 * att["flys"]
        x0, y0 = at(0, -0.5 * b)
        for sx in (-1, 1):
            d.polygon([(x0, y0), (x0 + sx * f, y0 - f * 0.9), (x0 + sx * f * 0.6, y0 - 0.2 * f)],
                      fill=_rgb(dark * 0.8))
    # arms
    if att["hands"] > 0.3:
        arm = a * (0.4 + 0.8 * att["hands"])
        x0, y0 = at(0.45 * a, 0.2 * b)
        d.line([(x0, y0), (x0 + arm * 0.7, y0 + arm * 0.6)], fill=_rgb(dark), width=max(2, lw // 2))
    # neck and head
    neck = u * (0.02 + 0.3 * att["longneck"])
    phi = -0.85 + 0.5 * theta
    x0, y0 = at(0.8 * a, -0.2 * b)
    hx, hy = x0 + neck * math.cos(phi), y0 + neck * math.sin(phi)
    rh = float(np.clip(b * 0.55, u * 0.03, u * 0.12))
    d.line([(x0, y0), (hx, hy)], fill=_rgb(body), width=max(2, int(rh * 1.1)))
    d.polygon(_ellipse(cx, cy, a, b, theta), fill=_rgb(body))
    d.polygon(_ellipse(hx + rh * 0.3, hy, rh * 1.25, rh * 0.9, 0.25), fill=_rgb(body))

    # patterns, clipped to the body silhouette
    pat = Image.new("RGBA", (w, h), (0, 0, 0, 0))
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
        x, y = at(rng.uniform(-1, 1) * a, rng.uniform(-1, 1) * b)
        dp.ellipse([x - r, y - r, x + r, y + r], fill=pcol)
    for _ in range(int(round(3.5 * att["patches"]))):
        x, y = at(rng.uniform(-0.8, 0.8) * a, rng.uniform(-0.8, 0.8) * b)
        rx, ry = a * rng.uniform(0.25, 0.45), b * rng.uniform(0.35, 0.7)
        dp.ellipse([x - rx, y - ry, x + rx, y + ry], fill=pcol)
    alpha = layer.getchannel("A")
    pa = np.minimum(np.asarray(pat.getchannel("A")), np.asarray(alpha))
    pat.putalpha(Image.fromarray(pa))
    layer.alpha_composite(pat)

    # sheen (hairless, toughskin) and wrinkles (toughskin)
    over = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    do = ImageDraw.Draw(over)
    shine = max(att["hairless"], 0.6 * att["toughskin"])
    if shine > 0.2:
        x, y = at(0.1 * a, -0.45 * b)
        do.polygon(_ellipse(x, y, a * 0.55, b * 0.22, theta),
                   fill=(255, 255, 255, int(110 * shine)))
    for k in range(int(round(5 * att["toughskin"]))):
        x, y = at((-0.6 + 0.3 * k) * a, 0.1 * b)
        do.arc([x - b * 0.2, y - b * 0.5, x + b * 0.2, y + b * 0.5], 240, 300,
               fill=_rgb(dark * 0.6, 220), width=max(1, lw // 4))
    # horns, tusks, eye
    if att["horns"] > 0.2:
        hl = u * (0.04 + 0.13 * att["horns"])
        for dx in (-0.4, 0.3):
            bx, by = hx + dx * rh, hy - 0.7 * rh
            do.polygon([(bx - rh * 0.22, by), (bx + rh * 0.22, by), (bx + dx * rh * 0.5, by - hl)],
                       fill=_rgb(BONE))
    if att["tusks"] > 0.2:
        tl = u * 0.12 * att["tusks"]
        do.line([(hx + rh * 0.6, hy + rh * 0.4), (hx + rh * 0.9, hy + rh * 0.4 + tl)],
                fill=_rgb(BONE), width=max(1, int(rh * 0.3)))
    e = max(1.0, rh * 0.18)
    do.ellipse([hx + rh * 0.4 - e, hy - rh * 0.3 - e, hx + rh * 0.4 + e, hy - rh * 0.3 + e],
               fill=(10, 10, 10, 255))
    layer.alpha_composite(over)

    # fur grain inside the silhouette
    arr = np.asarray(layer).astype(np.float32)
    fur = rng.standard_normal((h, w, 1), dtype=np.float32) * (6 + 38 * att["furry"])
    arr[..., :3] += fur * (arr[..., 3:] > 0)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)), bottom


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
    w = int(rng.integers(width[0], width[1] + 1))
    return w, max(8, round(w * rng.uniform(0.6, 1.6)))


def _save_jpeg(im: Image.Image, path: Path) -> None:
    im.save(path, "JPEG", quality=JPEG_QUALITY)


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


TRAIN_ODD_KINDS = (
    "grayscale_jpeg", "cmyk_jpeg", "png_named_jpg", "palette_gif_named_jpg",
    "rgba_png_named_jpg", "gray16_png_named_jpg", "exif_rotated_jpeg",
    "truncated_jpeg", "empty_file",
)


def write_demo_dataset(
    out: str | Path,
    *,
    train_per_class: int = 24,
    n_test: int = 300,
    width: tuple[int, int] = (72, 128),
    seed: int = 0,
    odd_files: bool = True,
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
    """
    out = Path(out)
    root = out / "vlg-dataset" / "vlg-dataset"
    special = out / "vlg-dataset" / "Special-Package" / "Special-Package"
    (root / "train").mkdir(parents=True, exist_ok=True)
    (root / "test").mkdir(parents=True, exist_ok=True)
    (special / "final_examples").mkdir(parents=True, exist_ok=True)

    classes, predicates, matrix = bundled_attributes()
    class_strengths = strengths(predicates, matrix)
    seen = [i for i, c in enumerate(classes) if c not in UNSEEN]
    unseen = [i for i, c in enumerate(classes) if c in UNSEEN]

    with open(root / "classes.txt", "w") as f:
        for i, c in enumerate(classes, 1):
            f.write(f"{i:6d}\t{c}{' ' if c == TRAILING_SPACE_CLASS else ''}\n")
    with open(root / "predicates.txt", "w") as f:
        f.writelines(f"{i:6d}\t{p}\n" for i, p in enumerate(predicates, 1))
    with open(root / "predicate-matrix-continuous.txt", "w") as f:
        f.writelines(" ".join(f"{v:.2f}" for v in row) + "\n" for row in matrix)
    with open(root / "predicate-matrix-binary.txt", "w") as f:
        f.writelines(" ".join(str(v) for v in row) + "\n" for row in binary_matrix(matrix))

    rng = np.random.default_rng(seed)
    counts = np.maximum(1, np.round(train_per_class * rng.uniform(0.6, 1.4, len(seen))))
    n_unseen = int(round(UNSEEN_FRACTION * n_test))
    test_labels = np.concatenate([
        rng.choice(seen, n_test - n_unseen),
        np.resize(rng.permutation(unseen), n_unseen),
    ]).astype(int)
    rng.shuffle(test_labels)

    def draw(ci: int, stream: int, k: int) -> Image.Image:
        r = np.random.default_rng([seed, stream, k])
        return render(class_strengths[ci], r, _size(r, width))

    train_files: dict[str, list[Path]] = {}
    number = 0
    for ci, n in zip(seen, counts.astype(int), strict=True):
        folder = root / "train" / classes[ci]
        folder.mkdir(exist_ok=True)
        train_files[classes[ci]] = []
        for _ in range(n):
            number += 1
            path = folder / f"{number:05d}.jpg"
            _save_jpeg(draw(ci, 1, number), path)
            train_files[classes[ci]].append(path)

    with open(out / "answer_key.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image_id", "class"])
        for k, ci in enumerate(test_labels, 1):
            _save_jpeg(draw(ci, 2, k), root / "test" / f"{k:05d}.jpg")
            writer.writerow([f"{k:05d}.jpg", classes[ci]])

    special_picks = rng.choice(len(classes), N_SPECIAL)
    with open(special / "labels.txt", "w") as f:
        for k, ci in enumerate(special_picks, 1):
            _save_jpeg(draw(int(ci), 3, k), special / "final_examples" / f"{k:05d}.jpg")
            f.write(f"{k:05d}.jpg\t{classes[ci]}\n")

    odd: list[tuple[Path, str]] = []
    if odd_files:
        names = sorted(train_files)
        for j, kind in enumerate(TRAIN_ODD_KINDS):  # each in the first file of its class
            path = train_files[names[(7 * j) % len(names)]][0]
            _make_odd(path, kind)
            odd.append((path, kind))
        junk_dir = root / "train" / names[0]
        for folder in (junk_dir, root / "test"):
            (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(64))
            (folder / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(56))
            odd += [(folder / ".DS_Store", "junk_file"), (folder / "Thumbs.db", "junk_file")]
        if n_test:
            path = root / "test" / f"{int(rng.integers(1, n_test + 1)):05d}.jpg"
            _make_odd(path, "truncated_jpeg")
            odd.append((path, "truncated_test_jpeg"))
    with open(out / "odd_files.txt", "w") as f:
        f.writelines(f"{p.relative_to(out).as_posix()}\t{k}\n" for p, k in odd)
    return root
