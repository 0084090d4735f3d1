"""A splits folder (``ml_code.data.preprocess`` format) of the synthetic demo lesions
(``ml_code.tools.demo_data``), decoded by the package's own decode, split by lesion: a model
trained on it has seen dermoscopy-like images, which the OOD tests need (the colour-blob
``synth_splits`` are not lesion-like)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ml_code import CLASSES
from ml_code.package.image_policy import decode_square
from ml_code.tools.demo_data import generate_demo_dataset


def demo_images(folder: Path, size: int, lesions_per_class: int, seed: int) -> tuple[np.ndarray, pd.DataFrame]:
    """uint8 ``(N, size, size, 3)`` model views of a fresh demo dataset and its metadata rows."""
    generate_demo_dataset(folder, lesions_per_class, images_per_lesion=(1, 2), seed=seed)
    meta = pd.read_csv(folder / "HAM10000_metadata.csv", dtype=str)
    views = np.stack([decode_square((folder / "images" / f"{i}.jpg").read_bytes(), size) for i in meta["image_id"]])
    return views, meta


def make_demo_splits(folder: Path, size: int = 32, lesions_per_class: int = 14, seed: int = 0) -> Path:
    """Lesion-grouped train/val/test (about 60/20/20 of lesions) written as preprocess does."""
    views, meta = demo_images(folder.parent / "demo-raw", size, lesions_per_class, seed)
    folder.mkdir(parents=True, exist_ok=True)
    lesion_no = meta["lesion_id"].str[-6:].astype(int).to_numpy()
    part = np.where(lesion_no % 5 == 3, "val", np.where(lesion_no % 5 == 4, "test", "train"))
    labels = meta["dx"].map({c: i for i, c in enumerate(CLASSES)}).to_numpy(np.int64)
    for name in ("train", "val", "test"):
        keep = part == name
        np.save(folder / f"{name}_images.npy", views[keep])
        np.save(folder / f"{name}_labels.npy", labels[keep])
        rows = meta[keep].assign(label=labels[keep], sha256=[f"{i:064x}" for i in range(int(keep.sum()))])
        rows[["image_id", "lesion_id", "dx", "label", "sha256", "age", "sex", "localization"]].to_csv(
            folder / f"{name}_index.csv", index=False)
    (folder / "classes.json").write_text(json.dumps(list(CLASSES)))
    (folder / "summary.json").write_text(json.dumps({"image_size": size}))
    (folder / "quarantine.csv").write_text("image_id,reason\n")
    return folder
