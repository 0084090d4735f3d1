"""Evaluation processing job: ``python -m ml_code.evaluation.evaluate``.

Inputs: ``model`` (a folder holding ``model.tar.gz``, or an already-extracted model dir)
and ``splits`` (the preprocess output). Output: ``evaluation``.

The model is loaded through the packaged ``code/inference.py`` handlers (``model_fn``,
``preprocess_array``, ``predict_fn``) from the extracted archive, so the numbers describe
exactly what the endpoint will serve - temperature included. Everything is measured on
the test split; validation is used only to choose the melanoma operating point.

Options (SM_HPS or ``--key value``): :class:`ml_code.evaluation.options.EvaluationOptions`
(``tta``, ``tta_views``, ``n_bootstrap``, ``seed``, ``target_sensitivity``, ``gradcam_per_class``,
``ece_bins``, ``melanoma_class``); an unknown option fails the job before any work.
"""

from __future__ import annotations

import csv
import io
import json
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pandas as pd

from ml_code import contract, metrics
from ml_code.atomic import atomic_path, write_bytes_atomic, write_text_atomic
from ml_code.evaluation.compare import HELD_OUT_IMAGE_ONLY, PROBABILITIES
from ml_code.evaluation.subgroups import subgroup_metrics
from ml_code.package.loader import open_package
from ml_code.package.views import check_views
from ml_code.data.split_reader import load_splits
from ml_code.evaluation.options import parse_evaluation_options



def served_views(model: Any) -> int:
    """The test-time views a loaded package serves by default (packages from before
    ``tta_views`` was recorded served one)."""
    return int(getattr(model, "tta_views", 1))


def predict_split(handlers: ModuleType, model: Any, images: np.ndarray, views: int | None = None,
                  clinical: np.ndarray | None = None, chunk: int = 512, network_only: bool = False) -> np.ndarray:
    """Served probabilities for uint8 NHWC ``images`` (network averaged over ``views`` D4
    transforms - None: the package's own, as served - fused with the descriptor model given
    ``clinical`` rows when the package has one)."""
    return predict_split_with_ablations(handlers, model, images, views, clinical, chunk, network_only)[0]


def predict_split_with_ablations(handlers: ModuleType, model: Any, images: np.ndarray, views: int | None = None,
                                 clinical: np.ndarray | None = None, chunk: int = 512, network_only: bool = False,
                                 ablations: bool = False) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """:func:`predict_split`, and with ``ablations`` the package's ``image_only`` and ``network_only``
    probabilities of the same images from the same network pass (``predict_fn``'s ``"ablations"``;
    packages from before it give none, and the caller scores them separately)."""
    views = check_views(served_views(model) if views is None else views, "tta_views")
    out, parts = [], {}
    for start in range(0, len(images), chunk):
        batch = {"images": np.asarray(images[start : start + chunk]), "views": views, "network_only": network_only,
                 "clinical": None if clinical is None else clinical[start : start + chunk], "ablations": ablations}
        probs = handlers.predict_fn(batch, model)
        out.append(np.asarray(probs, dtype=np.float64))
        for name, value in (getattr(probs, "ablations", None) or {}).items():
            parts.setdefault(name, []).append(np.asarray(value, dtype=np.float64))
    empty = np.zeros((0, len(model.classes)))
    whole = {name: np.concatenate(values) for name, values in parts.items() if len(values) == len(out)}
    return (np.concatenate(out) if out else empty), whole


def _mq(value: float, std: float | None = None) -> dict[str, Any]:
    """A ModelQuality metric entry; SageMaker writes the string "NaN" for an unknown deviation."""
    return {"value": float(value), "standard_deviation": float(std) if std is not None and np.isfinite(std) else "NaN"}


def compute_report(
    classes: list[str], y_val: np.ndarray, p_val: np.ndarray, y_test: np.ndarray, p_test: np.ndarray, opts: dict[str, Any]
) -> dict[str, Any]:
    k = len(classes)
    pred = p_test.argmax(1)
    prf = metrics.precision_recall_f1(y_test, pred, k)
    sens, spec = metrics.sensitivity_specificity(y_test, pred, k)
    aucs, macro_auc = metrics.roc_auc_ovr(y_test, p_test)
    cm = metrics.confusion_matrix(y_test, pred, k)
    rel = metrics.reliability(y_test, p_test, int(opts["ece_bins"]))
    n_boot, seed = int(opts["n_bootstrap"]), int(opts["seed"])
    label_ci = metrics.bootstrap_label_metrics(y_test, pred, k, n_boot, seed=seed)
    auc_ci = metrics.bootstrap_macro_auc(y_test, p_test, n_boot, seed=seed)
    mel = str(opts["melanoma_class"])
    mel_idx = classes.index(mel) if mel in classes else None
    op = None
    if mel_idx is not None and (y_val == mel_idx).any():
        op = metrics.operating_point(mel_idx, y_val, p_val, y_test, p_test, float(opts["target_sensitivity"]))
    majority = int(np.bincount(y_test, minlength=k).argmax())
    const = metrics.precision_recall_f1(y_test, np.full_like(y_test, majority), k)

    def nan_none(v: float) -> float | None:
        return None if v is None or not np.isfinite(v) else float(v)

    per_class = [
        {
            "class": c, "support": int(prf.support[i]), "precision": float(prf.precision[i]), "recall": float(prf.recall[i]),
            "f1": float(prf.f1[i]), "sensitivity": nan_none(sens[i]), "specificity": nan_none(spec[i]), "auc": nan_none(aucs[i]),
        }
        for i, c in enumerate(classes)
    ]
    headline = {
        "accuracy": label_ci["accuracy"].estimate,
        "balanced_accuracy": label_ci["balanced_accuracy"].estimate,
        "macro_auc": macro_auc,
        "macro_f1": prf.macro_f1,
        "weighted_f1": prf.weighted_f1,
        "melanoma_sensitivity": nan_none(sens[mel_idx]) if mel_idx is not None else None,
        "ece": rel.ece,
        "balanced_accuracy_ci_low": label_ci["balanced_accuracy"].low,
        "balanced_accuracy_ci_high": label_ci["balanced_accuracy"].high,
        "macro_auc_ci_low": auc_ci.low,
        "macro_auc_ci_high": auc_ci.high,
    }
    confusion = {a: {p: int(cm[i, j]) for j, p in enumerate(classes)} for i, a in enumerate(classes)}
    mq = {
        "accuracy": _mq(label_ci["accuracy"].estimate, label_ci["accuracy"].std),
        "weighted_recall": _mq(prf.weighted_recall, label_ci["weighted_recall"].std),
        "weighted_precision": _mq(prf.weighted_precision, label_ci["weighted_precision"].std),
        "weighted_f0_5": _mq(label_ci["weighted_f0_5"].estimate, label_ci["weighted_f0_5"].std),
        "weighted_f1": _mq(prf.weighted_f1, label_ci["weighted_f1"].std),
        "weighted_f2": _mq(label_ci["weighted_f2"].estimate, label_ci["weighted_f2"].std),
        "accuracy_best_constant_classifier": _mq(metrics.accuracy(y_test, np.full_like(y_test, majority))),
        "weighted_recall_best_constant_classifier": _mq(const.weighted_recall),
        "weighted_precision_best_constant_classifier": _mq(const.weighted_precision),
        "weighted_f1_best_constant_classifier": _mq(const.weighted_f1),
        "confusion_matrix": confusion,
    }
    return {
        "classes": classes,
        "n_test": int(len(y_test)),
        "n_val": int(len(y_val)),
        "tta_views": int(opts["tta_views"]),
        "headline": headline,
        "macro_precision": prf.macro_precision,
        "macro_recall": prf.macro_recall,
        "weighted_precision": prf.weighted_precision,
        "weighted_recall": prf.weighted_recall,
        "log_loss": metrics.log_loss(y_test, p_test),
        "confidence_intervals": {
            "method": f"percentile bootstrap over test items, {n_boot} resamples, seed {seed}, 95%",
            **{name: vars(iv) for name, iv in label_ci.items()},
            "macro_auc": vars(auc_ci),
        },
        "per_class": per_class,
        "confusion_matrix": confusion,
        "reliability": {
            "bins": int(opts["ece_bins"]), "edges": rel.edges.tolist(), "count": rel.count.tolist(),
            "confidence": [nan_none(v) for v in rel.confidence], "accuracy": [nan_none(v) for v in rel.accuracy],
            "ece": rel.ece,
        },
        "melanoma_operating_point": vars(op) if op else None,
        "model_quality": {"multiclass_classification_metrics": mq},
    }


def plot_confusion(cm: np.ndarray, classes: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6, 5))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=45)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", color="white" if norm[i, j] > 0.5 else "black", fontsize=8)
    fig.colorbar(im, ax=ax, label="row-normalised recall")
    ax.set_title("Test confusion matrix")
    _save_fig(fig, path)


def plot_reliability(rel: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    edges = np.array(rel["edges"])
    centers = (edges[:-1] + edges[1:]) / 2
    acc = np.array([np.nan if v is None else v for v in rel["accuracy"]], dtype=float)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.bar(centers, np.nan_to_num(acc), width=edges[1] - edges[0], edgecolor="black", alpha=0.7, label="accuracy")
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    ax.set_xlabel("confidence (max probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Reliability (ECE {rel['ece']:.3f})")
    ax.legend(loc="upper left")
    _save_fig(fig, path)


def plot_gradcam(handlers: ModuleType, model: Any, images: np.ndarray, labels: np.ndarray, classes: list[str],
                 per_class: int, path: Path, served: np.ndarray) -> int:
    """A grid of test images with their Grad-CAM heat map for the true class, titled with the
    served prediction (``served``: the split's probabilities); returns how many."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    picks = [int(i) for c in range(len(classes)) for i in np.flatnonzero(labels == c)[:per_class]]
    if not picks:
        return 0
    x = handlers.preprocess_array(np.asarray(images[picks]), model)
    cams = handlers.gradcam(model, x, labels[picks])
    probs = np.asarray(served)[picks]
    cols = min(len(picks), 2 * per_class)
    rows = int(np.ceil(len(picks) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.8 * cols, 2.0 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for n, (i, cam) in enumerate(zip(picks, cams)):
        ax = axes.ravel()[n]
        ax.imshow(np.asarray(images[i]))
        ax.imshow(cam, cmap="jet", alpha=0.4)
        ax.set_title(f"{classes[labels[i]]} -> {classes[int(probs[n].argmax())]}", fontsize=7)
    fig.suptitle("Grad-CAM, true class (test)", fontsize=9)
    _save_fig(fig, path)
    return len(picks)


def _save_fig(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    write_bytes_atomic(path, buf.getvalue())


def write_per_class(rows: list[dict[str, Any]], path: Path) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buf.getvalue())


def evaluate(model_input: Path, splits_dir: Path, out_dir: Path, opts: dict[str, Any]) -> dict[str, Any]:
    opts = parse_evaluation_options(opts).model_dump()  # ValueError naming an unknown or invalid option
    splits, classes = load_splits(splits_dir)
    if "test" not in splits or len(splits["test"].labels) == 0:
        raise ValueError(f"the splits input {splits_dir} has no test split (test_pixels.json, test_labels.npy)")
    with tempfile.TemporaryDirectory(prefix="dermaops-eval-") as tmp:
        package = open_package(model_input, Path(tmp), "eval")
        handlers, model = package.api, package.model
        if list(model.classes) != list(classes):
            raise ValueError(f"model classes {model.classes} differ from the splits' classes {classes}")
        test, val = splits["test"], splits["val"]
        if model.image_size != test.images.shape[1]:
            raise ValueError(f"model expects {model.image_size}px images but the splits hold {test.images.shape[1]}px")
        # What the endpoint serves: the package's views, unless an ablation asks otherwise.
        if not opts["tta"]:
            views = 1
        elif opts["tta_views"] is None:
            views = served_views(model)
        else:
            views = int(opts["tta_views"])
        opts["tta_views"] = views
        p_test, ablations = predict_split_with_ablations(handlers, model, test.images, views, test.clinical,
                                                         ablations=True)
        p_val, val_ablations = predict_split_with_ablations(handlers, model, val.images, views, val.clinical,
                                                            ablations=True)
        # What a bare image POSTed to the endpoint gets on every held-out image, from the passes above:
        # the monitoring baseline's expected prediction distribution, so it need not score them again.
        held_out_image_only = ({"val": val_ablations["image_only"], "test": ablations["image_only"]}
                               if views == served_views(model) and "image_only" in val_ablations
                               and "image_only" in ablations else None)
        report = compute_report(classes, val.labels, p_val, test.labels, p_test, opts)
        index_path = Path(splits_dir) / "test_index.csv"
        if index_path.is_file():  # per age band, sex and body region, with counts ("too few" under 30)
            report["subgroups"] = subgroup_metrics(pd.read_csv(index_path), test.labels, p_test, classes)
        report["model"] = {k: model.config.get(k) for k in ("arch", "image_size", "temperature", "best_epoch", "small_input")}
        report["model"]["descriptor_model"] = model.descriptor_model is not None
        if model.descriptor_model is not None:
            # Requests without clinical context (a bare image POSTed to the endpoint) get the
            # image-only path; report it too, so nobody mistakes one figure for the other.
            report["model"]["fusion"] = model.fusion
            # The network alone is the ablation that shows what the descriptor model adds.
            # From the test pass above where the package offers them (one network pass, not three).
            ablated = {"image_only": ablations.get("image_only"), "network_only": ablations.get("network_only")}
            if ablated["image_only"] is None:
                ablated["image_only"] = predict_split(handlers, model, test.images, views, None)
            if ablated["network_only"] is None:
                ablated["network_only"] = predict_split(handlers, model, test.images, views, network_only=True)
            for name, probs in ablated.items():
                report[name] = {
                    "balanced_accuracy": metrics.balanced_accuracy(test.labels, probs.argmax(1), len(classes)),
                    "macro_auc": metrics.roc_auc_ovr(test.labels, probs)[1],
                }
            report["image_only"]["clinical_context_used"] = test.clinical is not None
        out_dir.mkdir(parents=True, exist_ok=True)
        plot_confusion(metrics.confusion_matrix(test.labels, p_test.argmax(1), len(classes)), classes, out_dir / "confusion_matrix.png")
        plot_reliability(report["reliability"], out_dir / "reliability.png")
        report["gradcam_images"] = plot_gradcam(handlers, model, test.images, test.labels, classes,
                                                int(opts["gradcam_per_class"]), out_dir / "gradcam.png", p_test)
    write_per_class(report["per_class"], out_dir / "per_class.csv")
    # The served probabilities per test image: what the registration gate compares a champion's with.
    with atomic_path(out_dir / PROBABILITIES, suffix=".npy") as tmp_npy:
        np.save(tmp_npy, np.asarray(p_test, dtype=np.float32))
    if held_out_image_only is not None:
        with atomic_path(out_dir / HELD_OUT_IMAGE_ONLY, suffix=".npz") as tmp_npz:
            np.savez(tmp_npz, **{split: np.asarray(p, dtype=np.float32) for split, p in held_out_image_only.items()})
    evaluation = {**report["model_quality"], "dermaops": {k: v for k, v in report.items() if k != "model_quality"}}
    write_text_atomic(out_dir / "evaluation.json", json.dumps(evaluation, indent=2, default=float))
    write_text_atomic(out_dir / "report.json", json.dumps(report, indent=2, default=float))
    contract.emit_metric(**report["headline"])
    return report


def main() -> None:
    hps = contract.parse_hyperparameters()
    evaluate(contract.processing_input("model"), contract.processing_input("splits"), contract.processing_output("evaluation"), hps)


if __name__ == "__main__":
    contract.run_entry_point(main)
