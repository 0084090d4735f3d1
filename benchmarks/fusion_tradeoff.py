"""What each half of a fused model package does, and what the stacker's class weighting trades.

    .venv/bin/python benchmarks/fusion_tradeoff.py --model MODEL.tar.gz --splits SPLITS_DIR [--views N]

``MODEL.tar.gz`` is a trained package (``benchmarks/ham10000_quality.py`` prints its path);
``SPLITS_DIR`` the preprocess output it was trained on (``<home>/recipe/store/processed/
splits/<hash>/splits``). Scores the test split with the package's own code: the network
alone, the descriptor model alone (with the clinical context from the split index) and the
served fusion; then refits the fusion on validation with ``fusion_balance`` 0 .. 1
(``ml_code.training.train.fit_fusion``, what training does) and prints each setting's test macro AUC
and balanced accuracy with its ratio to the served package's. Reads only; changes nothing.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ml_code import metrics  # noqa: E402
from ml_code.evaluation.evaluate import served_views  # noqa: E402
from ml_code.package.loader import open_package  # noqa: E402
from ml_code.training.train import fit_fusion, load_splits  # noqa: E402

BALANCES = (0.0, 0.25, 0.5, 0.75, 1.0)


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
    for balance in BALANCES:
        fusion = fit_fusion(log_net["val"], log_desc["val"], y_val, k, balance)
        auc, ba = scores(y_test, handlers.fuse_log_probs(log_net["test"], log_desc["test"], fusion))
        print(f"{f'fusion_balance {balance:.2f}':>26}: macro_auc {auc:.4f} (x{auc / served[0]:.3f})  "
              f"balanced_accuracy {ba:.4f} (x{ba / served[1]:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
