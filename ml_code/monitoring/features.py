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


def batch_features(images: np.ndarray, chunk: int = 256) -> pd.DataFrame:
    """Features of a same-sized batch ``(N, H, W, 3)`` uint8; one row per image.

    Works in chunks so a memory-mapped training split of thousands of images never
    needs more than ``chunk`` images converted to float at a time.
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
    rgb = x.astype(np.float32) / 255.0  # (n, h, w, 3)
    n = rgb.shape[0]
    lum = rgb @ _LUMA  # (n, h, w)
    flat_rgb = rgb.reshape(n, -1, 3)
    flat_lum = lum.reshape(n, -1)
    cmax = flat_rgb.max(axis=2)
    cmin = flat_rgb.min(axis=2)
    # HSV saturation; black pixels (max 0) have saturation 0 by convention.
    sat = np.where(cmax > 0, (cmax - cmin) / np.maximum(cmax, 1e-12), 0.0)
    # 4-neighbour Laplacian on the interior, by slicing (no SciPy, no Python loop).
    lap = (lum[:, :-2, 1:-1] + lum[:, 2:, 1:-1] + lum[:, 1:-1, :-2] + lum[:, 1:-1, 2:]
           - 4.0 * lum[:, 1:-1, 1:-1])
    # Luminance histogram entropy (bits), all images at once via one bincount.
    bins = np.minimum((flat_lum * _HIST_BINS).astype(np.int64), _HIST_BINS - 1)
    offsets = (np.arange(n, dtype=np.int64) * _HIST_BINS)[:, None]
    counts = np.bincount((bins + offsets).ravel(), minlength=n * _HIST_BINS).reshape(n, _HIST_BINS)
    p = counts / counts.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.where(p > 0, p * np.log2(p), 0.0).sum(axis=1)
    means = flat_rgb.mean(axis=1)
    stds = flat_rgb.std(axis=1)
    return {
        "brightness": flat_lum.mean(axis=1),
        "contrast": flat_lum.std(axis=1),
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
