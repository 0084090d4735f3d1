"""Our metric definitions against the ISIC challenge's official scoring package, on the same files.

    .venv/bin/python benchmarks/isic_scoring_agreement.py --truth GT.csv --predictions predictions.csv \
        [--isic-bin /path/to/isic-challenge-scoring]

``predictions.csv`` is what ``dermaops score`` / ``python -m ml_code.evaluation.score`` writes (ISIC
format); ``GT.csv`` an ISIC ground-truth file (``image`` + one-hot class columns).
``isic-challenge-scoring`` needs pandas<3, so it lives in its own venv:
``python3 -m venv /tmp/isic && /tmp/isic/bin/pip install isic-challenge-scoring 'pandas<3'``.
Prints both balanced accuracies and macro AUCs and their ratio (1.000 = same definition).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ml_code import metrics  # noqa: E402
from ml_code.evaluation.score import ISIC_CHALLENGE_COLUMNS  # noqa: E402


def ours(truth: Path, predictions: Path) -> dict[str, float]:
    gt = pd.read_csv(truth).set_index("image")[list(ISIC_CHALLENGE_COLUMNS)]
    pred = pd.read_csv(predictions).set_index("image").loc[gt.index, list(ISIC_CHALLENGE_COLUMNS)]
    y = gt.to_numpy().argmax(1)
    p = pred.to_numpy(dtype=np.float64)
    return {"balanced_accuracy": metrics.balanced_accuracy(y, p.argmax(1), len(ISIC_CHALLENGE_COLUMNS)),
            "macro_auc": metrics.roc_auc_ovr(y, p)[1]}


def official(binary: str, truth: Path, predictions: Path) -> dict[str, float]:
    proc = subprocess.run([binary, "-o", "json", "classification", "-m", "balanced_accuracy", str(truth), str(predictions)],
                          capture_output=True, text=True, check=True)
    report = json.loads(proc.stdout)
    return {"balanced_accuracy": float(report["overall"]), "macro_auc": float(report["macro_average"]["auc"])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--truth", type=Path, required=True)
    parser.add_argument("--predictions", type=Path, required=True)
    parser.add_argument("--isic-bin", default=shutil.which("isic-challenge-scoring"))
    args = parser.parse_args()
    mine = ours(args.truth, args.predictions)
    if not args.isic_bin:
        print("isic-challenge-scoring not found; pass --isic-bin (see the module docstring)", file=sys.stderr)
        return 2
    theirs = official(args.isic_bin, args.truth, args.predictions)
    for key in ("balanced_accuracy", "macro_auc"):
        print(f"{key:>18}: dermaops {mine[key]:.10f}  isic-challenge-scoring {theirs[key]:.10f}  "
              f"ratio {mine[key] / theirs[key]:.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
