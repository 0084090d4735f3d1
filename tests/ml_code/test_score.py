"""``ml_code.evaluation.score``: an external labelled set scored into ISIC challenge format."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from ml_code import CLASSES
from ml_code.evaluation.score import ISIC_CHALLENGE_COLUMNS, main, score
from tests.ml_code.test_descriptors import fused_model_dir  # noqa: F401 - the fixture


@pytest.fixture()
def external_set(tmp_path) -> tuple[Path, list[str], list[str]]:
    """30 JPEGs, every class present, plus one corrupt file that must be skipped, not fatal."""
    rng = np.random.default_rng(5)
    images = tmp_path / "images"
    images.mkdir()
    ids, dx = [], []
    for i in range(30):
        image_id = f"ISIC_{9000000 + i:07d}"
        arr = rng.integers(0, 255, size=(45, 60, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG")
        (images / f"{image_id}.jpg").write_bytes(buf.getvalue())
        ids.append(image_id)
        dx.append(CLASSES[i % len(CLASSES)])
    (images / "ISIC_9999999.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    return images, ids + ["ISIC_9999999"], dx + ["nv"]


def write_ground_truth(path: Path, ids: list[str], dx: list[str]) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", *ISIC_CHALLENGE_COLUMNS])
        for image_id, d in zip(ids, dx):
            writer.writerow([image_id, *(1.0 if c.lower() == d else 0.0 for c in ISIC_CHALLENGE_COLUMNS)])
    return path


def test_ground_truth_file_gives_isic_predictions_and_matching_metrics(fused_model_dir, external_set, tmp_path):  # noqa: F811
    images, ids, dx = external_set
    truth = write_ground_truth(tmp_path / "truth.csv", ids, dx)
    result = score(fused_model_dir, images, tmp_path / "out", truth, views=2, n_bootstrap=50)
    assert result["scored"] == 30 and result["skipped"] == 1
    skipped = list(csv.DictReader((tmp_path / "out" / "skipped.csv").open()))
    assert skipped[0]["image_id"] == "ISIC_9999999" and "cannot decode" in skipped[0]["reason"]

    rows = list(csv.DictReader((tmp_path / "out" / "predictions.csv").open()))
    assert list(rows[0]) == ["image", *ISIC_CHALLENGE_COLUMNS]  # what isic-challenge-scoring reads
    assert [r["image"] for r in rows] == ids[:30]
    probs = np.array([[float(r[c]) for c in ISIC_CHALLENGE_COLUMNS] for r in rows])
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-4)
    # Metrics recomputed independently from the written file (ISIC: argmax, mean per-class recall).
    y = np.array([ISIC_CHALLENGE_COLUMNS.index(d.upper()) for d in dx[:30]])
    assert result["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, probs.argmax(1)), abs=1e-6)
    assert result["macro_auc"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr", average="macro"), abs=1e-4)
    assert result["clinical_context_used"] is False
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["scored"] == 30


def test_metadata_labels_bring_clinical_context(fused_model_dir, external_set, tmp_path):  # noqa: F811
    images, ids, dx = external_set
    meta = tmp_path / "metadata.csv"
    with meta.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"])
        for i, (image_id, d) in enumerate(zip(ids, dx)):
            writer.writerow([f"HAM_{i:07d}", image_id, d, "histo", 40 + i, "female", "back"])
    result = score(fused_model_dir, images, tmp_path / "out", meta, views=1, n_bootstrap=50)
    assert result["clinical_context_used"] is True and result["scored"] == 30


def test_unlabelled_folder_is_scored_and_bad_labels_are_refused(fused_model_dir, external_set, tmp_path):  # noqa: F811
    images, ids, dx = external_set
    main(["--model", str(fused_model_dir), "--images", str(images), "--out", str(tmp_path / "out")])
    assert len(list(csv.DictReader((tmp_path / "out" / "predictions.csv").open()))) == 30
    assert not (tmp_path / "out" / "metrics.json").exists()
    bad = tmp_path / "bad.csv"
    bad.write_text("image,MEL,NV,BCC,AKIEC,BKL,DF,VASC\nISIC_9000000,1,1,0,0,0,0,0\n")
    with pytest.raises(ValueError, match="exactly one class"):
        score(fused_model_dir, images, tmp_path / "out2", bad)


def test_dermaops_score_command(fused_model_dir, external_set, tmp_path, capsys):  # noqa: F811
    from dermaops_resources.cli import main as dermaops

    images, ids, dx = external_set
    truth = write_ground_truth(tmp_path / "truth.csv", ids, dx)
    assert dermaops(["score", "--images", str(images), "--labels", str(truth), "--model", str(fused_model_dir),
                     "--out", str(tmp_path / "cli-out")]) == 0
    printed = capsys.readouterr().out
    assert '"scored": 30' in printed and "predictions (ISIC challenge format)" in printed
    assert (tmp_path / "cli-out" / "predictions.csv").is_file()
