"""The descriptor model (boosted trees over colour/texture descriptors and clinical context,
:mod:`ml_code.package.descriptors`) and the stacker that fuses it with the network, the trees
fitted before the network trains (their minutes count in the job's time budget), the stacker after
it, on the network's validation logits."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from ml_code import metrics
from ml_code.data.split_reader import Split
from ml_code.package import descriptors
from ml_code.package.model import fuse_log_probs
from ml_code.training.data import class_weights
from ml_code.training.loop import evaluate_logits
from ml_code.training.options import TrainOptions


def fit_fusion(cnn_log_probs: np.ndarray, descriptor_log_probs: np.ndarray, labels: np.ndarray,
               num_classes: int, balance: float) -> dict[str, Any]:
    """Fit the stacker of :func:`ml_code.package.model.fuse_log_probs` on validation.

    Minimises the cross-entropy of ``a * log p_cnn + w * log p_desc + b`` (two scales and a
    class bias: nine numbers for seven classes, so ~1,500 validation images pin them down),
    each image weighted by ``(class share) ** -balance``: 0 keeps the natural prior (best
    calibration), 1 fits a class-balanced posterior whose argmax favours balanced accuracy.
    """
    y = torch.as_tensor(labels, dtype=torch.long)
    lc = torch.as_tensor(cnn_log_probs, dtype=torch.float64)
    ld = torch.as_tensor(descriptor_log_probs, dtype=torch.float64)
    weight = torch.as_tensor(class_weights(np.asarray(labels), num_classes, balance), dtype=torch.float64)
    scales = torch.ones(2, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([scales, bias], lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        z = scales[0] * lc + scales[1] * ld + bias
        loss = F.cross_entropy(z, y, weight=weight) + 1e-3 * bias.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    a, w = (max(0.0, float(v)) for v in scales.detach())
    return {"cnn_scale": a, "descriptor_scale": w, "class_bias": [float(v) for v in bias.detach()],
            "balance": float(balance)}


@dataclass
class DescriptorFit:
    """The descriptor model and its validation scores, fitted before the network trains so that
    the training job's time budget sees its cost (:func:`fit_descriptor_model`)."""

    trees: descriptors.BoostedTrees
    val_log_probs: np.ndarray  # (N_val, C), with the validation images' clinical context
    val_image_only_log_probs: np.ndarray  # (N_val, C), without it: what a bare image gets
    n_features: int
    seconds: float


def fit_descriptor_model(opts: TrainOptions, train_split: Split, val_split: Split, k: int,
                         log: Callable[..., None]) -> DescriptorFit | None:
    """Train the descriptor model on train and score val with and without clinical context.

    Independent of the network, so the job fits it first (``ml_code.training.train``): its
    minutes then count against ``max_minutes`` before the epochs are planned. None (network
    alone) when some class is absent from train, since the trees need every class."""
    t0 = time.time()
    present = np.unique(train_split.labels)
    if len(present) < k:
        log(f"descriptor model skipped: classes {sorted(set(range(k)) - set(present.tolist()))} absent from train")
        return None
    x_train = descriptors.descriptor_matrix(train_split.images, train_split.clinical)
    n_clinical = len(descriptors.CLINICAL_FEATURES)
    masked = np.random.default_rng(opts.seed).random(len(x_train)) < opts.clinical_dropout
    x_train[masked, -n_clinical:] = np.nan  # so an image sent without clinical context still scores well
    weights = class_weights(train_split.labels, k, opts.balance_power)[train_split.labels]
    trees = descriptors.BoostedTrees.fit(x_train, train_split.labels, k, sample_weight=weights / weights.mean(),
                                         max_iter=opts.descriptor_trees, seed=opts.seed,
                                         threads=torch.get_num_threads())
    x_val = descriptors.descriptor_matrix(val_split.images, val_split.clinical)
    desc_val = trees.log_proba(x_val)
    x_val[:, -n_clinical:] = np.nan
    fit = DescriptorFit(trees, desc_val, trees.log_proba(x_val), len(x_train[0]), time.time() - t0)
    log(f"descriptor model: {fit.n_features} features, {opts.descriptor_trees} rounds, {fit.seconds:.0f}s")
    return fit


def fit_descriptor_fusion(opts: TrainOptions, fit: DescriptorFit, val_split: Split, val_logits: np.ndarray,
                          k: int, log: Callable[..., None]) -> tuple[descriptors.BoostedTrees, dict[str, Any], dict[str, Any]]:
    """Fit the stacker of the trained network and the descriptor model on val.

    ``val_logits`` is ``(N, C)`` or, with test-time views, ``(V, N, C)``: the stacker sees the
    view-averaged network probabilities the endpoint will compute. Returns ``(trees, fusion,
    summary)``.
    """
    t0 = time.time()
    cnn_val = np.log(np.clip(metrics.view_probs(val_logits), 1e-12, None))  # as served: views averaged, T = 1
    fusion = fit_fusion(cnn_val, fit.val_log_probs, val_split.labels, k, opts.fusion_balance)
    summary: dict[str, Any] = {"fusion": fusion}
    for name, probs in (("descriptors", np.exp(fit.val_log_probs)),
                        ("fused", fuse_log_probs(cnn_val, fit.val_log_probs, fusion)),
                        ("fused_image_only", fuse_log_probs(cnn_val, fit.val_image_only_log_probs, fusion))):
        m = evaluate_logits(np.log(np.clip(probs, 1e-12, None)), val_split.labels, k)
        summary.update({f"{name}_{key}": value for key, value in m.items()})
    summary["descriptor_seconds"] = fit.seconds + (time.time() - t0)
    log(f"fusion cnn x{fusion['cnn_scale']:.2f} + descriptors x{fusion['descriptor_scale']:.2f}; "
        f"val BA {summary['fused_val_balanced_accuracy']:.4f} AUC {summary['fused_val_macro_auc']:.4f} "
        f"(image only: BA {summary['fused_image_only_val_balanced_accuracy']:.4f})")
    return fit.trees, fusion, summary
