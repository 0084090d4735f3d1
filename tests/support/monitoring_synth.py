"""Synthetic dermoscopy-like images for monitoring tests (shared by the drift tests).

A skin-toned background with per-image tint and lighting, a darker elliptical lesion
of random size and hue, and sensor noise: enough variety that pixel features have
realistic spread, so drift thresholds are tested against real sampling noise.
"""

from __future__ import annotations

import numpy as np


def lesion_images(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    skin = np.array([0.85, 0.62, 0.52], np.float32)
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        bg = skin * rng.uniform(0.8, 1.1) + rng.normal(0, 0.03, 3)
        cx, cy = rng.uniform(0.35, 0.65, 2)
        rx, ry = rng.uniform(0.12, 0.3, 2)
        mask = (((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2) < 1.0
        lesion = bg * rng.uniform(0.35, 0.7) + rng.normal(0, 0.04, 3)
        img = np.where(mask[..., None], lesion, bg)
        vignette = 1.0 - 0.25 * ((xx - 0.5) ** 2 + (yy - 0.5) ** 2)[..., None]
        img = img * vignette + rng.normal(0, 0.025, img.shape)
        out[i] = np.clip(img * 255, 0, 255).astype(np.uint8)
    return out


def colour_normalised(images: np.ndarray) -> np.ndarray:
    """Grey-world colour normalisation: another site's preprocessing pipeline."""
    x = images.astype(np.float32)
    means = x.mean(axis=(1, 2), keepdims=True)
    x = x * (means.mean(axis=3, keepdims=True) / np.maximum(means, 1))
    return np.clip(x, 0, 255).astype(np.uint8)


def contrast_stretched(images: np.ndarray) -> np.ndarray:
    """Per-image min-max contrast stretch: a different camera / export setting."""
    x = images.astype(np.float32)
    lo = x.min(axis=(1, 2, 3), keepdims=True)
    hi = x.max(axis=(1, 2, 3), keepdims=True)
    return np.clip((x - lo) / np.maximum(hi - lo, 1) * 255, 0, 255).astype(np.uint8)
