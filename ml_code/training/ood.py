"""Out-of-distribution statistics of a model package, fitted when the package is built.

The training job calls :func:`add_ood_stats` on the model directory it has just written; the
same function, run as ``python -m ml_code.training.ood``, adds the statistics to an existing
package (weights unchanged, code re-written) given the splits it was trained on:

    python -m ml_code.training.ood --model model.tar.gz --splits SPLITS_DIR --out new/model.tar.gz

What is fitted (scoring is in ``ml_code/package/ood.py``, which cites the method, Lee et al. 2018):
class means of the training split's penultimate-layer embeddings, one shared covariance with
Ledoit-Wolf shrinkage (scikit-learn, here at packaging time; the served package needs only
NumPy), and the threshold: the 95th percentile of the validation split's scores, so 95% of
in-distribution validation images pass.
"""

from __future__ import annotations

import argparse
import json
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.covariance import LedoitWolf

from ml_code.atomic import write_text_atomic
from ml_code.data.split_reader import Split, load_splits
from ml_code.package.loader import write_code
from ml_code.package.model import embed_fn, load_model, preprocess_array
from ml_code.package.ood import MahalanobisOOD

OOD_FILE = "ood.npz"
PASS_QUANTILE = 0.95
#: Most training images embedded for the statistics (a seeded sample beyond this): the
#: covariance of a 1280-d embedding is well estimated from far fewer, and packaging stays quick.
MAX_TRAIN_IMAGES = 20000


def embed_images(images: np.ndarray, model: Any, chunk: int = 256) -> np.ndarray:
    """Penultimate embeddings ``(N, D)`` of uint8 ``(N, S, S, 3)`` images, as the endpoint
    computes them (the identity view, the package's normalisation)."""
    out = [embed_fn(preprocess_array(np.asarray(images[i:i + chunk]), model), model)
           for i in range(0, len(images), chunk)]
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def fit_ood_stats(train_emb: np.ndarray, train_labels: np.ndarray, val_emb: np.ndarray,
                  quantile: float = PASS_QUANTILE) -> tuple[MahalanobisOOD, np.ndarray]:
    """Fitted statistics and the validation scores ``(N_val,)``.

    ``train_emb`` ``(N, D)`` with class labels ``(N,)``: one mean per class present, the
    shared covariance of the class-centred embeddings with Ledoit-Wolf shrinkage (well
    conditioned even when D is near N). Raises ValueError on empty input."""
    if len(train_emb) < 2 or len(val_emb) < 1:
        raise ValueError(f"OOD statistics need >= 2 training and >= 1 validation embeddings; got "
                         f"{len(train_emb)} and {len(val_emb)}")
    x = np.asarray(train_emb, np.float64)
    labels = np.asarray(train_labels)
    classes = np.unique(labels)
    means = np.stack([x[labels == c].mean(0) for c in classes])
    centred = x - means[np.searchsorted(classes, labels)]
    precision = LedoitWolf(assume_centered=True).fit(centred).precision_
    precision = (precision + precision.T) / 2.0
    whitening = np.linalg.cholesky(precision)  # P = L L^T
    stats = MahalanobisOOD(means, whitening, threshold=0.0)
    val_scores = stats.scores(val_emb)
    return MahalanobisOOD(means, whitening, float(np.quantile(val_scores, quantile))), val_scores


def add_ood_stats(model_dir: Path, train: Split, val: Split, log=print, seed: int = 0) -> dict[str, Any]:
    """Fit the package's OOD statistics, write ``ood.npz``, record them in ``model_config.json``
    (``"ood"``: file, method, layer, dim, threshold, quantile, reference) and re-write ``code/``
    so the package serves them. Returns that ``"ood"`` record."""
    model = load_model(model_dir)
    idx = np.arange(len(train.labels))
    if len(idx) > MAX_TRAIN_IMAGES:
        idx = np.sort(np.random.default_rng(seed).choice(idx, MAX_TRAIN_IMAGES, replace=False))
    train_emb = embed_images(train.images[idx] if len(idx) < len(train.labels) else train.images, model)
    val_emb = embed_images(val.images, model)
    stats, val_scores = fit_ood_stats(train_emb, np.asarray(train.labels)[idx], val_emb)
    stats.save(model_dir / OOD_FILE)
    record = {
        "file": OOD_FILE, "method": "mahalanobis_min_class_shared_covariance", "shrinkage": "ledoit_wolf",
        "layer": "penultimate (the classification head's input), identity view", "dim": stats.dim,
        "threshold": stats.threshold, "quantile": PASS_QUANTILE,
        "val_pass_rate": float(stats.in_distribution(val_scores).mean()),
        "n_train": len(train_emb), "n_val": len(val_emb),
        "reference": "Lee et al. 2018, A Simple Unified Framework for Detecting Out-of-Distribution Samples "
                     "and Adversarial Attacks (NeurIPS)",
    }
    config_path = model_dir / "model_config.json"
    config = json.loads(config_path.read_text())
    config["ood"] = record
    write_text_atomic(config_path, json.dumps(config, indent=2))
    write_code(model_dir)
    log(f"OOD statistics: {stats.dim}-d embeddings of {len(train_emb)} training images; threshold "
        f"{stats.threshold:.3f} passes {record['val_pass_rate']:.1%} of {len(val_emb)} validation images")
    return record


def repackage(model_tar: Path, splits_dir: Path, out_tar: Path) -> dict[str, Any]:
    """An existing ``model.tar.gz`` with OOD statistics added, written to ``out_tar`` (the
    weights are untouched; ``code/`` becomes this repository's package code)."""
    splits, _ = load_splits(splits_dir)
    with tempfile.TemporaryDirectory(prefix="dermaops-ood-") as tmp:
        model_dir = Path(tmp) / "model"
        with tarfile.open(model_tar, "r:*") as tar:
            tar.extractall(model_dir, filter="data")
        record = add_ood_stats(model_dir, splits["train"], splits["val"])
        out_tar.parent.mkdir(parents=True, exist_ok=True)
        part = out_tar.with_name(f".{out_tar.name}.part")
        with tarfile.open(part, "w:gz") as tar:
            for path in sorted(model_dir.rglob("*")):
                tar.add(path, arcname=path.relative_to(model_dir).as_posix(), recursive=False)
        part.replace(out_tar)
    return record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Add out-of-distribution statistics to a model package.")
    parser.add_argument("--model", type=Path, required=True, help="the package's model.tar.gz")
    parser.add_argument("--splits", type=Path, required=True, help="the processed splits it was trained on")
    parser.add_argument("--out", type=Path, required=True, help="where to write the new model.tar.gz")
    args = parser.parse_args(argv)
    print(json.dumps(repackage(args.model, args.splits, args.out), indent=2))


if __name__ == "__main__":
    main()
