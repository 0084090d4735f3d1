"""Batch prediction over a folder of images: ``python -m ml_code.evaluation.batch_predict``.

Why: clinics send a backlog of lesion images at once, and reviewers want the answers in the
ISIC challenge submission format their tools read. As a SageMaker processing job (or the local
runner) the inputs are ``model`` (folder holding model.tar.gz), ``images`` (JPEG/PNG, any depth),
optional ``metadata`` (one CSV: an image id column ``image``/``image_id``/``isic_id`` and any of
``age``/``age_approx``, ``sex``, ``anatom_site``/``anatom_site_general``/``localization``) and
optional ``previous`` (an earlier run's output); the output ``predictions`` holds

- ``predictions.csv``: ``image,MEL,NV,BCC,AKIEC,BKL,DF,VASC`` (ISIC 2018 Task 3 order, as
  ``ml_code.evaluation.score`` writes it);
- ``records.jsonl``: one record per image: ``image, sha256, predicted_class, probabilities,
  ood_score, in_distribution, package_version, model_hash, data_version, input_version``;
- ``skipped.csv``: ``image, sha256, reason`` for files that could not be decoded (never fatal);
- ``summary.json``: counts (scored now, reused, skipped).

Resumable: records are keyed by the image's content hash (sha256). A rerun given the previous
output scores only images whose bytes it has not scored with the same package (``model_hash``);
undecodable bytes seen before keep their reason without another attempt.
Hyperparameters (lineage, copied into each record): ``package_version``, ``model_hash``, ``data_version``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ml_code import contract
from ml_code.atomic import write_text_atomic
from ml_code.evaluation.score import IMAGE_SUFFIXES, ISIC_CHALLENGE_COLUMNS
from ml_code.package import descriptors
from ml_code.package.loader import open_package

RECORDS, PREDICTIONS, SKIPPED, SUMMARY = "records.jsonl", "predictions.csv", "skipped.csv", "summary.json"
_ID_COLUMNS, _AGE, _SITE = ("image", "image_id", "isic_id"), ("age", "age_approx"), \
    ("anatom_site", "anatom_site_general", "localization")


def _first(columns: dict[str, str], names: tuple[str, ...]) -> str | None:
    return next((columns[n] for n in names if n in columns), None)


def read_context(path: Path | None) -> dict[str, tuple[Any, Any, Any]]:
    """image id -> (age, sex, site) from a metadata CSV (None: no CSV). Raises ValueError when
    the CSV has no image id column."""
    if path is None:
        return {}
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    columns = {c.strip().lower(): c for c in table.columns}
    id_col = _first(columns, _ID_COLUMNS)
    if id_col is None:
        raise ValueError(f"{path.name} has no image id column; name one of {', '.join(_ID_COLUMNS)}")
    age, sex, site = _first(columns, _AGE), columns.get("sex"), _first(columns, _SITE)
    return {str(r[id_col]).strip(): (r[age] if age else None, r[sex] if sex else None, r[site] if site else None)
            for _, r in table.iterrows()}


def read_previous(folder: Path | None, model_hash: str) -> tuple[dict[str, dict], dict[str, str]]:
    """(sha256 -> record scored by this package, sha256 -> skip reason) from an earlier output."""
    done: dict[str, dict] = {}
    failed: dict[str, str] = {}
    if folder is None or not folder.is_dir():
        return done, failed
    if (folder / RECORDS).is_file():
        for line in (folder / RECORDS).read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                if rec.get("model_hash") == model_hash:
                    done[rec["sha256"]] = rec
    if (folder / SKIPPED).is_file():
        for row in csv.DictReader(io.StringIO((folder / SKIPPED).read_text())):
            if row.get("sha256"):
                failed[row["sha256"]] = row["reason"]
    return done, failed


def _csv(header: list[str], rows: list[list[Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def batch_predict(model_input: Path, images_dir: Path, out_dir: Path, metadata: Path | None = None,
                  previous: Path | None = None, lineage: dict[str, Any] | None = None,
                  chunk: int = 128) -> dict[str, Any]:
    """Score every image under ``images_dir`` (see the module docstring); returns the summary."""
    if not images_dir.is_dir():
        raise FileNotFoundError(f"images folder {images_dir} does not exist; pass the folder holding the JPEG/PNG files")
    lineage = dict(lineage or {})
    files = sorted(p for p in images_dir.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    names = [p.relative_to(images_dir).with_suffix("").as_posix() for p in files]
    blobs = [p.read_bytes() for p in files]
    hashes = [hashlib.sha256(b).hexdigest() for b in blobs]
    lineage["input_version"] = hashlib.sha256("\n".join(sorted(hashes)).encode()).hexdigest()[:16]
    context = read_context(metadata)
    done, failed = read_previous(previous, str(lineage.get("model_hash", "")))
    records: dict[int, dict] = {}
    skipped: list[list[str]] = []
    todo: list[int] = []
    for i, sha in enumerate(hashes):
        if sha in done:
            records[i] = {**done[sha], "image": names[i]}
        elif sha in failed:
            skipped.append([names[i], sha, failed[sha]])
        else:
            todo.append(i)
    reused = len(records)
    with tempfile.TemporaryDirectory(prefix="dermaops-batch-") as tmp:
        package = open_package(model_input, Path(tmp), "batch")
        api, model = package.api, package.model
        classes = list(model.classes)
        for start in range(0, len(todo), chunk):
            pixels, kept = [], []
            for i in todo[start:start + chunk]:
                try:
                    pixels.append(api.load_image_square(blobs[i], model.image_size))
                    kept.append(i)
                except Exception as exc:  # noqa: BLE001 - any decode failure skips this image only
                    skipped.append([names[i], hashes[i], f"cannot decode: {type(exc).__name__}: {exc}"])
            if not kept:
                continue
            ctx = [context.get(names[i].rsplit("/", 1)[-1], (None, None, None)) for i in kept]
            clinical = descriptors.clinical_features(*map(list, zip(*ctx))) if context else None
            probs = api.predict_fn({"images": np.stack(pixels), "clinical": clinical}, model)
            scores, flags = getattr(probs, "ood_scores", None), getattr(probs, "in_distribution", None)
            for row, i in enumerate(kept):
                p = np.asarray(probs[row], dtype=np.float64)
                records[i] = {"image": names[i], "sha256": hashes[i], "predicted_class": classes[int(p.argmax())],
                              "probabilities": {c: float(v) for c, v in zip(classes, p)},
                              "ood_score": None if scores is None else float(scores[row]),
                              "in_distribution": None if flags is None else bool(flags[row]), **lineage}
    order = sorted(records)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / RECORDS, "".join(json.dumps(records[i], sort_keys=True) + "\n" for i in order))
    write_text_atomic(out_dir / PREDICTIONS, _csv(["image", *ISIC_CHALLENGE_COLUMNS], [
        [records[i]["image"], *(f"{records[i]['probabilities'][c.lower()]:.10f}" for c in ISIC_CHALLENGE_COLUMNS)]
        for i in order]))
    write_text_atomic(out_dir / SKIPPED, _csv(["image", "sha256", "reason"], sorted(skipped)))
    flagged = sum(1 for i in order if records[i].get("in_distribution") is False)
    summary = {"images": len(files), "scored": len(records) - reused, "reused": reused, "skipped": len(skipped),
               "ood_flagged": flagged, **lineage}
    write_text_atomic(out_dir / SUMMARY, json.dumps(summary, indent=2))
    contract.emit_metric(**{k: v for k, v in summary.items() if isinstance(v, int)})
    return summary


def main() -> None:
    hps = contract.parse_hyperparameters()
    channel = contract.processing_input("metadata")
    found = sorted(channel.glob("*.csv")) if channel.is_dir() else []
    previous = contract.processing_input("previous")
    lineage = {k: (hps[k] if k == "package_version" else str(hps[k]))
               for k in ("package_version", "model_hash", "data_version") if k in hps}
    summary = batch_predict(contract.processing_input("model"), contract.processing_input("images"),
                            contract.processing_output("predictions"), found[0] if found else None,
                            previous if previous.is_dir() else None, lineage)
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    contract.run_entry_point(main)
