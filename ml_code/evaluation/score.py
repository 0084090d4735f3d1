"""Score a model package on an external dermoscopy set: ``python -m ml_code.evaluation.score``.

Why: the lesion-grouped test split comes from the same archive as the training data; a
reviewer also wants the model on an independent, official test set (e.g. the ISIC 2018
Task 3 test images), and wants the metric definitions checked with the challenge's own
scoring package. This job writes the predictions in the ISIC challenge submission format
(``image,MEL,NV,BCC,AKIEC,BKL,DF,VASC``, probabilities), which ``isic-challenge-scoring``
reads as is, and, when labels are given, prints the same metrics the evaluation reports.

    python -m ml_code.evaluation.score --model model.tar.gz --images DIR [--labels CSV] [--out DIR] [--tta-views N]

``--labels`` is either an ISIC challenge ground-truth CSV (``image`` + one-hot class
columns) or a metadata table in one of the two ingestion layouts (HAM10000, ISIC Archive
export: diagnosis mapping and clinical context as in ingestion). Without labels every
image in ``--images`` is scored. Images that cannot be decoded are listed in
``skipped.csv`` with the reason, not fatal. As a SageMaker processing job the inputs are
the ``model``, ``images`` and optional ``labels`` channels and the output ``scores``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ml_code import contract, metrics
from ml_code.package import descriptors
from ml_code.data import ingest
from ml_code.evaluation.evaluate import predict_split, served_views
from ml_code.package.loader import open_package
from ml_code.training.train import atomic_write_text

#: ISIC 2018 Task 3 column order and names.
ISIC_CHALLENGE_COLUMNS: tuple[str, ...] = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def read_labels(path: Path, images_dir: Path) -> tuple[list[str], list[str | None], np.ndarray | None]:
    """``(image_ids, dx or None per image, clinical rows or None)`` from a labels CSV."""
    table = ingest.read_metadata(path)
    columns = {c.strip().upper(): c for c in table.columns}
    if "IMAGE" in columns and set(ISIC_CHALLENGE_COLUMNS) <= set(columns):
        onehot = table[[columns[c] for c in ISIC_CHALLENGE_COLUMNS]].astype(float).to_numpy()
        bad = np.flatnonzero(onehot.sum(1) != 1)
        if len(bad):
            raise ValueError(f"{path.name}: rows {bad[:5].tolist()} do not have exactly one class set to 1.0; "
                             "an ISIC ground-truth file is one-hot")
        dx = [ISIC_CHALLENGE_COLUMNS[i].lower() for i in onehot.argmax(1)]
        return table[columns["IMAGE"]].astype(str).tolist(), list(dx), None
    layout = ingest.detect_layout(table)
    good, quarantined = ingest.normalise_metadata(table, layout, salt="")  # patient refs are not used here
    if len(quarantined):
        print(f"[score] {len(quarantined)} label rows rejected (e.g. {quarantined['reason'].iloc[0]})", flush=True)
    clinical = descriptors.clinical_features(good["age"].tolist(), good["sex"].tolist(), good["localization"].tolist())
    return good["image_id"].tolist(), good["dx"].tolist(), clinical


def _decode(path: Path | None, image_id: str, size: int, handlers: Any) -> tuple[np.ndarray | None, str | None]:
    if path is None:
        return None, f"no image file for {image_id!r} under the images folder (looked for .jpg/.jpeg/.png)"
    try:
        return handlers.load_image_square(path.read_bytes(), size), None
    except Exception as exc:  # noqa: BLE001 - any decode failure skips this image only
        return None, f"cannot decode {path.name}: {type(exc).__name__}: {exc}"


def score(model_input: Path, images_dir: Path, out_dir: Path, labels: Path | None = None, views: int | None = None,
          n_bootstrap: int = 1000) -> dict[str, Any]:
    """Write ``predictions.csv`` (ISIC submission format), ``skipped.csv`` and, with labels,
    ``metrics.json``; returns the metrics (or the counts when there are no labels)."""
    if not images_dir.is_dir():
        raise FileNotFoundError(f"images folder {images_dir} does not exist; pass the folder holding the JPEG/PNG files")
    if labels is not None:
        image_ids, dx, clinical = read_labels(labels, images_dir)
        paths = [ingest.find_image_file(images_dir, i) for i in image_ids]
    else:
        files = sorted(p for p in images_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        image_ids, dx, clinical, paths = [p.stem for p in files], [None] * len(files), None, list(files)
    with tempfile.TemporaryDirectory(prefix="dermaops-score-") as tmp:
        package = open_package(model_input, Path(tmp), "score")
        handlers, model = package.api, package.model
        classes = list(model.classes)
        unknown = sorted({d for d in dx if d is not None and d not in classes})
        if unknown:
            raise ValueError(f"labels use classes {unknown} that the model does not know ({classes})")
        kept, pixels, skipped = [], [], []
        for i, (image_id, path) in enumerate(zip(image_ids, paths)):
            arr, reason = _decode(path, image_id, model.image_size, handlers)
            if arr is None:
                skipped.append({"image_id": image_id, "reason": reason})
            else:
                kept.append(i)
                pixels.append(arr)
        if not kept:
            raise ValueError(f"none of the {len(image_ids)} images could be scored; see the reasons in skipped.csv "
                             f"(first: {skipped[0]['reason'] if skipped else 'no images found'})")
        images = np.stack(pixels)
        rows_clinical = None if clinical is None else clinical[kept]
        views = served_views(model) if views is None else views
        probs = predict_split(handlers, model, images, views, rows_clinical)
    out_dir.mkdir(parents=True, exist_ok=True)
    order = [classes.index(c.lower()) for c in ISIC_CHALLENGE_COLUMNS]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["image", *ISIC_CHALLENGE_COLUMNS])
    for i, p in zip(kept, probs):
        writer.writerow([image_ids[i], *(f"{p[j]:.10f}" for j in order)])
    atomic_write_text(out_dir / "predictions.csv", buf.getvalue())
    skipped_buf = io.StringIO()
    csv.DictWriter(skipped_buf, ["image_id", "reason"], lineterminator="\n").writeheader()
    csv.DictWriter(skipped_buf, ["image_id", "reason"], lineterminator="\n").writerows(skipped)
    atomic_write_text(out_dir / "skipped.csv", skipped_buf.getvalue())
    result: dict[str, Any] = {"scored": len(kept), "skipped": len(skipped), "tta_views": views,
                              "clinical_context_used": clinical is not None}
    if all(dx[i] is not None for i in kept):
        y = np.array([classes.index(dx[i]) for i in kept])
        k = len(classes)
        pred = probs.argmax(1)
        label_ci = metrics.bootstrap_label_metrics(y, pred, k, n_bootstrap)
        auc_ci = metrics.bootstrap_macro_auc(y, probs, n_bootstrap)
        aucs, macro_auc = metrics.roc_auc_ovr(y, probs)
        sens, spec = metrics.sensitivity_specificity(y, pred, k)
        result.update({
            "balanced_accuracy": label_ci["balanced_accuracy"].estimate,
            "balanced_accuracy_ci": [label_ci["balanced_accuracy"].low, label_ci["balanced_accuracy"].high],
            "macro_auc": macro_auc, "macro_auc_ci": [auc_ci.low, auc_ci.high],
            "accuracy": label_ci["accuracy"].estimate,
            "per_class": {c: {"support": int((y == j).sum()), "auc": _none_nan(aucs[j]),
                              "sensitivity": _none_nan(sens[j]), "specificity": _none_nan(spec[j])}
                          for j, c in enumerate(classes)},
        })
        atomic_write_text(out_dir / "metrics.json", json.dumps(result, indent=2, default=float))
        contract.emit_metric(**{k_: v for k_, v in result.items() if isinstance(v, (int, float))})
    return result


def _none_nan(v: float) -> float | None:
    return None if not np.isfinite(v) else float(v)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Score a DermaOps model package on an external image set.")
    parser.add_argument("--model", type=Path, help="model.tar.gz, its folder, or an extracted model dir")
    parser.add_argument("--images", type=Path, help="folder of JPEG/PNG images")
    parser.add_argument("--labels", type=Path, help="ISIC ground-truth CSV or HAM10000/ISIC metadata CSV")
    parser.add_argument("--out", type=Path, help="output folder (default: the SageMaker 'scores' output)")
    parser.add_argument("--tta-views", type=int, default=None,
                        help="test-time views 1..8 (default: the package's own, as the endpoint serves it)")
    parser.add_argument("--n-bootstrap", type=int, default=1000)
    args = parser.parse_args(argv)
    model = args.model or contract.processing_input("model")
    images = args.images or contract.processing_input("images")
    labels = args.labels
    if labels is None and not args.images:  # processing job: an optional 'labels' channel with one CSV
        channel = Path(contract.processing_input("labels"))
        found = sorted(channel.glob("*.csv")) if channel.is_dir() else []
        labels = found[0] if found else None
    out = args.out or contract.processing_output("scores")
    result = score(Path(model), Path(images), Path(out), Path(labels) if labels else None, args.tta_views, args.n_bootstrap)
    print(json.dumps({k: v for k, v in result.items() if k != "per_class"}, default=float), flush=True)


if __name__ == "__main__":
    contract.run_entry_point(main)
