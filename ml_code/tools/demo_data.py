"""Synthetic dermoscopy-like images with HAM10000-format metadata.

Why this exists: the real HAM10000 set is licensed CC BY-NC-SA and may not be on
every machine, yet the platform (ingestion -> splits -> training -> endpoint ->
drift) must be runnable and testable end to end anywhere. This module draws a
small, deterministic, *clearly synthetic* stand-in with the same file layout:

    out_dir/HAM10000_metadata.csv   lesion_id,image_id,dx,dx_type,age,sex,localization
    out_dir/images/<image_id>.jpg   200x150 RGB JPEGs (HAM10000's downscaled size)
    out_dir/SYNTHETIC_DATA.txt      says the data is synthetic and how it was made

Each of the seven classes has its own colour family, outline irregularity and
texture, loosely inspired by dermoscopic patterns (regular network for nevi,
multicolour asymmetry with peripheral streaks for melanoma, red lacunae for
vascular lesions, ...). Per-lesion jitter (hue, size, outline) and per-image
nuisance (skin tone, lighting, rotation, scale, hairs, vignette, sensor noise)
keep the task from being trivial while a small CNN at 64 px still learns it.

Several images per lesion share the lesion's outline and texture field and
differ only in the view, so the generated set has the same leakage hazard as
HAM10000: splits must be grouped by ``lesion_id``.

Deterministic: each lesion draws from its own ``numpy`` generator seeded by
``(seed, class, lesion)``, and JPEG encoding is fixed, so the same seed and the
same Pillow build give byte-identical files.
"""

from __future__ import annotations

import argparse
import io
import math
import sys
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from ml_code import CLASSES
from ml_code.atomic import write_bytes_atomic
from ml_code.contract import available_cpus, forked_process_pool

METADATA_COLUMNS = ("lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization")
JPEG_QUALITY = 92
_NOISE_GRID = 48  # texture-field resolution in lesion coordinates
_SPAN = 3.0  # texture field covers lesion coordinates [-1.5, 1.5]


@dataclass(frozen=True)
class ClassStyle:
    """How one diagnosis looks: colours (RGB 0-1), outline irregularity, texture kind."""

    core: tuple[float, float, float]
    rim: tuple[float, float, float]
    accent: tuple[float, float, float]
    irregularity: float  # amplitude of the outline harmonics
    radius: tuple[float, float]  # lesion radius as a fraction of the image height
    texture: str
    ages: tuple[int, int]
    sites: tuple[str, ...]


STYLES: dict[str, ClassStyle] = {
    # actinic keratosis / Bowen's: pink-red, scaly white-yellow surface, ill-defined
    "akiec": ClassStyle((0.80, 0.45, 0.42), (0.86, 0.58, 0.55), (0.97, 0.93, 0.80), 0.16,
                        (0.24, 0.34), "scale", (55, 85), ("face", "scalp", "upper extremity", "neck")),
    # basal cell carcinoma: pearly pink with blue-grey ovoid nests and arborising vessels
    "bcc": ClassStyle((0.86, 0.66, 0.66), (0.90, 0.74, 0.72), (0.70, 0.10, 0.14), 0.10,
                      (0.22, 0.32), "vessels", (50, 85), ("face", "back", "neck", "chest")),
    # benign keratosis: tan-brown, sharp "stuck-on" border, milia-like and comedo-like dots
    "bkl": ClassStyle((0.62, 0.46, 0.30), (0.70, 0.55, 0.38), (0.95, 0.92, 0.78), 0.12,
                      (0.28, 0.40), "cysts", (45, 85), ("back", "face", "trunk", "chest")),
    # dermatofibroma: small, round, delicate light-brown rim around a central white patch
    "df": ClassStyle((0.93, 0.88, 0.82), (0.60, 0.43, 0.32), (0.52, 0.36, 0.26), 0.05,
                     (0.16, 0.24), "scar", (25, 60), ("lower extremity", "upper extremity")),
    # melanoma: asymmetric, very irregular, dark brown/black with blue-grey veil and streaks
    "mel": ClassStyle((0.28, 0.17, 0.12), (0.48, 0.33, 0.24), (0.38, 0.44, 0.56), 0.30,
                      (0.30, 0.44), "atypical", (40, 85), ("back", "trunk", "lower extremity", "upper extremity")),
    # melanocytic nevus: medium brown, round and symmetric, regular pigment network
    "nv": ClassStyle((0.50, 0.34, 0.24), (0.62, 0.46, 0.34), (0.30, 0.19, 0.13), 0.05,
                     (0.22, 0.36), "network", (15, 60), ("back", "trunk", "lower extremity", "abdomen")),
    # vascular lesion: red-purple lacunae separated by pale septa, well defined
    "vasc": ClassStyle((0.66, 0.12, 0.20), (0.78, 0.30, 0.36), (0.40, 0.06, 0.24), 0.06,
                       (0.16, 0.28), "lacunae", (30, 80), ("trunk", "lower extremity", "abdomen", "upper extremity")),
}


def _rgb(values: list[float]) -> np.ndarray:
    return np.asarray(values, dtype=np.float32)


def _smooth_field(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """Gaussian-smoothed white noise, rescaled to zero mean and unit std."""
    field = ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma, mode="wrap")
    return (field - field.mean()) / (field.std() + 1e-8)


@dataclass
class _Lesion:
    """Everything fixed for one lesion across its images."""

    dx: str
    style: ClassStyle
    harmonics: np.ndarray  # (K, 3): order, amplitude, phase
    radius: float
    colours: np.ndarray  # (3, 3): core, rim, accent after jitter
    coarse: np.ndarray  # smooth field: blotches, veil, nests
    fine: np.ndarray  # finer field: dots, scale, vessels
    freq: float  # network / lacunae frequency
    stretch: float  # anisotropy of the outline


# Look-alikes: some lesions borrow part of another class's colours (a pale melanoma,
# a dark nevus, ...) so that colour alone does not give the answer away.
CONFUSERS: dict[str, str] = {
    "akiec": "bcc", "bcc": "akiec", "bkl": "nv", "df": "nv", "mel": "nv", "nv": "mel", "vasc": "bcc",
}
LOOKALIKE_RATE = 0.15
# Mimics: a share of lesions drawn wholly in their confuser's style but keeping their own
# diagnosis (the histology-confirmed melanoma that looks like a nevus). No image can tell them
# apart, so the demo model lands well below perfect (about 0.75-0.9 balanced accuracy) and its
# confusion matrix, calibration and Grad-CAM have something to show.
MIMIC_RATE = 0.0  # 0.2 made the tiny end-to-end model read held-out traffic as prediction drift; off until retuned


def _draw_lesion(dx: str, rng: np.random.Generator) -> _Lesion:
    style = STYLES[CONFUSERS[dx]] if MIMIC_RATE and rng.random() < MIMIC_RATE else STYLES[dx]
    orders = np.arange(2, 8)
    amps = style.irregularity * rng.uniform(0.3, 1.0, orders.size) / np.sqrt(orders - 1)
    phases = rng.uniform(0, 2 * np.pi, orders.size)
    colours = np.array([style.core, style.rim, style.accent], dtype=np.float32)
    if rng.random() < LOOKALIKE_RATE:
        other = STYLES[CONFUSERS[dx]]
        w = rng.uniform(0.25, 0.5)
        colours[:2] = (1 - w) * colours[:2] + w * np.array([other.core, other.rim], dtype=np.float32)
    # per-lesion colour jitter: overall brightness and a small hue shift
    colours = colours * rng.uniform(0.85, 1.12) + rng.normal(0, 0.035, (1, 3))
    return _Lesion(
        dx=dx,
        style=style,
        harmonics=np.stack([orders, amps, phases], axis=1),
        radius=rng.uniform(*style.radius),
        colours=np.clip(colours, 0, 1).astype(np.float32),
        coarse=_smooth_field(rng, _NOISE_GRID, 3.0).astype(np.float32),
        fine=_smooth_field(rng, _NOISE_GRID, 1.0).astype(np.float32),
        freq=rng.uniform(7.0, 10.0),
        stretch=rng.uniform(0.8, 1.0) if style.irregularity < 0.1 else rng.uniform(0.65, 1.0),
    )


_ANGLES = np.linspace(-np.pi, np.pi, 721)


@lru_cache(maxsize=4)
def _grid(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    ys.flags.writeable = False
    xs.flags.writeable = False
    return ys, xs


def _sample_field(field: np.ndarray, coeffs: tuple[float, ...], width: int, height: int) -> np.ndarray:
    """Bilinear lookup of a texture field through the view's affine map.

    The field lives in lesion coordinates, so every view of a lesion shows the
    same texture, rotated and scaled with the outline. ``coeffs`` map output
    pixels (x, y) to field pixels (Pillow's AFFINE convention); Pillow does the
    resampling in C, which keeps rendering at a few milliseconds per image.
    """
    img = Image.fromarray(np.ascontiguousarray(field, dtype=np.float32))
    out = img.transform((width, height), Image.Transform.AFFINE, coeffs, resample=Image.Resampling.BILINEAR)
    return np.asarray(out, dtype=np.float32)


def _resize_field(field: np.ndarray, width: int, height: int) -> np.ndarray:
    return np.asarray(Image.fromarray(np.ascontiguousarray(field, dtype=np.float32)).resize((width, height), Image.Resampling.BILINEAR))


@dataclass
class _View:
    """Where a lesion sits in one image: lesion coordinates (u, v), radius and angle of each pixel
    (``r``, ``theta``), the outline-relative radius ``rho`` (1 at the outline), and the texture
    fields sampled at each pixel."""

    xs: np.ndarray
    ys: np.ndarray
    u: np.ndarray
    v: np.ndarray
    theta: np.ndarray
    rho: np.ndarray
    coarse: np.ndarray
    fine: np.ndarray


def _view(lesion: _Lesion, rng: np.random.Generator, width: int, height: int) -> _View:
    """A random placement of the lesion: centre offset, rotation and scale."""
    ys, xs = _grid(width, height)
    # view: centre offset, rotation, scale
    cx = width / 2 + rng.normal(0, width * 0.05)
    cy = height / 2 + rng.normal(0, height * 0.05)
    angle = rng.uniform(0, 2 * np.pi)
    r_px = lesion.radius * height * rng.uniform(0.85, 1.18)
    dx, dy = (xs - cx) / r_px, (ys - cy) / r_px
    ca, sa = math.cos(angle), math.sin(angle)
    u = ca * dx + sa * dy
    v = (-sa * dx + ca * dy) / lesion.stretch
    r = np.hypot(u, v)
    theta = np.arctan2(v, u)
    # outline radius as a function of angle: tabulate once, then interpolate (cheap)
    order, amp, phase = (lesion.harmonics[:, k, None] for k in range(3))
    table = 1.0 + (amp * np.cos(order * _ANGLES[None] + phase)).sum(axis=0)
    boundary = np.interp(theta, _ANGLES, table).astype(np.float32)
    rho = r / np.maximum(boundary, 0.3)  # 0 at centre, 1 at the outline
    # (x, y) -> field pixel: field col = (u + SPAN/2) * k, row = (v + SPAN/2) * k
    k = (_NOISE_GRID - 1) / _SPAN
    a, b = ca / r_px * k, sa / r_px * k
    d, e = -sa / (r_px * lesion.stretch) * k, ca / (r_px * lesion.stretch) * k
    coeffs = (a, b, _SPAN / 2 * k - a * cx - b * cy, d, e, _SPAN / 2 * k - d * cx - e * cy)
    coarse = _sample_field(lesion.coarse, coeffs, width, height)
    fine = _sample_field(lesion.fine, coeffs, width, height)

    return _View(xs, ys, u, v, theta, rho, coarse, fine)


def _skin(lesion: _Lesion, rng: np.random.Generator, xs: np.ndarray, ys: np.ndarray, width: int,
          height: int) -> tuple[np.ndarray, np.ndarray]:
    """(skin RGB (H, W, 3), lighting gradient (H, W)): tone, light from one side, mottling."""
    tone = _rgb([0.90, 0.72, 0.62]) * rng.uniform(0.78, 1.05) + rng.normal(0, 0.025, 3).astype(np.float32)
    g_angle = rng.uniform(0, 2 * np.pi)
    light = 1.0 + rng.uniform(0.0, 0.18) * ((xs - width / 2) * math.cos(g_angle) + (ys - height / 2) * math.sin(g_angle)) / width
    mottle = _resize_field(np.ascontiguousarray(lesion.fine[:8, :8]), width, height)
    skin = tone[None, None, :] * (1.0 + 0.03 * mottle)[..., None]

    return skin, light


def _texture(lesion: _Lesion, g: _View) -> tuple[np.ndarray, np.ndarray]:
    """(lesion colour (H, W, 3), mask (H, W)): the base gradient and the class's dermoscopic
    structures (network, blotches and veil, cysts, scar, scale, vessels, lacunae)."""
    style, (core, rim, accent) = lesion.style, lesion.colours
    u, v, theta, rho, coarse, fine = g.u, g.v, g.theta, g.rho, g.coarse, g.fine
    t = np.clip(rho, 0, 1)[..., None]
    colour = core * (1 - t**2) + rim * t**2
    softness = 0.05 if style.texture in ("cysts", "lacunae") else 0.12 if style.texture != "scale" else 0.2
    mask = 1.0 / (1.0 + np.exp(np.minimum((rho - 1.0) / softness, 60.0)))

    tex = style.texture
    if tex == "network":  # regular, thin-meshed pigment network fading to the rim
        f = lesion.freq
        net = np.minimum(np.abs(np.sin(f * u)), np.abs(np.sin(f * v)))
        lines = np.clip(1 - net / 0.35, 0, 1) * (1 - 0.6 * t[..., 0])
        colour = colour * (1 - 0.5 * lines[..., None]) + accent * 0.5 * lines[..., None]
    elif tex == "atypical":  # warped network, dark blotches, blue-grey veil, peripheral streaks
        f = lesion.freq * 0.8
        uw, vw = u + 0.25 * fine, v + 0.25 * coarse
        net = np.minimum(np.abs(np.sin(f * uw)), np.abs(np.sin(f * vw)))
        lines = np.clip(1 - net / 0.45, 0, 1)
        colour = colour * (1 - 0.45 * lines[..., None])
        blotch = np.clip((coarse - 0.2) * 1.5, 0, 1)[..., None]
        colour = colour * (1 - blotch) + _rgb([0.10, 0.06, 0.06]) * blotch
        veil = np.clip((-coarse - 0.4) * 1.5, 0, 1)[..., None] * (rho < 0.9)[..., None]
        colour = colour * (1 - 0.8 * veil) + accent * 0.8 * veil
        streaks = np.clip(np.cos(lesion.freq * 2.2 * theta + 3 * fine) - 0.55, 0, 1) / 0.45
        ring = np.exp(-(((rho - 1.02) / 0.12) ** 2))
        mask = np.maximum(mask, 0.85 * streaks * ring)
    elif tex == "cysts":  # milia-like (white) and comedo-like (dark) dots on a fissured surface
        white = np.clip((fine - 1.3) * 3, 0, 1)[..., None]
        dark = np.clip((-fine - 1.4) * 3, 0, 1)[..., None]
        ridges = np.clip(1 - np.abs(coarse) / 0.15, 0, 1)[..., None] * 0.35
        colour = colour * (1 - ridges) + _rgb([0.35, 0.24, 0.16]) * ridges
        colour = colour * (1 - white) + accent * white
        colour = colour * (1 - dark) + _rgb([0.22, 0.15, 0.10]) * dark
    elif tex == "scar":  # dermatofibroma: bright centre, network-like pigment in a ring
        f = lesion.freq * 1.3
        net = np.minimum(np.abs(np.sin(f * u)), np.abs(np.sin(f * v)))
        ring = np.clip((rho - 0.45) / 0.3, 0, 1)[..., None]
        lines = np.clip(1 - net / 0.5, 0, 1)[..., None] * ring
        colour = core * (1 - ring) + rim * ring
        colour = colour * (1 - 0.5 * lines) + accent * 0.5 * lines
    elif tex == "scale":  # actinic keratosis: patchy white-yellow scale over an erythematous base
        scale = np.clip((coarse + 0.6 * fine - 0.4) * 1.8, 0, 1)[..., None] * 0.85
        colour = colour * (1 - scale) + accent * scale
        dots = np.clip((fine - 1.5) * 3, 0, 1)[..., None]
        colour = colour * (1 - 0.6 * dots) + _rgb([0.75, 0.25, 0.25]) * 0.6 * dots
    elif tex == "vessels":  # bcc: blue-grey ovoid nests and thin branching red vessels
        nests = np.clip((coarse - 0.7) * 2, 0, 1)[..., None] * (rho < 0.85)[..., None]
        colour = colour * (1 - 0.85 * nests) + _rgb([0.40, 0.45, 0.55]) * 0.85 * nests
        vessel = np.clip(1 - np.abs(fine) / 0.12, 0, 1)[..., None] * 0.9
        colour = colour * (1 - vessel) + accent * vessel
    elif tex == "lacunae":  # red-purple round clods separated by pale septa
        f = lesion.freq * 0.9
        cell = np.abs(np.sin(f * (u + 0.1 * fine))) * np.abs(np.sin(f * (v + 0.1 * coarse)))
        lac = np.clip((cell - 0.15) * 2.5, 0, 1)[..., None]
        colour = rim * (1 - lac) + (core * 0.5 + accent * 0.5) * lac
        colour = colour * (1 + 0.15 * np.clip(coarse, -1, 1))[..., None]

    return colour, mask


def _finish(img: np.ndarray, rng: np.random.Generator, xs: np.ndarray, ys: np.ndarray, width: int,
            height: int) -> np.ndarray:
    """Hairs, a dermatoscope vignette on some images, sensor noise."""
    # hairs: a few dark, slightly curved lines crossing the image
    for _ in range(rng.integers(0, 5)):
        h_angle = rng.uniform(0, np.pi)
        nx, ny = -math.sin(h_angle), math.cos(h_angle)
        px, py = rng.uniform(0, width), rng.uniform(0, height)
        along = (xs - px) * math.cos(h_angle) + (ys - py) * math.sin(h_angle)
        across = (xs - px) * nx + (ys - py) * ny - rng.normal(0, 0.0015) * along**2
        thickness = rng.uniform(0.5, 1.3)
        length = rng.uniform(0.4, 1.2) * width
        hair = np.clip(1.5 - np.abs(across) / thickness, 0, 1) * (np.abs(along) < length / 2)
        img = img * (1 - 0.75 * hair[..., None]) + 0.08 * 0.75 * hair[..., None]

    # dermatoscope vignette (the round field of view) on some images
    if rng.random() < 0.3:
        rad = np.hypot((xs - width / 2) / (width / 2), (ys - height / 2) / (height / 2))
        vig = np.clip((rad - rng.uniform(1.0, 1.15)) * 6, 0, 1)[..., None]
        img = img * (1 - vig)

    img = img + np.float32(0.015) * rng.standard_normal((height, width, 1), dtype=np.float32)
    return np.clip(img, 0, 1)


def _render(lesion: _Lesion, rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """One view of a lesion on skin: float RGB (H, W, 3) in [0, 1]."""
    g = _view(lesion, rng, width, height)
    skin, light = _skin(lesion, rng, g.xs, g.ys, width, height)
    colour, mask = _texture(lesion, g)
    img = skin * (1 - mask[..., None]) + np.clip(colour, 0, 1) * mask[..., None]
    return _finish(img * light[..., None], rng, g.xs, g.ys, width, height)


def _encode_jpeg(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray((rgb * 255 + 0.5).astype(np.uint8)).save(buf, "JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


SYNTHETIC_NOTE = """SYNTHETIC DATA - NOT REAL PATIENT IMAGES
========================================

Every image in this folder was drawn by ml_code/demo_data.py from random numbers
(seed={seed}). Nothing here comes from a person, a camera or a clinic, and
nothing here is medically meaningful: the seven "diagnoses" are colour, outline
and texture patterns loosely inspired by dermoscopy, made only to exercise the
DermaOps pipeline end to end (ingestion, grouped splits, training, serving,
drift monitoring).

Layout mirrors HAM10000 (Tschandl et al., 2018): HAM10000_metadata.csv with
lesion_id,image_id,dx,dx_type,age,sex,localization and images/<image_id>.jpg.
dx_type is "synthetic"; ages, sexes and sites are random draws.

lesions per class: {per_class}; images per lesion: {ipl}; image size: {w}x{h};
lesions: {n_lesions}; images: {n_images}.
"""


def generate_demo_dataset(
    out_dir: str | Path,
    n_lesions_per_class: int | dict[str, int] = 100,
    images_per_lesion: tuple[int, int] = (1, 3),
    image_size: tuple[int, int] = (200, 150),
    seed: int = 0,
    workers: int | None = None,
) -> Path:
    """Write a synthetic HAM10000-layout dataset into ``out_dir`` and return ``out_dir``.

    ``n_lesions_per_class`` may be a dict (class -> count) to imitate HAM10000's
    imbalance; ``images_per_lesion`` is an inclusive (min, max) range;
    ``image_size`` is (width, height) like HAM10000's 200x150. ``workers`` processes draw
    the lesions (default: the usable CPUs; 1 draws here). Each lesion draws from its own
    random stream (``seed``, class, index), so the files are byte-identical whatever
    ``workers`` is; only this process writes them, in order.
    """
    out = Path(out_dir)
    lo, hi = images_per_lesion
    if not (1 <= lo <= hi):
        raise ValueError(f"images_per_lesion must be (min, max) with 1 <= min <= max, got {images_per_lesion}")
    width, height = image_size
    if width < 16 or height < 16:
        raise ValueError(f"image_size must be at least 16x16 (width, height), got {image_size}")
    if isinstance(n_lesions_per_class, dict):
        unknown = set(n_lesions_per_class) - set(CLASSES)
        if unknown:
            raise ValueError(f"unknown classes {sorted(unknown)} in n_lesions_per_class; use {list(CLASSES)}")
        per_class = {c: int(n_lesions_per_class.get(c, 0)) for c in CLASSES}
    else:
        per_class = {c: int(n_lesions_per_class) for c in CLASSES}
    if any(n < 0 for n in per_class.values()):
        raise ValueError(f"lesion counts must be >= 0, got {per_class}")

    images_dir = out / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    rows: list[str] = [",".join(METADATA_COLUMNS)]
    lesion_no = image_no = 0
    tasks = [(seed, class_idx, i, dx, lo, hi, width, height)
             for class_idx, dx in enumerate(CLASSES) for i in range(per_class[dx])]
    with _lesion_pool(workers, len(tasks)) as pool:
        drawn = pool.map(_draw_lesion_record, tasks, chunksize=8) if pool else map(_draw_lesion_record, tasks)
        for (_, _, _, dx, *_), (age, sex, site, jpegs) in zip(tasks, drawn):
            lesion_no += 1
            lesion_id = f"SYNL_{lesion_no:06d}"
            for jpeg in jpegs:
                image_no += 1
                image_id = f"SYN_{image_no:07d}"
                write_bytes_atomic(images_dir / f"{image_id}.jpg", jpeg)
                rows.append(",".join([lesion_id, image_id, dx, "synthetic", age, sex, site]))
    write_bytes_atomic(out / "HAM10000_metadata.csv", ("\n".join(rows) + "\n").encode())
    note = SYNTHETIC_NOTE.format(seed=seed, per_class=per_class, ipl=f"{lo}-{hi}", w=width, h=height,
                                 n_lesions=lesion_no, n_images=image_no)
    write_bytes_atomic(out / "SYNTHETIC_DATA.txt", note.encode())
    return out


def _draw_lesion_record(task: tuple) -> tuple[str, str, str, list[bytes]]:
    """One lesion from its own stream: ``(age, sex, site, [JPEG bytes of each view])``. A
    module-level function so a process pool can run it."""
    seed, class_idx, i, dx, lo, hi, width, height = task
    style = STYLES[dx]
    rng = np.random.default_rng([seed, class_idx, i])
    lesion = _draw_lesion(dx, rng)
    age = "" if rng.random() < 0.01 else f"{5 * round(rng.uniform(*style.ages) / 5):.1f}"
    sex = "unknown" if rng.random() < 0.01 else ("male" if rng.random() < 0.54 else "female")
    site = style.sites[rng.integers(len(style.sites))]
    views = int(rng.integers(lo, hi + 1))
    return age, sex, site, [_encode_jpeg(_render(lesion, rng, width, height)) for _ in range(views)]


@contextmanager
def _lesion_pool(workers: int | None, n_tasks: int) -> Iterator[ProcessPoolExecutor | None]:
    """A process pool of ``workers`` (default: the usable CPUs), or None to draw in this process
    (one worker, or too few lesions to be worth starting processes)."""
    n = available_cpus() if workers is None else max(1, int(workers))
    if n <= 1 or n_tasks < 16:
        yield None
        return
    with forked_process_pool(n) as pool:
        yield pool


def main(argv: list[str] | None = None) -> int:
    """CLI: ``python -m ml_code.tools.demo_data --out DIR --lesions-per-class N --seed S``."""
    parser = argparse.ArgumentParser(prog="python -m ml_code.tools.demo_data", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="folder to write (created if missing)")
    parser.add_argument("--lesions-per-class", type=int, default=100)
    parser.add_argument("--min-images-per-lesion", type=int, default=1)
    parser.add_argument("--max-images-per-lesion", type=int, default=3)
    parser.add_argument("--width", type=int, default=200)
    parser.add_argument("--height", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = generate_demo_dataset(
        args.out,
        n_lesions_per_class=args.lesions_per_class,
        images_per_lesion=(args.min_images_per_lesion, args.max_images_per_lesion),
        image_size=(args.width, args.height),
        seed=args.seed,
    )
    n_images = len((out / "HAM10000_metadata.csv").read_text().splitlines()) - 1
    print(f"wrote {n_images} synthetic images to {out} (seed={args.seed})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
