"""Images that are not dermoscopy at all, for checking the endpoint's out-of-distribution flag.

Three kinds, each drawn with NumPy/Pillow from a seed (no downloads, nothing copied):

- ``scene``: a photo-like outdoor scene - sky gradient, ground gradient, horizon, sun,
  a house-like block and trees, with sensor noise;
- ``document``: a scanned page - off-white paper, black text lines of varying length,
  a heading, slight skew and scanner noise;
- ``solid``: one flat colour (with JPEG's own artefacts only).

What this set cannot honestly stand for: clinical (non-dermoscopic) close-up photographs of
skin, which are the realistic near-miss input. Synthesising those would only test our own
renderer, so none are made here; measuring the flag on them needs a real clinical set.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw

KINDS = ("scene", "document", "solid")


def _scene(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    ys = np.linspace(0, 1, h)[:, None, None]
    horizon = rng.uniform(0.45, 0.65)
    sky_top, sky_low = rng.uniform([20, 60, 150], [80, 130, 230]), rng.uniform([150, 190, 220], [210, 230, 255])
    ground_near, ground_far = rng.uniform([40, 70, 20], [90, 130, 50]), rng.uniform([90, 120, 60], [150, 170, 90])
    t_sky = np.clip(ys / horizon, 0, 1)
    t_ground = np.clip((ys - horizon) / (1 - horizon), 0, 1)
    sky = sky_top * (1 - t_sky) + sky_low * t_sky
    ground = ground_far * (1 - t_ground) + ground_near * t_ground
    arr = np.where(ys < horizon, sky, ground) * np.ones((1, w, 1))
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    hy = int(horizon * h)
    sx, sy, sr = rng.uniform(0.1, 0.9) * w, rng.uniform(0.05, 0.3) * h, rng.uniform(0.04, 0.08) * w
    draw.ellipse([sx - sr, sy - sr, sx + sr, sy + sr], fill=(255, 240, 180))
    bx, bw, bh = rng.uniform(0.1, 0.6) * w, rng.uniform(0.15, 0.3) * w, rng.uniform(0.15, 0.3) * h
    draw.rectangle([bx, hy - bh, bx + bw, hy + 0.05 * h], fill=tuple(int(v) for v in rng.uniform(120, 220, 3)))
    draw.polygon([(bx - 0.02 * w, hy - bh), (bx + bw / 2, hy - bh - 0.12 * h), (bx + bw + 0.02 * w, hy - bh)],
                 fill=(140, 40, 30))
    for _ in range(int(rng.integers(2, 6))):
        tx, tr = rng.uniform(0, 1) * w, rng.uniform(0.04, 0.08) * w
        draw.rectangle([tx - tr / 5, hy - tr, tx + tr / 5, hy + 0.04 * h], fill=(90, 60, 30))
        draw.ellipse([tx - tr, hy - 3 * tr, tx + tr, hy - tr / 2], fill=(30, int(rng.uniform(90, 140)), 40))
    noisy = np.asarray(img, np.float64) + rng.normal(0, 6, (h, w, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def _document(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    paper = int(rng.uniform(235, 252))
    img = Image.new("RGB", (w, h), (paper, paper, paper - int(rng.uniform(0, 8))))
    draw = ImageDraw.Draw(img)
    margin, y = 0.1 * w, 0.08 * h
    draw.rectangle([margin, y, margin + rng.uniform(0.3, 0.6) * w, y + 0.05 * h], fill=(15, 15, 15))
    y += 0.1 * h
    line = max(2.0, 0.018 * h)
    while y < 0.92 * h:
        length = (w - 2 * margin) * (rng.uniform(0.3, 0.7) if rng.random() < 0.15 else rng.uniform(0.85, 1.0))
        x = margin
        while x < margin + length:  # words: dark dashes with gaps
            word = rng.uniform(0.03, 0.1) * w
            draw.rectangle([x, y, min(x + word, margin + length), y + line], fill=(20, 20, 25))
            x += word + 0.015 * w
        y += line * rng.uniform(2.0, 2.6)
    img = img.rotate(rng.uniform(-2, 2), fillcolor=(paper, paper, paper))
    noisy = np.asarray(img, np.float64) + rng.normal(0, 4, (h, w, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def _solid(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    return Image.new("RGB", (w, h), tuple(int(v) for v in rng.integers(0, 256, 3)))


def render(kind: str, seed: int, size: tuple[int, int] = (200, 150)) -> Image.Image:
    """One image of ``kind`` (:data:`KINDS`), ``size`` = (width, height) like HAM10000's 200x150."""
    makers = {"scene": _scene, "document": _document, "solid": _solid}
    if kind not in makers:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return makers[kind](np.random.default_rng([seed, KINDS.index(kind)]), *size)


def jpeg_bytes(kind: str, seed: int, size: tuple[int, int] = (200, 150)) -> bytes:
    """:func:`render` as JPEG bytes (quality 90), what a client would send."""
    buf = io.BytesIO()
    render(kind, seed, size).save(buf, format="JPEG", quality=90)
    return buf.getvalue()
