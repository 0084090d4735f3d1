"""Reader of the splits channel that :mod:`ml_code.data.preprocess` writes.

It lives next to its writer so the on-disk format (docs/ARCHITECTURE.md, "Processing job")
is read and written in one package; training, evaluation, monitoring and the benchmarks
all open splits through :func:`load_splits`.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ml_code.package import descriptors


@dataclass
class Split:
    """One split as training reads it: arrays stay memory-mapped, nothing is copied."""

    images: np.ndarray  # uint8 (N, S, S, 3), memory-mapped
    labels: np.ndarray  # int64 (N,)
    clinical: np.ndarray | None = None  # float32 (N, len(descriptors.CLINICAL_FEATURES)), NaN = unknown


def load_clinical(index_path: Path, n: int) -> np.ndarray | None:
    """Clinical features of a split from its ``{split}_index.csv`` (None when the file or the
    age/sex/localization columns are absent, e.g. splits written before they were added)."""
    if not index_path.is_file():
        return None
    with index_path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if len(rows) != n:
        raise ValueError(f"{index_path} has {len(rows)} rows but the split holds {n} images; re-run preprocessing")
    if not rows or not {"age", "sex", "localization"} <= set(rows[0]):
        return None
    return descriptors.clinical_features([r["age"] for r in rows], [r["sex"] for r in rows],
                                         [r["localization"] for r in rows])


def _load_split(folder: Path, name: str, classes: list[str]) -> Split | None:
    """One split's arrays, checked; None for a missing test split (train and val are required)."""
    img_path, lab_path = folder / f"{name}_images.npy", folder / f"{name}_labels.npy"
    if not img_path.is_file() or not lab_path.is_file():
        if name == "test":
            return None
        raise FileNotFoundError(f"{img_path.name} / {lab_path.name} missing from the splits channel {folder}")
    images = np.load(img_path, mmap_mode="r")
    labels = np.asarray(np.load(lab_path), dtype=np.int64)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3 or images.shape[1] != images.shape[2]:
        raise ValueError(f"{img_path} must be uint8 (N, S, S, 3); got {images.dtype} {images.shape}")
    if len(labels) != len(images):
        raise ValueError(f"{name}: {len(images)} images but {len(labels)} labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
        raise ValueError(f"{lab_path} has labels outside [0, {len(classes)}) for classes {classes}")
    return Split(images, labels, load_clinical(folder / f"{name}_index.csv", len(labels)))


def load_splits(folder: Path) -> tuple[dict[str, Split], list[str]]:
    """Open the preprocess output: ``({"train", "val"[, "test"]: Split}, classes)``.

    Train and val must be non-empty and of one image size; test is optional (training
    does not need it)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"splits channel folder {folder} does not exist; pass the preprocess job's 'splits' output")
    classes_path = folder / "classes.json"
    if not classes_path.is_file():
        raise FileNotFoundError(
            f"{classes_path} is missing: the 'splits' channel must be the ml_code.data.preprocess output folder "
            f"(found {sorted(p.name for p in folder.iterdir())[:10]})"
        )
    classes = json.loads(classes_path.read_text())
    splits: dict[str, Split] = {}
    for name in ("train", "val", "test"):
        split = _load_split(folder, name, classes)
        if split is not None:
            splits[name] = split
    if len(splits["train"].labels) == 0 or len(splits["val"].labels) == 0:
        raise ValueError(f"train and val splits must be non-empty (sizes {[len(s.labels) for s in splits.values()]})")
    if splits["train"].images.shape[1:] != splits["val"].images.shape[1:]:
        raise ValueError("train and val images differ in size")
    return splits, classes
