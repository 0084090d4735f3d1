"""Runs ``python -m ml_code.training.train`` as the SageMaker container does: SM_* environment in,
model dir, output dir and checkpoints out; shared by the training, resume, evaluation and benchmark tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from ml_code import contract

REPO = Path(__file__).resolve().parents[2]


TRAIN_COMMAND = [sys.executable, "-m", "ml_code.training.train"]


def train_env(tmp: Path, splits: Path | None, hps: dict, ckpt: Path | None = None) -> dict[str, str]:
    """The container's environment for a job writing under ``tmp`` (no SM_* variable of ours leaks in)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SM_")}
    env.update(
        SM_MODEL_DIR=str(tmp / "model"), SM_OUTPUT_DATA_DIR=str(tmp / "output" / "data"),
        SM_OUTPUT_DIR=str(tmp / "output"), SM_CHECKPOINT_DIR=str(ckpt or tmp / "checkpoints"),
        SM_HPS=json.dumps({k: str(v) for k, v in hps.items()}), PYTHONPATH=str(REPO),
    )
    if splits is not None:
        env["SM_CHANNEL_SPLITS"] = str(splits)
    return env


def run_train(tmp: Path, splits: Path | None, hps: dict, ckpt: Path | None = None, timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run(TRAIN_COMMAND, cwd=REPO, env=train_env(tmp, splits, hps, ckpt), capture_output=True, text=True,
                          timeout=timeout)


def metric_lines(stdout: str) -> list[dict]:
    """The per-epoch metric records (the descriptor model's one record has no epoch)."""
    return [m for m in map(contract.parse_metric_line, stdout.splitlines()) if m and "epoch" in m]
