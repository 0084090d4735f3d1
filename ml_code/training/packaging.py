"""Packaging the trained network: temperature on the served views, the SageMaker model
directory (weights, ``model_config.json``, descriptor model, ``code/``) and ``history.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ml_code import metrics
from ml_code.data.split_reader import Split
from ml_code.package import descriptors
from ml_code.package.loader import write_code
from ml_code.atomic import write_text_atomic
from ml_code.training.checkpoints import Progress, atomic_torch_save
from ml_code.training.data import Normalizer
from ml_code.training.loop import Network, predict_logits
from ml_code.training.options import TrainOptions


def calibrate(net: Network, best_state: dict[str, torch.Tensor], split: Split, norm: Normalizer,
              opts: TrainOptions) -> tuple[float, np.ndarray]:
    """The best weights' validation logits over the ``tta_views`` the package serves
    (``(N, C)``, or ``(V, N, C)`` for several views) and the temperature fitted on them
    (1.0 with ``temperature_scaling`` off)."""
    final = net.fresh()
    final.load_state_dict(best_state)
    temperature = 1.0
    val_logits = predict_logits(final, split, norm, opts, net.device, opts.tta_views)
    if opts.temperature_scaling:
        # Bounded to [0.2, 10]: on a perfectly separated val set NLL keeps falling as T -> 0,
        # and an extreme temperature would make every served probability 0 or 1.
        temperature = metrics.fit_temperature(val_logits, split.labels, lo=0.2, hi=10.0)
    return temperature, val_logits


def model_config(net: Network, opts: TrainOptions, progress: Progress, classes: list[str], image_size: int,
                 temperature: float, fusion: dict[str, Any] | None, options: dict[str, Any]) -> dict[str, Any]:
    """``model_config.json``: what the package needs to serve (mean/std on the 0-1 scale,
    temperature, views, fusion) plus the best epoch and the resolved training options."""
    best = progress.best
    config = {
        "arch": opts.arch, "classes": classes, "image_size": image_size, "mean": progress.mean, "std": progress.std,
        "temperature": temperature, "tta_views": opts.tta_views, "small_input": net.small_input,
        "num_classes": net.num_classes, "best_epoch": best["epoch"],
        "val_balanced_accuracy": best["val_balanced_accuracy"], "val_macro_auc": best.get("val_macro_auc"),
    }
    if fusion is not None:
        config["descriptors"] = {"file": "descriptors.npz", "version": descriptors.DESCRIPTOR_VERSION,
                                 "features": descriptors.descriptor_count(),
                                 "clinical_features": list(descriptors.CLINICAL_FEATURES)}
        config["fusion"] = fusion
    config["training_options"] = options
    return config


def write_model_dir(model_dir: Path, state: dict[str, torch.Tensor], config: dict[str, Any],
                    trees: descriptors.BoostedTrees | None = None) -> None:
    """The SageMaker model directory: weights, config, the descriptor model if any, and the
    self-contained handler code (``code/``, written by :func:`ml_code.package.loader.write_code`)."""
    model_dir.mkdir(parents=True, exist_ok=True)
    atomic_torch_save({k: v.detach().cpu() for k, v in state.items()}, model_dir / "model.pt")
    if trees is not None:
        trees.save(model_dir / "descriptors.npz")
    write_text_atomic(model_dir / "model_config.json", json.dumps(config, indent=2))
    write_code(model_dir)


def write_history(output_data_dir: Path, history: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    """``history.json``: every epoch's record (also those before a resume) and the run summary
    (best epoch, temperature, stop reason, resolved ``options``, descriptor model)."""
    write_text_atomic(output_data_dir / "history.json", json.dumps({"history": history, **summary}, indent=2, default=float))
