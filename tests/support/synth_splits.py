"""A tiny synthetic splits folder in the ``ml_code.data.preprocess`` output format, for the
train/evaluate/inference tests: each of the 7 classes has its own base colour and a
class-dependent bright blob, plus per-image noise, so a small net can learn it in seconds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ml_code import CLASSES

# Distinct, well separated RGB base colours, one per class.
PALETTE = np.array(
    [[200, 60, 60], [60, 200, 60], [60, 60, 200], [200, 200, 60], [200, 60, 200], [60, 200, 200], [140, 140, 140]],
    dtype=np.float64,
)


def synth_images(labels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    n = len(labels)
    base = PALETTE[labels][:, None, None, :]
    noise = rng.normal(0, 30, size=(n, size, size, 3))
    yy, xx = np.mgrid[0:size, 0:size]
    blob = np.zeros((n, size, size, 1))
    for i, lab in enumerate(labels):
        r = 2 + (lab % 3) * size / 10
        cy, cx = rng.uniform(size * 0.3, size * 0.7, 2)
        blob[i, ..., 0] = ((yy - cy) ** 2 + (xx - cx) ** 2) < r * r
    return np.clip(base + noise + 50 * blob, 0, 255).astype(np.uint8)


def make_splits(folder: Path, size: int = 16, n_train: int = 280, n_val: int = 84, n_test: int = 84, seed: int = 0) -> Path:
    """Write ``{split}_images.npy``/``_labels.npy``/``_index.csv``, ``classes.json``, ``summary.json``.
    Class frequencies are imbalanced (like HAM10000), but every class appears in every split."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    probs = np.array([0.08, 0.1, 0.14, 0.07, 0.14, 0.4, 0.07])
    summary = {"image_size": size, "splits": {}, "lesions": {}}
    for name, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        labels = np.concatenate([np.arange(7).repeat(2), rng.choice(7, size=n - 14, p=probs)]).astype(np.int64)
        rng.shuffle(labels)
        np.save(folder / f"{name}_images.npy", synth_images(labels, size, rng))
        np.save(folder / f"{name}_labels.npy", labels)
        # Clinical context, as preprocess writes it: age drifts with the class (like nv vs bcc),
        # some values unknown, sites from both archives' vocabularies.
        ages = [("" if i % 11 == 0 else f"{25 + 7 * l + int(rng.integers(0, 10))}.0") for i, l in enumerate(labels)]
        sites = ["back", "face", "lower extremity", "posterior torso", "unknown"]
        rows = ["image_id,lesion_id,dx,label,sha256,age,sex,localization"] + [
            f"SYN_{name}_{i:05d},SYNL_{name}_{i:05d},{CLASSES[l]},{l},{i:064x},{ages[i]},"
            f"{('male', 'female', 'unknown')[i % 3]},{sites[i % len(sites)]}" for i, l in enumerate(labels)
        ]
        (folder / f"{name}_index.csv").write_text("\n".join(rows) + "\n")
        summary["splits"][name] = {c: int((labels == j).sum()) for j, c in enumerate(CLASSES)}
        summary["lesions"][name] = int(n)
    (folder / "classes.json").write_text(json.dumps(list(CLASSES)))
    (folder / "summary.json").write_text(json.dumps(summary))
    (folder / "quarantine.csv").write_text("image_id,reason\n")
    return folder
