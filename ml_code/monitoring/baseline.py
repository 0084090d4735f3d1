"""Model Monitor baseline for one trained model (processing job ``python -m ml_code.monitoring.baseline``).

Inputs (processing inputs): ``model`` (folder with ``model.tar.gz``), ``splits`` (the
preprocess output), optionally ``manifest`` (folder with the raw ``manifest.csv``, for the
original image geometry), optionally ``evaluation`` (the evaluation job's output for this
model: its held-out predictions, see :func:`compute_baseline`). Output ``baseline``:

- ``statistics.json``   Model Monitor layout: dataset.item_count, features[] with
  numerical_statistics (mean, std, min, max, quantile sketch and histogram buckets; the
  PSI bin edges under ``distribution.dermaops``); with a case mix also ``age`` and the
  categorical ``sex`` / ``body_region`` (string_statistics, counts per category).
- ``constraints.json``  Model Monitor layout, plus the drift thresholds this baseline is
  judged with (``monitoring_config.dermaops_drift_thresholds``).
- ``baseline_features.parquet``  per-image features of the training split (KS needs the sample).
- ``embeddings.npy``    penultimate-layer embeddings of up to ``max_embeddings`` held-out images.
- ``prediction_distribution.json``  predicted-class proportions expected under the dataset's class
  mix, from the held-out (validation + test) confusion rows (``expected_prediction_distribution``);
  ``scored_by`` says whether the evaluation's predictions of every held-out image or the
  baseline's own of the ``max_embeddings`` sample were used.
- ``baseline_case_mix.parquet``  age (capped at 90), sex and body region per training image
  (``ml_code.monitoring.casemix``), from ``train_index.csv``; absent when the split has no clinical
  columns, and then the case-mix test is skipped.

Why held-out images for embeddings and predictions: the model has memorised its training
images, so their embeddings are tighter and their predictions more confident than on any
new image. Comparing live traffic with *training* embeddings would flag drift on perfectly
in-distribution traffic. Pixel features do not depend on the model, so they use the
larger training split.

Hyperparameters: ``max_embeddings`` (2000), ``n_bins`` (10), ``seed`` (0), and any
``DriftThresholds`` field to override a threshold.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .casemix import UNKNOWN, case_mix_frame
from ml_code.atomic import atomic_path, write_json_atomic
from ml_code.evaluation.compare import HELD_OUT_IMAGE_ONLY
from ml_code.package.loader import open_package
from ml_code.contract import emit_metric, parse_hyperparameters, processing_input, processing_output, run_entry_point
from .drift import DEFAULT_BINS, DriftThresholds, bin_counts, psi_edges
from .features import FEATURE_NAMES, PIXEL_FEATURES, batch_features
from ml_code.data.split_reader import open_split_images

STATISTICS = "statistics.json"
CONSTRAINTS = "constraints.json"
FEATURES = "baseline_features.parquet"
EMBEDDINGS = "embeddings.npy"
PREDICTIONS = "prediction_distribution.json"
CASE_MIX = "baseline_case_mix.parquet"


# -- the packaged model ---------------------------------------------------------------

def load_packaged_model(model_tar: str | Path, workdir: str | Path) -> tuple[Any, Any]:
    """(helper api, model) of ``model.tar.gz`` opened through its own code
    (:func:`ml_code.package.loader.open_package`): the baseline then sees exactly what the
    endpoint serving this package sees."""
    if not Path(model_tar).is_file():
        raise FileNotFoundError(f"model package {model_tar} not found; pass the folder holding model.tar.gz "
                                "as the processing input 'model'.")
    package = open_package(model_tar, workdir, "baseline")
    return package.api, package.model


def embed_views(module: Any, model: Any, images: np.ndarray, batch: int = 32) -> np.ndarray:
    """Embeddings (N, D) float32 of uint8 NHWC model-view images: what the drift monitor compares.

    Only the penultimate layer, so one forward pass a batch (``embed_and_predict`` runs the served
    prediction too, twice the work, whose probabilities the monitor does not use); batches of 32
    keep the network's activations near 100 MB (64: 180 MB). The drift run calls it only for
    answers without a ``drift_embedding`` (packages from before it), the baseline for its held-out
    sample. The same values as ``embed_and_predict``'s embeddings (tests/ml_code/test_embed_views.py)."""
    embs = [np.asarray(module.embed_fn(module.preprocess_array(np.ascontiguousarray(images[i:i + batch]), model),
                                       model), dtype=np.float32)
            for i in range(0, len(images), batch)]
    return np.concatenate(embs) if embs else np.zeros((0, 0), np.float32)


def embed_and_predict(module: Any, model: Any, images: np.ndarray,
                      batch: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings (N, D), probabilities (N, C)) for uint8 NHWC model-view images."""
    embs, probs = [], []
    for i in range(0, len(images), batch):
        chunk = np.ascontiguousarray(images[i:i + batch])
        x = module.preprocess_array(chunk, model)
        embs.append(np.asarray(module.embed_fn(x, model), dtype=np.float32))
        # uint8 pixels, like a bare image POSTed to the endpoint: the served (fused) output
        probs.append(np.asarray(module.predict_fn(chunk, model), dtype=np.float64))
    if not embs:
        return np.zeros((0, 0), np.float32), np.zeros((0, len(model.classes)))
    return np.concatenate(embs), np.concatenate(probs)


# -- statistics / constraints ---------------------------------------------------------

def _numerical_feature(name: str, values: np.ndarray, n_bins: int) -> dict[str, Any]:
    """One numerical feature of ``statistics.json`` (NaN = missing), with the PSI bins."""
    v = np.asarray(values, dtype=np.float64)
    present = v[np.isfinite(v)]
    edges = psi_edges(present, n_bins)
    counts = bin_counts(present, edges)
    bounds = [float(present.min())] + [float(e) for e in edges[1:-1]] + [float(present.max())]
    buckets = [{"lower_bound": bounds[i], "upper_bound": bounds[i + 1], "count": float(counts[i + 1])}
               for i in range(len(bounds) - 1)]
    return {
        "name": name,
        "inferred_type": "Fractional",
        "numerical_statistics": {
            "common": {"num_present": int(present.size), "num_missing": int(v.size - present.size)},
            "mean": float(present.mean()), "sum": float(present.sum()),
            "std_dev": float(present.std()), "min": float(present.min()), "max": float(present.max()),
            "distribution": {
                "kll": {
                    "buckets": buckets,
                    # An exact quantile summary in the KLL sketch's place (not a KLL sketch).
                    "sketch": {"parameters": {"c": 0.64, "k": 2048.0},
                               "data": [np.quantile(present, np.linspace(0, 1, 101)).tolist()]},
                },
                "dermaops": {"psi_edges": edges.tolist(), "psi_counts": counts.tolist()},
            },
        },
    }


def _string_feature(name: str, values: pd.Series) -> dict[str, Any]:
    """One categorical feature of ``statistics.json``; ``unknown`` counts as missing."""
    present = values[values != UNKNOWN]
    counts = present.value_counts()
    return {
        "name": name,
        "inferred_type": "String",
        "string_statistics": {
            "common": {"num_present": int(len(present)), "num_missing": int(len(values) - len(present))},
            "distinct_count": float(len(counts)),
            "distribution": {"categorical": {"buckets": [{"value": str(k), "count": float(n)}
                                                         for k, n in counts.items()]}},
        },
    }


def feature_statistics(features: pd.DataFrame, n_bins: int = DEFAULT_BINS,
                       case_mix: pd.DataFrame | None = None) -> dict[str, Any]:
    """Model Monitor ``statistics.json`` for a per-image feature table, and the case mix
    (``age`` numerical, ``sex`` and ``body_region`` categorical) when given. Only aggregates:
    counts per category and quantiles of the capped ages, nothing per image."""
    out = [_numerical_feature(name, features[name].to_numpy(dtype=np.float64), n_bins) for name in features.columns]
    if case_mix is not None:
        if case_mix["age"].notna().any():
            out.append(_numerical_feature("age", case_mix["age"].to_numpy(dtype=np.float64), n_bins))
        out += [_string_feature(name, case_mix[name]) for name in ("sex", "body_region")]
    return {"version": 0.0, "dataset": {"item_count": int(len(features))}, "features": out}


def feature_constraints(statistics: Mapping[str, Any], thresholds: DriftThresholds) -> dict[str, Any]:
    """Model Monitor ``constraints.json`` derived from statistics, with our drift thresholds."""
    feats = []
    n = max(1, statistics["dataset"]["item_count"])
    for f in statistics["features"]:
        if f["inferred_type"] == "String":
            stats_ = f["string_statistics"]
            feats.append({"name": f["name"], "inferred_type": "String",
                          "completeness": stats_["common"]["num_present"] / n,
                          "string_constraints": {"domains": [b["value"] for b in
                                                             stats_["distribution"]["categorical"]["buckets"]]}})
            continue
        num = f["numerical_statistics"]
        feats.append({"name": f["name"], "inferred_type": "Fractional",
                      "completeness": num["common"]["num_present"] / n,
                      "num_constraints": {"is_non_negative": bool(num["min"] >= 0)}})
    return {
        "version": 0.0,
        "features": feats,
        "monitoring_config": {
            "evaluate_constraints": "Enabled",
            "emit_metrics": "Enabled",
            "distribution_constraints": {"perform_comparison": "Enabled", "comparison_threshold": thresholds.psi,
                                         "comparison_method": "Robust"},
            "dermaops_drift_thresholds": asdict(thresholds),
        },
    }


def case_mix_counts(statistics: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """Training images per sex and per body region, from ``statistics.json`` (empty for a
    baseline without a case mix): what the baseline's materialization shows in the UI."""
    return {f["name"]: {b["value"]: b["count"] for b in f["string_statistics"]["distribution"]["categorical"]["buckets"]}
            for f in statistics.get("features", []) if f.get("inferred_type") == "String"}


def edges_from_statistics(statistics: Mapping[str, Any]) -> dict[str, list[float]]:
    """PSI bin edges per feature as stored by :func:`feature_statistics`."""
    return {f["name"]: f["numerical_statistics"]["distribution"]["dermaops"]["psi_edges"]
            for f in statistics.get("features", [])
            if "dermaops" in f.get("numerical_statistics", {}).get("distribution", {})}


def _geometry(splits_dir: Path, manifest_dir: Path | None) -> pd.DataFrame | None:
    """Original width/height of the training images, from the raw manifest (if given)."""
    if manifest_dir is None or not (manifest_dir / "manifest.csv").is_file():
        return None
    index = pd.read_csv(splits_dir / "train_index.csv", usecols=["image_id"])
    manifest = pd.read_csv(manifest_dir / "manifest.csv", usecols=["image_id", "width", "height"])
    merged = index.merge(manifest.drop_duplicates("image_id"), on="image_id", how="left")
    w, h = merged["width"].to_numpy(float), merged["height"].to_numpy(float)
    return pd.DataFrame({"width": w, "height": h, "aspect_ratio": w / np.where(h > 0, h, np.nan)})


def _case_mix(splits_dir: Path) -> pd.DataFrame | None:
    """The training split's case mix, or None when its index has no clinical columns."""
    index_path = splits_dir / "train_index.csv"
    if not index_path.is_file():
        return None
    index = pd.read_csv(index_path, dtype=str, keep_default_na=False)
    if not {"age", "sex", "localization"} <= set(index.columns):
        return None
    return case_mix_frame(index["age"].tolist(), index["sex"].tolist(), index["localization"].tolist())


def _split_size(splits_dir: Path, split: str) -> int:
    images = open_split_images(splits_dir, split)
    return 0 if images is None else len(images)


FEATURE_CHUNK = 2048
"""Images per feature batch of a split: bounds memory whatever the split's size."""


def _split_features(images) -> pd.DataFrame:
    """:func:`batch_features` of a whole split, read ``FEATURE_CHUNK`` images at a time."""
    parts = [batch_features(np.asarray(images[i:i + FEATURE_CHUNK])) for i in range(0, len(images), FEATURE_CHUNK)]
    return pd.concat(parts, ignore_index=True)


def _class_prior(splits_dir: Path, n_classes: int) -> np.ndarray:
    """Class proportions over every split (``{split}_labels.npy``): the case mix the whole
    dataset has, which no single small split reproduces."""
    counts = np.zeros(n_classes, np.float64)
    for split in ("train", "val", "test"):
        path = splits_dir / f"{split}_labels.npy"
        if path.is_file():
            counts += np.bincount(np.load(path), minlength=n_classes)[:n_classes]
    return counts / max(1.0, counts.sum())


def expected_prediction_distribution(predicted: np.ndarray, true: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """Predicted-class proportions expected on traffic with the dataset's case mix, shape (C,).

    ``sum_c prior[c] * P(predicted | true = c)``, the rows of the held-out confusion matrix
    weighted by the class prior (the standard decomposition of the predicted-label marginal under
    label shift, Lipton et al. 2018, "Detecting and Correcting for Label Shift with Black Box
    Predictors", eq. 1). Why not the raw held-out proportions: lesion splits are drawn by a hash
    of the lesion (``ml_code.data.splits``), so on a small dataset a validation split's class mix
    can be far from the data's, and prediction drift would then be flagged on traffic with the
    very case mix the model was trained on. A class with no held-out image contributes its
    prior to its own column (a confusion row of the identity). ``predicted``/``true``: (N,)
    class indices; ``prior``: (C,) proportions summing to 1."""
    n = len(prior)
    rows = np.eye(n)
    for c in range(n):
        of_class = predicted[true == c]
        if len(of_class):
            rows[c] = np.bincount(of_class, minlength=n)[:n] / len(of_class)
    out = prior @ rows
    return out / max(out.sum(), 1e-12)


def _write_parquet_atomic(frame: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)


def evaluated_held_out(evaluation_dir: Path | None, held_out: list[str], sizes: list[int],
                       n_classes: int) -> np.ndarray | None:
    """The evaluation's served image-only probabilities of the held-out splits, concatenated in
    ``held_out`` order, shape (sum(sizes), C); None when ``evaluation_dir`` has none for these
    splits (no evaluation given, an evaluation without them, or of other splits), and the baseline
    then scores the images itself."""
    path = None if evaluation_dir is None else evaluation_dir / HELD_OUT_IMAGE_ONLY
    if path is None or not path.is_file():
        return None
    with np.load(path) as stored:
        parts = [stored[s] if s in stored.files else None for s in held_out]
    if any(p is None or p.shape != (n, n_classes) for p, n in zip(parts, sizes)):
        return None
    return np.concatenate(parts).astype(np.float64)


def compute_baseline(splits_dir: str | Path, model_tar: str | Path, out_dir: str | Path,
                     manifest_dir: str | Path | None = None, max_embeddings: int = 2000, n_bins: int = DEFAULT_BINS,
                     seed: int = 0, thresholds: DriftThresholds | None = None,
                     evaluation_dir: str | Path | None = None) -> dict[str, Any]:
    """Write every baseline file into ``out_dir``; returns a small summary.

    ``evaluation_dir``: the evaluation job's output for this model (``ml_code.evaluation.evaluate``).
    Its served image-only probabilities of every validation and test image give the expected
    prediction distribution, so the baseline makes one network pass over ``max_embeddings`` images
    for their embeddings instead of scoring them through every test-time view again (on HAM10000
    with 8 views, 11 minutes beside the evaluation on two cores). Without it the baseline scores
    the ``max_embeddings`` images through the served ``predict_fn`` itself."""
    splits_dir, out_dir = Path(splits_dir), Path(out_dir)
    thresholds = thresholds or DriftThresholds()
    train = open_split_images(splits_dir, "train")
    if train is None:
        raise FileNotFoundError(f"no train split in {splits_dir}; the 'splits' input must be the preprocess job's "
                                "output folder (train_pixels.json, pixels/, classes.json, ...).")
    if len(train) == 0:
        raise ValueError(f"the train split in {splits_dir} holds no images; cannot baseline an empty training split.")
    feats = _split_features(train)[list(PIXEL_FEATURES)]
    geometry = _geometry(splits_dir, Path(manifest_dir) if manifest_dir else None)
    if geometry is not None:
        feats = pd.concat([feats, geometry], axis=1)[list(FEATURE_NAMES)]
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_parquet_atomic(feats, out_dir / FEATURES)
    case_mix = _case_mix(splits_dir)
    if case_mix is not None:
        _write_parquet_atomic(case_mix, out_dir / CASE_MIX)
    statistics = feature_statistics(feats, n_bins, case_mix)
    write_json_atomic(out_dir / STATISTICS, statistics, sort_keys=True, default=float)
    write_json_atomic(out_dir / CONSTRAINTS, feature_constraints(statistics, thresholds), sort_keys=True, default=float)

    # Embeddings + predicted classes on held-out images (see module docstring).
    held_out = [s for s in ("val", "test") if _split_size(splits_dir, s) > 0] or ["train"]
    split_images = [np.asarray(open_split_images(splits_dir, s)) for s in held_out]
    images = np.concatenate(split_images)
    label_paths = [splits_dir / f"{s}_labels.npy" for s in held_out]
    labels = np.concatenate([np.load(p) for p in label_paths]) if all(p.is_file() for p in label_paths) else None
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(images), min(max_embeddings, len(images)), replace=False))
    with tempfile.TemporaryDirectory(prefix="dermaops-baseline-") as work:
        module, model = load_packaged_model(model_tar, work)
        classes = list(model.classes)
        probs = evaluated_held_out(Path(evaluation_dir) if evaluation_dir else None, held_out,
                                   [len(x) for x in split_images], len(classes))
        if probs is not None:  # every held-out image, as the evaluation scored it
            emb = embed_views(module, model, np.asarray(images[pick]))
            scored, scored_by = np.arange(len(images)), "evaluation"
        else:
            emb, probs = embed_and_predict(module, model, np.asarray(images[pick]))
            scored, scored_by = pick, "baseline"
    with atomic_path(out_dir / EMBEDDINGS, suffix=".npy") as tmp_npy:
        np.save(tmp_npy, emb)
    predicted = probs.argmax(axis=1)
    if labels is not None:
        distribution = expected_prediction_distribution(predicted, labels[scored], _class_prior(splits_dir, len(classes)))
    else:  # splits without labels files: the held-out images' own proportions
        distribution = np.bincount(predicted, minlength=len(classes))[:len(classes)] / max(1, len(predicted))
    write_json_atomic(out_dir / PREDICTIONS, {"split": "+".join(held_out), "n": int(len(scored)), "classes": classes,
                                              "distribution": dict(zip(classes, distribution.tolist())),
                                              "weighting": "dataset class prior x held-out confusion rows"
                                              if labels is not None else "held-out proportions",
                                              "scored_by": scored_by},
                      sort_keys=True, default=float)
    distribution = dict(zip(classes, distribution.tolist()))
    held_out = "+".join(held_out)
    return {"item_count": int(len(feats)), "features": list(feats.columns), "case_mix": case_mix is not None,
            "embedding_split": held_out, "n_embeddings": int(len(emb)),
            "embedding_dim": int(emb.shape[1]) if emb.ndim == 2 else 0, "prediction_distribution": distribution}


def load_baseline(baseline_dir: str | Path) -> dict[str, Any]:
    """Everything drift detection needs from a baseline folder."""
    d = Path(baseline_dir)
    missing = [n for n in (STATISTICS, CONSTRAINTS, FEATURES, EMBEDDINGS, PREDICTIONS) if not (d / n).is_file()]
    if missing:
        raise FileNotFoundError(f"baseline at {d} lacks {missing}; re-materialize model_baseline.")
    statistics = json.loads((d / STATISTICS).read_text())
    constraints = json.loads((d / CONSTRAINTS).read_text())
    return {
        "statistics": statistics,
        "constraints": constraints,
        "thresholds": DriftThresholds.from_mapping(
            constraints.get("monitoring_config", {}).get("dermaops_drift_thresholds")),
        "features": pd.read_parquet(d / FEATURES),
        "edges": edges_from_statistics(statistics),
        "embeddings": np.load(d / EMBEDDINGS),
        "prediction_distribution": json.loads((d / PREDICTIONS).read_text())["distribution"],
        "case_mix": pd.read_parquet(d / CASE_MIX) if (d / CASE_MIX).is_file() else None,
    }


def main(argv: list[str] | None = None) -> None:
    hps = parse_hyperparameters(argv)
    model_dir, splits_dir = processing_input("model"), processing_input("splits")
    tars = sorted(model_dir.glob("*.tar.gz")) if model_dir.is_dir() else []
    if not tars:
        raise FileNotFoundError(f"no model.tar.gz in processing input 'model' ({model_dir})")
    manifest_dir, evaluation_dir = processing_input("manifest"), processing_input("evaluation")
    thresholds = DriftThresholds.from_mapping(hps)
    summary = compute_baseline(
        splits_dir, model_dir / "model.tar.gz" if (model_dir / "model.tar.gz").is_file() else tars[0],
        processing_output("baseline"), manifest_dir=manifest_dir if manifest_dir.is_dir() else None,
        max_embeddings=int(hps.get("max_embeddings", 2000)), n_bins=int(hps.get("n_bins", DEFAULT_BINS)),
        seed=int(hps.get("seed", 0)), thresholds=thresholds,
        evaluation_dir=evaluation_dir if evaluation_dir.is_dir() else None)
    emit_metric(baseline_item_count=summary["item_count"], baseline_embeddings=summary["n_embeddings"])
    print(json.dumps({k: v for k, v in summary.items() if k != "prediction_distribution"}), flush=True)


if __name__ == "__main__":
    run_entry_point(main)
