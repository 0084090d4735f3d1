"""Per-image acquisition features: what monitoring compares between training data and traffic.

Why these features: a dermoscopy classifier silently degrades when the *acquisition* changes
(a new camera, a colour-normalisation step, a different light source, blur from a bad focus).
Those changes show up in simple pixel statistics long before labels arrive, so the baseline
(the training split) and every served request are summarised by the same cheap, vectorised
features computed here, on the same square model view.

Ships inside ``model.tar.gz`` (NumPy only; relative imports): the endpoint computes the
features of the view it has just decoded for the network and returns them with the answer
(:func:`answer_features`, ``"image_features"`` in ``inference.output_fn``), so the monitor reads
them from the capture instead of decoding every captured image again. The monitor's own code
(``ml_code.monitoring.features``) is a re-export of this module, so the baseline, the endpoint and
the fallback decode of older captures can never disagree.

Pixel features are on a 0-1 scale so thresholds do not depend on bit depth.
"""

from __future__ import annotations

import math

import numpy as np

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
#: What an answer's ``"image_features"`` holds: the pixel features and the image's size as sent.
ANSWER_FEATURES: tuple[str, ...] = PIXEL_FEATURES + ("width", "height")
ANSWER_FIELD = "image_features"
"""Key of the features in the endpoint's JSON answer."""

# ITU-R BT.601 luma weights: the usual definition of "brightness" of an RGB image.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_HIST_BINS = 64


def check_batch(images: np.ndarray, where: str) -> np.ndarray:
    """``images`` as a uint8 batch ``(N, H, W, 3)`` (a single ``(H, W, 3)`` gets N = 1); TypeError or
    ValueError saying what is wrong and how to fix it."""
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


def pixel_features(images: np.ndarray, chunk: int = 32) -> dict[str, np.ndarray]:
    """``{name: (N,) float32}`` for each of :data:`PIXEL_FEATURES` of a same-sized uint8 batch
    ``(N, H, W, 3)`` (or one ``(H, W, 3)`` image).

    Every reduction is per image, so an image's values do not depend on the batch it is in (one
    request at the endpoint, a chunk of a training split in the baseline: the same figures).
    Works in chunks so a memory-mapped split of thousands of images never needs more than
    ``chunk`` images converted to float at a time; 32 images at 96 px (3.5 MB of float32 planes)
    stay in the CPU cache, which is several times faster than 256 (benchmarks/monitoring_volume.py).
    """
    images = check_batch(images, "pixel_features")
    parts = [_features_chunk(np.asarray(images[i:i + chunk])) for i in range(0, len(images), chunk)]
    return {name: np.concatenate([p[name] for p in parts]) if parts else np.zeros(0, np.float32)
            for name in PIXEL_FEATURES}


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


def sent_size(facts) -> tuple[int, int]:
    """``(width, height)`` of the image as stored in the file the client sent, from the image
    policy's ``ImageFacts`` (whose width/height are after the EXIF orientation, so a transposing
    orientation 5-8 swaps them back): the geometry the monitor has always logged."""
    if facts.orientation in (5, 6, 7, 8):
        return int(facts.height), int(facts.width)
    return int(facts.width), int(facts.height)


def answer_features(view: np.ndarray, size: tuple[int, int]) -> dict[str, float]:
    """The answer's ``"image_features"``: ``{pixel feature: float}`` of one model view
    ``(S, S, 3)`` uint8 (the square the network was fed) plus ``"width"``/``"height"`` (px, the
    image as sent, :func:`sent_size`). Floats are the float32 figures widened exactly, so a JSON
    round trip gives the monitor the very values its own decode would compute.

    Cost: about 0.2-0.3 ms per request at 96 px, 0.7-1.3 ms at 224 px (benchmarks/monitoring_volume.py prints
    it), next to tens of milliseconds for the forward pass; it saves the monitor a decode per request."""
    feats = pixel_features(view, chunk=1)
    out = {name: float(values[0]) for name, values in feats.items()}
    out["width"], out["height"] = float(size[0]), float(size[1])
    return out


_PIXEL_COUNT = len(PIXEL_FEATURES)


def valid_answer_features(value: object) -> dict[str, float] | None:
    """An answer's ``"image_features"`` as ``{name: float}`` when it holds every one of
    :data:`ANSWER_FEATURES` as a finite number within the features' range (pixel features >= 0,
    width and height > 0), else None (an older package, another writer, or a tampered line: the
    monitor then decodes the image itself). Called once per captured request, so it checks types
    with ``type(...) in`` over one list rather than per-name ``isinstance`` calls."""
    if not isinstance(value, dict):
        return None
    values = [value.get(name) for name in ANSWER_FEATURES]
    if not all(type(v) in (float, int) for v in values):  # bool and None and str are not numbers here
        return None
    if not all(map(math.isfinite, values)) or min(values[:_PIXEL_COUNT]) < 0 or min(values[_PIXEL_COUNT:]) <= 0:
        return None
    return dict(zip(ANSWER_FEATURES, map(float, values)))
