"""``python -m ml_code.evaluation.evaluate`` on a tiny trained model, through the packaged handlers."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ml_code import contract
from tests.support.synth_splits import make_splits
from tests.support.train_job import REPO, run_train

MQ_KEYS = {"accuracy", "weighted_recall", "weighted_precision", "weighted_f0_5", "weighted_f1", "weighted_f2", "confusion_matrix"}
CLASSES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    splits = make_splits(root / "splits", seed=5)
    proc = run_train(root / "train", splits, {"arch": "dermanet", "epochs": 3, "batch_size": 32, "num_threads": 1,
                                                  "tta_views": 2})
    assert proc.returncode == 0, proc.stderr[-3000:]
    model_in = root / "model-artifact"
    model_in.mkdir()
    with tarfile.open(model_in / "model.tar.gz", "w:gz") as tar:  # as SageMaker packs SM_MODEL_DIR
        for item in sorted((root / "train" / "model").iterdir()):
            tar.add(item, arcname=item.name)
    return root, splits, model_in


def run_evaluate(root: Path, model_in: Path, splits: Path, out: Path, hps: dict | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SM_")}
    env.update(
        SM_PROCESSING_INPUT_MODEL=str(model_in), SM_PROCESSING_INPUT_SPLITS=str(splits),
        SM_PROCESSING_OUTPUT_EVALUATION=str(out), SM_OUTPUT_DIR=str(root / "eval-output"),
        SM_HPS=json.dumps(hps or {"n_bootstrap": 300}), PYTHONPATH=str(REPO),
    )
    return subprocess.run([sys.executable, "-m", "ml_code.evaluation.evaluate"], cwd=REPO, env=env, capture_output=True, text=True, timeout=240)


def test_evaluation_outputs(trained):
    root, splits, model_in = trained
    out = root / "evaluation"
    proc = run_evaluate(root, model_in, splits, out)
    assert proc.returncode == 0, proc.stderr[-3000:]

    evaluation = json.loads((out / "evaluation.json").read_text())
    mq = evaluation["multiclass_classification_metrics"]
    assert MQ_KEYS <= set(mq)
    for name, entry in mq.items():
        if name == "confusion_matrix":
            continue
        assert set(entry) == {"value", "standard_deviation"}
        assert 0.0 <= entry["value"] <= 1.0
        assert isinstance(entry["standard_deviation"], float) or entry["standard_deviation"] == "NaN"
    cm = mq["confusion_matrix"]
    assert list(cm) == CLASSES and all(list(row) == CLASSES for row in cm.values())
    labels = np.load(splits / "test_labels.npy")
    assert sum(sum(row.values()) for row in cm.values()) == len(labels)
    assert [sum(cm[c].values()) for c in CLASSES] == np.bincount(labels, minlength=7).tolist()
    accuracy = sum(cm[c][c] for c in CLASSES) / len(labels)
    assert mq["accuracy"]["value"] == pytest.approx(accuracy)

    report = json.loads((out / "report.json").read_text())
    head = report["headline"]
    assert head["balanced_accuracy"] > 0.5  # learnt (chance 1/7)
    assert head["balanced_accuracy_ci_low"] <= head["balanced_accuracy"] <= head["balanced_accuracy_ci_high"]
    assert head["macro_auc_ci_low"] <= head["macro_auc"] <= head["macro_auc_ci_high"]
    assert evaluation["dermaops"]["headline"] == head
    op = report["melanoma_operating_point"]
    assert op["val_sensitivity"] >= 0.9 and 0 <= op["test_sensitivity"] <= 1
    assert report["model"]["arch"] == "dermanet"
    assert report["tta_views"] == 2  # the package's own views: the figures describe what the endpoint serves
    # The served model fuses the network with the descriptor model; the report also gives the
    # image-only path (no clinical context) and the network alone, so the fusion's gain is visible.
    assert report["model"]["descriptor_model"] is True and set(report["model"]["fusion"]) >= {"cnn_scale", "class_bias"}
    for part in ("image_only", "network_only"):
        assert 0.0 <= report[part]["balanced_accuracy"] <= 1.0 and 0.5 < report[part]["macro_auc"] <= 1.0
    assert report["image_only"]["clinical_context_used"] is True

    metric = [m for m in map(contract.parse_metric_line, proc.stdout.splitlines()) if m]
    assert len(metric) == 1 and metric[0]["balanced_accuracy"] == pytest.approx(head["balanced_accuracy"])
    for key in ("accuracy", "macro_auc", "macro_f1", "weighted_f1", "melanoma_sensitivity", "ece"):
        assert key in metric[0]

    with open(out / "per_class.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["class"] for r in rows] == CLASSES
    for name in ("confusion_matrix.png", "reliability.png", "gradcam.png"):
        with Image.open(out / name) as img:
            assert img.format == "PNG" and img.width > 200
    assert report["gradcam_images"] == 14


def test_missing_model_artifact_fails_clearly(trained, tmp_path):
    root, splits, _ = trained
    empty = tmp_path / "no-model"
    empty.mkdir()
    proc = run_evaluate(tmp_path, empty, splits, tmp_path / "out")
    assert proc.returncode != 0
    assert "No model.tar.gz" in (tmp_path / "eval-output" / "failure").read_text()


def test_unknown_option_fails_the_job_naming_it(trained, tmp_path):
    """A misspelt option (here the old asset name with a typo) stops the job before any work,
    instead of a warning and an evaluation with the default."""
    _, splits, model_in = trained
    proc = run_evaluate(tmp_path, model_in, splits, tmp_path / "out", {"n_bootstraps": 50})
    assert proc.returncode != 0
    reason = (tmp_path / "eval-output" / "failure").read_text()
    assert "unknown evaluation option(s) ['n_bootstraps']" in reason and "'n_bootstrap'" in reason


def test_ablations_from_the_served_pass_equal_their_own_passes(trained, tmp_path):
    """The image-only and network-only figures come from the test pass that scores the served
    output (one network pass, not three); they must be what scoring each on its own gives."""
    from ml_code.data.split_reader import load_splits
    from ml_code.evaluation.evaluate import predict_split, predict_split_with_ablations
    from ml_code.package.loader import open_package

    _, splits, model_in = trained
    package = open_package(model_in / "model.tar.gz", tmp_path, "ablations")
    handlers, model = package.api, package.model
    assert model.descriptor_model is not None  # the fused path, where the three differ
    test = load_splits(splits)[0]["test"]
    served, ablations = predict_split_with_ablations(handlers, model, test.images, None, test.clinical,
                                                     ablations=True)
    np.testing.assert_array_equal(served, predict_split(handlers, model, test.images, None, test.clinical))
    np.testing.assert_array_equal(ablations["image_only"], predict_split(handlers, model, test.images, None, None))
    np.testing.assert_array_equal(ablations["network_only"],
                                  predict_split(handlers, model, test.images, None, network_only=True))
    assert not np.allclose(ablations["network_only"], served)


def test_the_monitoring_baseline_reuses_the_evaluations_held_out_predictions(trained, tmp_path):
    """The baseline's expected prediction distribution from the evaluation's stored image-only
    predictions is the one it computes by scoring the same held-out images itself, and its
    embeddings are unchanged; an evaluation of other splits is not used."""
    from ml_code.monitoring.baseline import PREDICTIONS, compute_baseline

    root, splits, model_in = trained
    evaluation = tmp_path / "evaluation"
    proc = run_evaluate(root, model_in, splits, evaluation)
    assert proc.returncode == 0, proc.stderr[-3000:]
    n_held_out = sum(len(np.load(splits / f"{s}_labels.npy")) for s in ("val", "test"))
    tar = model_in / "model.tar.gz"
    own = compute_baseline(splits, tar, tmp_path / "own", max_embeddings=n_held_out)
    reused = compute_baseline(splits, tar, tmp_path / "reused", max_embeddings=n_held_out, evaluation_dir=evaluation)
    own_json, reused_json = (json.loads((tmp_path / d / PREDICTIONS).read_text()) for d in ("own", "reused"))
    assert (own_json["scored_by"], reused_json["scored_by"]) == ("baseline", "evaluation")
    assert own_json["n"] == reused_json["n"] == n_held_out
    assert reused["prediction_distribution"] == pytest.approx(own["prediction_distribution"], abs=1e-12)
    np.testing.assert_allclose(np.load(tmp_path / "reused" / "embeddings.npy"),
                               np.load(tmp_path / "own" / "embeddings.npy"), rtol=1e-5, atol=1e-6)

    other = make_splits(tmp_path / "other-splits", n_val=50, n_test=40, seed=6)  # not the evaluated images
    compute_baseline(other, tar, tmp_path / "other", max_embeddings=20, evaluation_dir=evaluation)
    assert json.loads((tmp_path / "other" / PREDICTIONS).read_text())["scored_by"] == "baseline"
