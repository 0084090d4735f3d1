"""Per-image acquisition features used for data-quality baselines and drift detection.

Why these features: a dermoscopy classifier silently degrades when the *acquisition*
changes (a new camera, a colour-normalisation step, a different light source, blur from
a bad focus). Those changes show up in simple pixel statistics long before labels arrive,
so the baseline and every captured request are summarised by the same cheap, vectorised
features computed here. Everything is NumPy only (no model needed) and works on a whole
batch ``(N, H, W, 3)`` at once, or on a list of images of different sizes.

Pixel features are on a 0-1 scale so thresholds do not depend on bit depth.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

#: Features computed from pixel values (comparable only between images at the same scale).
PIXEL_FEATURES: tuple[str, ...] = (
    "brightness", "contrast",
    "red_mean", "green_mean", "blue_mean",
    "red_std", "green_std", "blue_std",
    "saturation_mean", "sharpness", "entropy",
)
#: Geometry of the image as given (before any resizing).
GEOMETRY_FEATURES: tuple[str, ...] = ("width", "height", "aspect_ratio")
FEATURE_NAMES: tuple[str, ...] = PIXEL_FEATURES + GEOMETRY_FEATURES

# ITU-R BT.601 luma weights: the usual definition of "brightness" of an RGB image.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_HIST_BINS = 64


def _check_batch(images: np.ndarray, where: str) -> np.ndarray:
    if not isinstance(images, np.ndarray):
        raise TypeError(f"{where}: expected a NumPy array, got {type(images).__name__}")
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(
            f"{where}: expected RGB images shaped (N, H, W, 3) or (H, W, 3), got {images.shape}; "
            "convert greyscale/RGBA images to RGB first (PIL: img.convert('RGB'))."
        )
    if images.dtype != np.uint8:
        raise ValueError(f"{where}: expected dtype uint8 (0-255), got {images.dtype}; "
                         "cast with np.clip(x, 0, 255).astype(np.uint8) if the data is 0-255.")
    if images.shape[1] < 3 or images.shape[2] < 3:
        raise ValueError(f"{where}: images of {images.shape[2]}x{images.shape[1]} px are too small "
                         "for a sharpness estimate (need at least 3x3).")
    return images


def batch_features(images: np.ndarray, chunk: int = 32) -> pd.DataFrame:
    """Features of a same-sized batch ``(N, H, W, 3)`` uint8; one row per image.

    Works in chunks so a memory-mapped training split of thousands of images never
    needs more than ``chunk`` images converted to float at a time; 32 images at 96 px
    (3.5 MB of float32 planes) stay in the CPU cache, which is several times faster than
    256 (benchmarks/monitoring_volume.py).
    """
    images = _check_batch(images, "batch_features")
    n, h, w, _ = images.shape
    parts = [_features_chunk(np.asarray(images[i:i + chunk])) for i in range(0, n, chunk)]
    data = {name: np.concatenate([p[name] for p in parts]) if parts else np.zeros(0)
            for name in PIXEL_FEATURES}
    data["width"] = np.full(n, float(w))
    data["height"] = np.full(n, float(h))
    data["aspect_ratio"] = np.full(n, w / h)
    return pd.DataFrame(data, columns=list(FEATURE_NAMES))


def _features_chunk(x: np.ndarray) -> dict[str, np.ndarray]:
    """The pixel features of a small chunk ``(n, h, w, 3)`` uint8, on planar float32 copies.

    Each channel is converted once to a contiguous ``(n, h*w)`` plane (one uint8 transpose, one
    float conversion), so every reduction runs along a contiguous axis (NumPy's pairwise summation,
    and no reduction over a 3-wide axis, which NumPy does slowly); chunks of a few dozen images stay
    in the CPU cache. Means and deviations therefore differ from a sequential float32 sum over
    interleaved pixels by at most a few 1e-5 relative (the pairwise sum is the more accurate of the
    two). The per-pixel channel max/min (saturation) are taken on the uint8 planes, and the entropy
    histogram is one ``bincount`` per image: the same values as the float planes would give, at half
    the cost (tests/ml_code/test_features.py compares them with the textbook formulas)."""
    n, h, w, _ = x.shape
    planes = np.ascontiguousarray(x.reshape(n, h * w, 3).transpose(0, 2, 1))  # (n, 3, h*w) uint8
    rgb = planes.astype(np.float32)
    rgb /= np.float32(255.0)
    r, g, b = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    lum = r * _LUMA[0]  # (n, h*w)
    lum += g * _LUMA[1]
    lum += b * _LUMA[2]
    # HSV saturation, (max - min) / max on the 0-1 scale; black pixels (max 0) have saturation 0.
    cmax = planes.max(axis=1).astype(np.float32)
    spread = cmax - planes.min(axis=1)
    sat = np.divide(spread, cmax, out=np.zeros_like(cmax), where=cmax > 0)
    # 4-neighbour Laplacian on the interior, by slicing (no SciPy, no Python loop).
    img = lum.reshape(n, h, w)
    lap = img[:, :-2, 1:-1] + img[:, 2:, 1:-1]
    lap += img[:, 1:-1, :-2]
    lap += img[:, 1:-1, 2:]
    lap -= 4.0 * img[:, 1:-1, 1:-1]
    # Luminance histogram entropy (bits).
    bins = (lum * _HIST_BINS).astype(np.intp)
    np.minimum(bins, _HIST_BINS - 1, out=bins)
    counts = np.stack([np.bincount(row, minlength=_HIST_BINS) for row in bins])
    p = counts / counts.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.where(p > 0, p * np.log2(p), 0.0).sum(axis=1)
    means, stds = rgb.mean(axis=2), rgb.std(axis=2)
    return {
        "brightness": lum.mean(axis=1),
        "contrast": lum.std(axis=1),
        "red_mean": means[:, 0], "green_mean": means[:, 1], "blue_mean": means[:, 2],
        "red_std": stds[:, 0], "green_std": stds[:, 1], "blue_std": stds[:, 2],
        "saturation_mean": sat.mean(axis=1),
        "sharpness": lap.reshape(n, -1).var(axis=1),
        "entropy": entropy,
    }


def image_features(images: np.ndarray | Sequence[np.ndarray]) -> pd.DataFrame:
    """Features of one batch array, or of a list of images that may differ in size.

    Lists are grouped by shape so each group is still computed vectorised; rows come
    back in the input order.
    """
    if isinstance(images, np.ndarray):
        return batch_features(images)
    images = list(images)
    if not images:
        return pd.DataFrame({name: np.zeros(0) for name in FEATURE_NAMES}, columns=list(FEATURE_NAMES))
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, img in enumerate(images):
        arr = _check_batch(np.asarray(img), f"image_features[{i}]")
        groups.setdefault(arr.shape[1:], []).append(i)
    frames = []
    for idx in groups.values():
        frame = batch_features(np.stack([np.asarray(images[i]) for i in idx]))
        frame.index = idx
        frames.append(frame)
    return pd.concat(frames).sort_index().reset_index(drop=True)
