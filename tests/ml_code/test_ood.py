"""Out-of-distribution flag: a package trained on demo lesions flags non-dermoscopy images and
passes most held-out demo lesions (Mahalanobis on the penultimate embedding, ml_code/package/ood.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from ml_code.package import inference
from ml_code.tools import non_dermoscopy
from ml_code.training.ood import repackage
from tests.support.demo_splits import demo_images, make_demo_splits

REPO = Path(__file__).resolve().parents[2]
SIZE = 32


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(model dir, splits) of a small DermaNet trained by the training job on demo lesions (~10 s)."""
    root = tmp_path_factory.mktemp("ood")
    splits = make_demo_splits(root / "splits", SIZE, lesions_per_class=14, seed=0)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SM_")}
    env.update(SM_MODEL_DIR=str(root / "model"), SM_OUTPUT_DATA_DIR=str(root / "out" / "data"),
               SM_OUTPUT_DIR=str(root / "out"), SM_CHECKPOINT_DIR=str(root / "ckpt"), SM_CHANNEL_SPLITS=str(splits),
               PYTHONPATH=str(REPO), SM_HPS=json.dumps({"epochs": "6", "batch_size": "32", "num_threads": "1",
                                                        "lr": "0.003", "arch": "dermanet", "descriptor_model": "false"}))
    proc = subprocess.run([sys.executable, "-m", "ml_code.training.train"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "model", splits


@pytest.fixture(scope="module")
def served(trained):
    return inference.model_fn(str(trained[0]))


def answer(model, body: bytes) -> dict:
    return json.loads(inference.output_fn(inference.predict_fn(inference.input_fn(body, "image/jpeg"), model)))


def test_package_records_its_ood_statistics(trained):
    config = json.loads((trained[0] / "model_config.json").read_text())
    ood = config["ood"]
    assert (trained[0] / ood["file"]).is_file()
    assert ood["dim"] == 256 and "penultimate" in ood["layer"] and "Lee et al. 2018" in ood["reference"]
    assert ood["quantile"] == 0.95 and ood["val_pass_rate"] >= 0.9  # the 95th percentile of val scores
    assert ood["threshold"] > 0


@pytest.mark.parametrize("kind", non_dermoscopy.KINDS)
def test_non_dermoscopy_images_are_flagged(served, kind):
    for seed in range(4):
        body = answer(served, non_dermoscopy.jpeg_bytes(kind, seed))
        assert body["in_distribution"] is False, (kind, seed, body["ood_score"])
        assert body["ood_score"] > served.ood.threshold
        assert body["predicted_class"] in body["probabilities"]  # still answered, just flagged


def test_held_out_demo_lesions_mostly_pass(served, tmp_path):
    """Unseen demo lesions (another seed): 82% pass when measured (threshold from 28 val images)."""
    views, _ = demo_images(tmp_path / "held-out", SIZE, lesions_per_class=6, seed=7)
    probs = inference.predict_fn(views, served)
    assert probs.in_distribution.mean() >= 0.7, np.sort(probs.ood_scores)


def test_score_is_the_same_under_test_time_views(served, trained):
    """The score reads the identity view from the served forward pass: views do not change it."""
    images = np.load(trained[1] / "test_images.npy")[:8]
    one = inference.predict_fn({"images": images, "views": 1}, served)
    eight = inference.predict_fn({"images": images, "views": 8}, served)
    np.testing.assert_allclose(one.ood_scores, eight.ood_scores, rtol=1e-4)


def test_existing_package_gains_ood_statistics_without_retraining(trained, served, tmp_path):
    old_dir = tmp_path / "old"
    shutil.copytree(trained[0], old_dir)
    config = json.loads((old_dir / "model_config.json").read_text())
    del config["ood"]
    (old_dir / "model_config.json").write_text(json.dumps(config))
    (old_dir / "ood.npz").unlink()
    old = inference.model_fn(str(old_dir))
    body = answer(old, non_dermoscopy.jpeg_bytes("solid", 0))
    assert body["ood_score"] is None and body["in_distribution"] is None  # no statistics: "not assessed"
    tar = tmp_path / "old.tar.gz"
    with tarfile.open(tar, "w:gz") as out:
        out.add(old_dir, arcname=".")
    record = repackage(tar, trained[1], tmp_path / "new" / "model.tar.gz")
    with tarfile.open(tmp_path / "new" / "model.tar.gz") as src:
        src.extractall(tmp_path / "new-dir", filter="data")
    new = inference.model_fn(str(tmp_path / "new-dir"))
    assert record["threshold"] == pytest.approx(served.ood.threshold, rel=1e-5)
    body = answer(new, non_dermoscopy.jpeg_bytes("solid", 0))
    assert body["in_distribution"] is False
    assert body["ood_score"] == pytest.approx(answer(served, non_dermoscopy.jpeg_bytes("solid", 0))["ood_score"],
                                              rel=1e-4)
