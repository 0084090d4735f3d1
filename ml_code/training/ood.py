"""Out-of-distribution statistics of a model package, fitted when the package is built.

The training job calls :func:`add_ood_stats` on the model directory it has just written; the
same function, run as ``python -m ml_code.training.ood``, adds the statistics to an existing
package (weights unchanged, code re-written) given the splits it was trained on:

    python -m ml_code.training.ood --model model.tar.gz --splits SPLITS_DIR --out new/model.tar.gz

What is fitted (scoring and the combination rule are in ``ml_code/package/ood.py``, which cites
the method, Lee et al. 2018's Mahalanobis feature ensemble): for every layer that
``networks.layer_features`` returns (stem and stage ends as spatial mean and standard
deviation per channel, and the penultimate embedding), the class means of the training split's
features and one shared covariance with Ledoit-Wolf shrinkage (scikit-learn, here at packaging
time; the served package needs only NumPy); then each layer's validation median and 95th
percentile (its scale) and the overall threshold: the 95th percentile of the validation split's
combined scores, so 95% of in-distribution validation images pass.
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
from ml_code.package.model import load_model, ood_features_fn, preprocess_array
from ml_code.package.ood import MahalanobisLayer, MahalanobisOOD

OOD_FILE = "ood.npz"
PASS_QUANTILE = 0.95
#: Most training images whose features are taken (a seeded sample beyond this): the
#: covariance of a 1280-d embedding is well estimated from far fewer, and packaging stays quick.
MAX_TRAIN_IMAGES = 20000
RULE = ("flag when max over layers of (d_l - median_l) / (q95_l - median_l) > threshold, where d_l is the "
        "layer's Mahalanobis distance to the nearest class mean, median_l and q95_l its validation median and "
        "95th percentile, and threshold the validation 95th percentile of that maximum (95% of validation "
        "images pass overall)")
REFERENCE = ("Lee et al. 2018, A Simple Unified Framework for Detecting Out-of-Distribution Samples and "
             "Adversarial Attacks (NeurIPS): Mahalanobis score with the feature ensemble; layers combined by "
             "a validation-calibrated union of per-layer tests instead of their OOD-fitted logistic regression")


def layer_features_of(images: np.ndarray, model: Any, chunk: int = 256) -> dict[str, np.ndarray]:
    """``{layer name: (N, D_l)}`` of uint8 ``(N, S, S, 3)`` images, as the endpoint computes them
    (the identity view, the package's normalisation; ``networks.layer_features``)."""
    parts: dict[str, list[np.ndarray]] = {}
    for i in range(0, len(images), chunk):
        for name, f in ood_features_fn(preprocess_array(np.asarray(images[i:i + chunk]), model), model).items():
            parts.setdefault(name, []).append(f)
    return {name: np.concatenate(p) for name, p in parts.items()}


def fit_layer(name: str, train: np.ndarray, train_labels: np.ndarray) -> MahalanobisLayer:
    """One layer's class means and whitening (``centre``/``scale`` not yet set).

    ``train`` ``(N, D)`` with class labels ``(N,)``: one mean per class present, the shared
    covariance of the class-centred features with Ledoit-Wolf shrinkage (well conditioned even
    when D is near N)."""
    x = np.asarray(train, np.float64)
    labels = np.asarray(train_labels)
    classes = np.unique(labels)
    means = np.stack([x[labels == c].mean(0) for c in classes])
    centred = x - means[np.searchsorted(classes, labels)]
    precision = LedoitWolf(assume_centered=True).fit(centred).precision_
    whitening = np.linalg.cholesky((precision + precision.T) / 2.0)  # P = L L^T
    return MahalanobisLayer(name, means, whitening)


def fit_ood_stats(train: dict[str, np.ndarray] | np.ndarray, train_labels: np.ndarray,
                  val: dict[str, np.ndarray] | np.ndarray,
                  quantile: float = PASS_QUANTILE) -> tuple[MahalanobisOOD, np.ndarray]:
    """Fitted ensemble and the validation scores ``(N_val,)``.

    ``train``/``val``: ``{layer name: (N, D_l)}`` (a bare array is the penultimate embedding
    alone). Each layer: :func:`fit_layer`, then its validation median and 95th percentile set its
    scale; the threshold is the ``quantile`` of the validation maxima. Raises ValueError on empty
    input or when train and val name different layers."""
    train = train if isinstance(train, dict) else {"penultimate": train}
    val = val if isinstance(val, dict) else {"penultimate": val}
    n_train, n_val = len(next(iter(train.values()))), len(next(iter(val.values())))
    if n_train < 2 or n_val < 1:
        raise ValueError(f"OOD statistics need >= 2 training and >= 1 validation images; got {n_train} and {n_val}")
    if set(train) != set(val):
        raise ValueError(f"training features name layers {sorted(train)} but validation {sorted(val)}")
    layers = []
    for name in train:
        layer = fit_layer(name, train[name], train_labels)
        d = layer.distances(val[name])
        centre, q = float(np.median(d)), float(np.quantile(d, PASS_QUANTILE))
        layers.append(MahalanobisLayer(name, layer.class_means, layer.whitening, centre, max(q - centre, 1e-6)))
    stats = MahalanobisOOD(tuple(layers), threshold=0.0)
    val_scores = stats.scores(val)
    return MahalanobisOOD(stats.layers, float(np.quantile(val_scores, quantile))), val_scores


def add_ood_stats(model_dir: Path, train: Split, val: Split, log=print, seed: int = 0) -> dict[str, Any]:
    """Fit the package's OOD statistics, write ``ood.npz``, record them in ``model_config.json``
    (``"ood"``: file, method, rule, reference, threshold, quantile, and per layer its name, width,
    validation median/scale, the distance above which it flags an image, and the share of
    validation images it alone flags)
    and re-write ``code/`` so the package serves them. Returns that ``"ood"`` record."""
    model = load_model(model_dir)
    idx = np.arange(len(train.labels))
    if len(idx) > MAX_TRAIN_IMAGES:
        idx = np.sort(np.random.default_rng(seed).choice(idx, MAX_TRAIN_IMAGES, replace=False))
    train_f = layer_features_of(train.images[idx] if len(idx) < len(train.labels) else train.images, model)
    val_f = layer_features_of(val.images, model)
    stats, val_scores = fit_ood_stats(train_f, np.asarray(train.labels)[idx], val_f)
    stats.save(model_dir / OOD_FILE)
    per_layer = stats.layer_scores(val_f)
    record = {
        "file": OOD_FILE, "version": 2, "method": "mahalanobis_feature_ensemble_min_class_shared_covariance",
        "shrinkage": "ledoit_wolf", "rule": RULE, "reference": REFERENCE,
        "layers": [{"name": layer.name, "dim": layer.dim,
                    "features": "penultimate embedding (the classification head's input)" if layer.name == "penultimate"
                    else "per-channel spatial mean and standard deviation of the layer's output",
                    "val_median": layer.centre, "val_scale": layer.scale,
                    "distance_threshold": layer.centre + stats.threshold * layer.scale,
                    "val_flag_rate": float((per_layer[i] > stats.threshold).mean())}
                   for i, layer in enumerate(stats.layers)],
        "view": "identity", "dim": stats.dim, "threshold": stats.threshold, "quantile": PASS_QUANTILE,
        "val_pass_rate": float(stats.in_distribution(val_scores).mean()),
        "n_train": len(idx), "n_val": len(val_scores),
    }
    config_path = model_dir / "model_config.json"
    config = json.loads(config_path.read_text())
    config["ood"] = record
    write_text_atomic(config_path, json.dumps(config, indent=2))
    write_code(model_dir)
    log(f"OOD statistics: {len(stats.layers)} layers ({stats.dim} features) of {len(idx)} training images; "
        f"threshold {stats.threshold:.3f} passes {record['val_pass_rate']:.1%} of {len(val_scores)} validation images")
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
