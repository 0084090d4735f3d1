"""Spot interruption and budgets, as the container lives them: a job resumes from the newest
checkpoint after a restart or a SIGKILL mid-run, and a time budget stops it early with a package
saved. (Split from test_train.py so a parallel run spreads the training jobs over the workers.)"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.support.synth_splits import make_splits
from tests.support.train_job import REPO, TRAIN_COMMAND, metric_lines, run_train, train_env

pytestmark = pytest.mark.slow  # every test here trains

FAST_DESCRIPTORS = {"descriptor_trees": 20}
"""These tests are about checkpoints and budgets, not the descriptor model (test_train.py covers
it at its default 300 rounds): 20 rounds keep its fit out of the way."""


@pytest.fixture(scope="module")
def splits(tmp_path_factory) -> Path:
    return make_splits(tmp_path_factory.mktemp("splits") / "splits")


def test_resumes_from_newest_checkpoint(splits, tmp_path):
    ckpt = tmp_path / "spot-checkpoints"
    hps = {"arch": "dermanet", "batch_size": 32, "num_threads": 1, "seed": 3, **FAST_DESCRIPTORS}
    first = run_train(tmp_path / "a", splits, {**hps, "epochs": 2}, ckpt)
    assert first.returncode == 0, first.stderr[-3000:]
    assert [r["epoch"] for r in metric_lines(first.stdout)] == [1, 2]

    second = run_train(tmp_path / "b", splits, {**hps, "epochs": 4}, ckpt)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming from checkpoint epoch 2 (continuing at epoch 3)" in second.stdout
    assert [r["epoch"] for r in metric_lines(second.stdout)] == [3, 4]  # not restarted from 1
    history = json.loads((tmp_path / "b" / "output" / "data" / "history.json").read_text())
    assert [h["epoch"] for h in history["history"]] == [1, 2, 3, 4]
    assert history["history"][:2] == json.loads((tmp_path / "a" / "output" / "data" / "history.json").read_text())["history"]


def test_time_budget_stops_early_and_still_saves(splits, tmp_path):
    # A 0.6 s budget cannot fit 5 epochs: training stops after the first and still packages the model.
    proc = run_train(tmp_path, splits, {"arch": "dermanet", "epochs": 5, "batch_size": 32, "num_threads": 1,
                                        "max_minutes": 0.01, **FAST_DESCRIPTORS})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [r["epoch"] for r in metric_lines(proc.stdout)] == [1]
    history = json.loads((tmp_path / "output" / "data" / "history.json").read_text())
    assert history["stop_reason"] == "time budget" and history["epochs_run"] == 1
    assert (tmp_path / "model" / "model.pt").is_file()


def test_killed_mid_run_resumes_from_its_last_checkpoint(splits, tmp_path):
    """Spot interruption for real: the process is SIGKILLed after its second checkpoint; the
    restarted job continues from the newest checkpoint, not from epoch 1."""
    import signal
    import time

    ckpt = tmp_path / "spot-checkpoints"
    hps = {"arch": "dermanet", "batch_size": 32, "num_threads": 1, "seed": 5, "epochs": 5, **FAST_DESCRIPTORS}
    proc = subprocess.Popen(TRAIN_COMMAND, cwd=REPO, env=train_env(tmp_path / "killed", splits, hps, ckpt),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while time.time() < deadline and not (ckpt / "checkpoint-epoch-0002.pt").exists() and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    saved = sorted(int(p.stem.rsplit("-", 1)[1]) for p in ckpt.glob("checkpoint-epoch-*.pt"))
    assert saved and 2 <= saved[-1] < 5, saved  # killed mid-run, after epoch 2

    second = run_train(tmp_path / "restart", splits, hps, ckpt)
    assert second.returncode == 0, second.stderr[-3000:]
    resumed_at = saved[-1] + 1
    assert f"continuing at epoch {resumed_at}" in second.stdout
    assert [r["epoch"] for r in metric_lines(second.stdout)] == list(range(resumed_at, 6))
    history = json.loads((tmp_path / "restart" / "output" / "data" / "history.json").read_text())
    assert [h["epoch"] for h in history["history"]] == [1, 2, 3, 4, 5]
