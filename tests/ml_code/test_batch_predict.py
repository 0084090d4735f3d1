"""``python -m ml_code.evaluation.batch_predict`` as the processing job runs it: broken files
listed, reruns skip scored images, ISIC columns and per-image records with lineage."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.batch_inputs import jpeg, package_dir, write_images

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    """A folder holding a model.tar.gz with OOD statistics (random weights: the job is under test)."""
    return package_dir(tmp_path_factory.mktemp("batch-model"))


def run_job(tmp: Path, model: Path, images: Path, out: Path, previous: Path | None = None,
            metadata: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SM_")}
    env.update(SM_PROCESSING_INPUT_MODEL=str(model), SM_PROCESSING_INPUT_IMAGES=str(images),
               SM_PROCESSING_OUTPUT_PREDICTIONS=str(out), SM_OUTPUT_DIR=str(tmp / "job-output"),
               SM_PROCESSING_INPUT_PREVIOUS=str(previous or tmp / "none"),
               SM_PROCESSING_INPUT_METADATA=str(metadata or tmp / "none"), PYTHONPATH=str(REPO),
               SM_HPS=json.dumps({"package_version": 3, "model_hash": "abc123", "data_version": "d41d8"}))
    return subprocess.run([sys.executable, "-m", "ml_code.evaluation.batch_predict"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_broken_files_listed_rerun_skips_and_isic_columns(package, tmp_path):
    images = write_images(tmp_path / "images")
    (images / "lesion_3.jpg").write_bytes(jpeg(3))
    meta = tmp_path / "meta"
    meta.mkdir()
    (meta / "clinical.csv").write_text("image_id,age,sex,localization\nlesion_0,55,female,back\n")

    first = run_job(tmp_path, package, images, tmp_path / "out1", metadata=meta)
    assert first.returncode == 0, first.stderr[-3000:]
    out = tmp_path / "out1"
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["images"], summary["scored"], summary["reused"], summary["skipped"]) == (7, 5, 0, 2)
    with open(out / "predictions.csv") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["image", "MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
    assert sorted(r[0] for r in rows[1:]) == ["clinic-b/lesion_9", "lesion_0", "lesion_1", "lesion_2", "lesion_3"]
    assert all(abs(sum(map(float, r[1:])) - 1) < 1e-6 for r in rows[1:])
    with open(out / "skipped.csv") as fh:
        skipped = {r["image"]: r["reason"] for r in csv.DictReader(fh)}
    assert set(skipped) == {"truncated", "not_an_image"} and all("cannot decode" in r for r in skipped.values())
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    rec = records[0]
    assert set(rec) >= {"image", "sha256", "predicted_class", "probabilities", "ood_score", "in_distribution",
                        "package_version", "model_hash", "data_version", "input_version"}
    assert rec["package_version"] == 3 and rec["model_hash"] == "abc123" and rec["data_version"] == "d41d8"
    assert isinstance(rec["ood_score"], float) and isinstance(rec["in_distribution"], bool)
    assert rec["predicted_class"] == max(rec["probabilities"], key=rec["probabilities"].get)

    # Rerun with one new image: only it is scored; the rest are the earlier records, unchanged.
    (images / "lesion_new.jpg").write_bytes(jpeg(42))
    second = run_job(tmp_path, package, images, tmp_path / "out2", previous=out, metadata=meta)
    assert second.returncode == 0, second.stderr[-3000:]
    summary2 = json.loads((tmp_path / "out2" / "summary.json").read_text())
    assert (summary2["scored"], summary2["reused"], summary2["skipped"]) == (1, 5, 2)
    again = {json.loads(x)["image"]: json.loads(x) for x in (tmp_path / "out2" / "records.jsonl").read_text().splitlines()}
    for old in records:
        assert again[old["image"]]["probabilities"] == old["probabilities"]
    assert "lesion_new" in again


def test_previous_output_of_another_package_is_rescored(package, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.jpg").write_bytes(jpeg(1))
    assert run_job(tmp_path, package, images, tmp_path / "out1").returncode == 0
    text = (tmp_path / "out1" / "records.jsonl").read_text().replace('"abc123"', '"other-model"')
    (tmp_path / "out1" / "records.jsonl").write_text(text)
    assert run_job(tmp_path, package, images, tmp_path / "out2", previous=tmp_path / "out1").returncode == 0
    assert json.loads((tmp_path / "out2" / "summary.json").read_text())["scored"] == 1
