"""What each half of a fused model package does, and what the stacker's class weighting trades.

    .venv/bin/python benchmarks/fusion_tradeoff.py --model MODEL.tar.gz --splits SPLITS_DIR [--views N]

``MODEL.tar.gz`` is a trained package (``benchmarks/ham10000_quality.py`` prints its path);
``SPLITS_DIR`` the preprocess output it was trained on (``<home>/recipe/store/processed/
splits/<hash>/splits``). Scores the test split with the package's own code: the network
alone, the descriptor model alone (with the clinical context from the split index) and the
served fusion; then refits the fusion on validation with ``fusion_balance`` 0 .. 1
(``ml_code.training.train.fit_fusion``, what training does) and prints each setting's test macro AUC
and balanced accuracy with its ratio to the served package's, beside what validation alone would
show (out-of-fold: the stacker refitted on four fifths of validation and scored on the rest, 5
stratified folds x 3 shuffles, the scores averaged), the figures a choice made without the test
split could use. Last, a prior correction: the fused log-probabilities minus ``gamma * log(val
class share)``, ``gamma`` chosen on validation for balanced accuracy, renormalised as it would be
served (the decision rule of balanced-accuracy-optimal classification, e.g. Menon et al. 2013,
"On the statistical consistency of algorithms for binary classification under class imbalance").
Reads only; changes nothing.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ml_code import metrics  # noqa: E402
from ml_code.evaluation.evaluate import served_views  # noqa: E402
from ml_code.package.loader import open_package  # noqa: E402
from ml_code.data.split_reader import load_splits  # noqa: E402
from ml_code.package.model import fuse_log_probs  # noqa: E402
from ml_code.training.fusion import fit_fusion  # noqa: E402

BALANCES = (0.0, 0.25, 0.5, 0.75, 1.0)
GAMMAS = np.round(np.arange(0.0, 1.51, 0.05), 2)


def out_of_fold(log_net: np.ndarray, log_desc: np.ndarray, labels: np.ndarray, balance: float,
                folds: int = 5, repeats: int = 3) -> np.ndarray:
    """``(N, C)`` validation probabilities, each row from stackers fitted without it (averaged over
    ``repeats`` shuffles of stratified ``folds``-fold splits; fewer folds when a class is smaller)."""
    from sklearn.model_selection import StratifiedKFold

    k = log_net.shape[1]
    folds = max(2, min(folds, int(np.bincount(labels).max())))
    probs = np.zeros(log_net.shape)
    with warnings.catch_warnings():  # classes rarer than the folds (validation's df, vasc) are expected
        warnings.filterwarnings("ignore", message="The least populated class")
        for repeat in range(repeats):
            for fit_rows, held in StratifiedKFold(folds, shuffle=True, random_state=repeat).split(labels, labels):
                fusion = fit_fusion(log_net[fit_rows], log_desc[fit_rows], labels[fit_rows], k, balance)
                probs[held] += fuse_log_probs(log_net[held], log_desc[held], fusion) / repeats
    return probs


def prior_corrected(probs: np.ndarray, prior: np.ndarray, gamma: float) -> np.ndarray:
    """``probs / prior ** gamma``, renormalised per row: ``(N, C)``."""
    p = probs / np.clip(prior, 1e-12, None) ** gamma
    return p / p.sum(axis=1, keepdims=True)


def scores(labels: np.ndarray, probs: np.ndarray) -> tuple[float, float]:
    """(macro one-vs-rest AUC, balanced accuracy), the evaluation's definitions."""
    return metrics.roc_auc_ovr(labels, probs)[1], metrics.balanced_accuracy(labels, probs.argmax(1), probs.shape[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--splits", type=Path, required=True)
    parser.add_argument("--views", type=int, default=None,
                        help="network test-time views (default: the package's own, as served and evaluated)")
    args = parser.parse_args()
    splits, _ = load_splits(args.splits)
    with tempfile.TemporaryDirectory(prefix="dermaops-fusion-") as tmp:
        package = open_package(args.model, Path(tmp), "fusion")
        handlers, model = package.api, package.model
        if model.descriptor_model is None:
            print(f"{args.model} has no descriptor model: nothing to compare", file=sys.stderr)
            return 2
        descriptors = handlers.descriptors
        views = served_views(model) if args.views is None else args.views
        log_net, log_desc = {}, {}
        for name in ("val", "test"):
            split = splits[name]
            x = handlers.preprocess_array(np.asarray(split.images), model)
            log_net[name] = handlers.network_log_probs(x, model, views, 1.0)
            if name == "test":  # the evaluation's network-only ablation: temperature-scaled, as served alone
                network_alone = np.exp(handlers.network_log_probs(x, model, views, model.temperature))
            log_desc[name] = model.descriptor_model.log_proba(
                descriptors.descriptor_matrix(np.asarray(split.images), split.clinical))
    y_val, y_test = splits["val"].labels, splits["test"].labels
    k = log_net["test"].shape[1]
    served = scores(y_test, handlers.fuse_log_probs(log_net["test"], log_desc["test"], model.fusion))
    print(f"test split: {len(y_test)} images; {views} test-time views; served fusion_balance {model.fusion.get('balance')}")
    for label, probs in (("network alone", network_alone), ("descriptor model alone", np.exp(log_desc["test"]))):
        auc, ba = scores(y_test, probs)
        print(f"{label:>26}: macro_auc {auc:.4f}  balanced_accuracy {ba:.4f}")
    print(f"{'served fusion':>26}: macro_auc {served[0]:.4f}  balanced_accuracy {served[1]:.4f}")
    fitted: dict[float, tuple[dict, np.ndarray]] = {}

    def refit(balance: float) -> tuple[dict, np.ndarray]:
        """(stacker fitted on validation at ``balance``, its test probabilities), fitted once."""
        if balance not in fitted:
            fusion = fit_fusion(log_net["val"], log_desc["val"], y_val, k, balance)
            fitted[balance] = fusion, handlers.fuse_log_probs(log_net["test"], log_desc["test"], fusion)
        return fitted[balance]

    for balance in BALANCES:
        auc, ba = scores(y_test, refit(balance)[1])
        oof_auc, oof_ba = scores(y_val, out_of_fold(log_net["val"], log_desc["val"], y_val, balance))
        print(f"{f'fusion_balance {balance:.2f}':>26}: macro_auc {auc:.4f} (x{auc / served[0]:.3f})  "
              f"balanced_accuracy {ba:.4f} (x{ba / served[1]:.3f})  | validation out-of-fold: macro_auc "
              f"{oof_auc:.4f}  balanced_accuracy {oof_ba:.4f}")
    prior = np.bincount(y_val, minlength=k) / len(y_val)
    for balance in (0.0, float(model.fusion.get("balance", 0.5))):
        fusion, p_test = refit(balance)
        p_val = fuse_log_probs(log_net["val"], log_desc["val"], fusion)
        gamma = max(GAMMAS, key=lambda g: (round(scores(y_val, prior_corrected(p_val, prior, g))[1], 4), -g))
        auc, ba = scores(y_test, prior_corrected(p_test, prior, gamma))
        print(f"fusion_balance {balance:.2f}, prior correction gamma {gamma:.2f} (chosen on validation): "
              f"test macro_auc {auc:.4f}  balanced_accuracy {ba:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
