"""The descriptor model's fit: our binning against scikit-learn's weighted binning, on real splits.

    .venv/bin/python benchmarks/descriptor_fit.py --splits SPLITS_DIR [--rounds 300] [--balance-power 0.5]

Why: the training job fits a boosted-tree model over 301 lesion descriptors with class-balancing
sample weights (``ml_code.training.fusion.fit_descriptor_model``). Given sample weights,
scikit-learn 1.9 bins every feature with weighted percentiles, one call per bin edge, which was
most of the fit; ``ml_code.package.descriptors.BoostedTrees.fit`` now bins the descriptors
itself (unweighted quantiles, as scikit-learn does without weights) and hands the trees bin
numbers. This fits both on the same training descriptors, weights and rounds (the baseline:
``HistGradientBoostingClassifier`` on the raw descriptors with the weights, as the job did
before), on every core this process may use, and prints each one's seconds, the ratio, and
both models' validation balanced accuracy and macro AUC (the speed must not cost quality).
Needs a processing job's output (the README's real-data ``make demo`` leaves one under
``.dermaops/store/processed/splits/``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ml_code import contract, metrics  # noqa: E402
from ml_code.data.split_reader import load_splits  # noqa: E402
from ml_code.package import descriptors  # noqa: E402
from ml_code.training.data import class_weights  # noqa: E402


def scores(probs: np.ndarray, labels: np.ndarray, k: int) -> dict[str, float]:
    return {"balanced_accuracy": round(metrics.balanced_accuracy(labels, probs.argmax(1), k), 4),
            "macro_auc": round(metrics.roc_auc_ovr(labels, probs)[1], 4)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--splits", type=Path, required=True, help="the processing job's output folder")
    p.add_argument("--rounds", type=int, default=300, help="boosting rounds (the training default)")
    p.add_argument("--balance-power", type=float, default=0.5, help="the ham10000 recipe's class weighting")
    args = p.parse_args(argv)
    from sklearn.ensemble import HistGradientBoostingClassifier

    splits, classes = load_splits(args.splits)
    train, val, k = splits["train"], splits["val"], len(classes)
    t0 = time.perf_counter()
    x_train = descriptors.descriptor_matrix(train.images, train.clinical)
    x_val = descriptors.descriptor_matrix(val.images, val.clinical)
    print(f"descriptors of {len(x_train)} train / {len(x_val)} val images ({x_train.shape[1]} features) in "
          f"{time.perf_counter() - t0:.1f}s", flush=True)
    weights = class_weights(train.labels, k, args.balance_power)[train.labels]
    weights = weights / weights.mean()
    threads = contract.available_cpus()

    t0 = time.perf_counter()
    raw = np.array(x_train, dtype=np.float64)
    raw[:, np.isnan(raw).all(axis=0)] = 0.0
    baseline = HistGradientBoostingClassifier(max_iter=args.rounds, learning_rate=0.05, max_leaf_nodes=15,
                                              l2_regularization=1.0, early_stopping=False, random_state=0)
    baseline.fit(raw, train.labels, sample_weight=weights)
    baseline_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    ours = descriptors.BoostedTrees.fit(x_train, train.labels, k, sample_weight=weights, max_iter=args.rounds,
                                        seed=0, threads=threads)
    ours_s = time.perf_counter() - t0

    print(json.dumps({
        "images": {"train": len(x_train), "val": len(x_val)}, "features": int(x_train.shape[1]),
        "rounds": args.rounds, "threads": threads,
        "seconds": {"ours": round(ours_s, 2), "scikit_learn_weighted_binning": round(baseline_s, 2)},
        "ratio": round(baseline_s / ours_s, 2),
        "val": {"ours": scores(np.exp(ours.log_proba(x_val)), val.labels, k),
                "scikit_learn_weighted_binning": scores(baseline.predict_proba(x_val), val.labels, k)},
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
