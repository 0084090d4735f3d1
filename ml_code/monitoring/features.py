"""Per-image acquisition features used for data-quality baselines and drift detection.

The feature code itself ships in the model package (``ml_code.package.image_features``): the
endpoint computes the features of every request's model view and returns them with its answer,
so the monitor reads them from the capture instead of decoding each image again. This module
re-exports it for the monitor and the baseline and adds the tabular forms they use: a
``DataFrame`` of a batch (:func:`batch_features`) and of a list of images of different sizes
(:func:`image_features`). See that module for why these features.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ml_code.package.image_features import (  # noqa: F401  (re-exported: one copy of the feature code)
    _LUMA,
    ANSWER_FEATURES,
    ANSWER_FIELD,
    FEATURE_NAMES,
    GEOMETRY_FEATURES,
    PIXEL_FEATURES,
    answer_features,
    check_batch,
    pixel_features,
    sent_size,
    valid_answer_features,
)


def batch_features(images: np.ndarray, chunk: int = 32) -> pd.DataFrame:
    """Features of a same-sized batch ``(N, H, W, 3)`` uint8; one row per image, columns
    :data:`FEATURE_NAMES` (pixel features from :func:`pixel_features`, geometry of the batch's
    own size). See ``pixel_features`` for the chunking."""
    images = check_batch(images, "batch_features")
    n, h, w, _ = images.shape
    data: dict[str, np.ndarray] = dict(pixel_features(images, chunk))
    data["width"] = np.full(n, float(w))
    data["height"] = np.full(n, float(h))
    data["aspect_ratio"] = np.full(n, w / h)
    return pd.DataFrame(data, columns=list(FEATURE_NAMES))


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
        arr = check_batch(np.asarray(img), f"image_features[{i}]")
        groups.setdefault(arr.shape[1:], []).append(i)
    frames = []
    for idx in groups.values():
        frame = batch_features(np.stack([np.asarray(images[i]) for i in idx]))
        frame.index = idx
        frames.append(frame)
    return pd.concat(frames).sort_index().reset_index(drop=True)
