"""Linear probe on HAM10000: do the ImageNet EfficientNet-Lite features beat random ones?

    .venv/bin/python benchmarks/pretrained_probe.py [--data ../shared/data/ham10000]
        [--n-images 600] [--size 128] [--variant lite0] [--seed 0] [--C 0.1]

Why: the pretrained weights are only worth shipping if their features carry lesion
information that a randomly initialised network of the same architecture does not. A linear
probe (frozen features -> logistic regression) isolates the features from any fine-tuning
recipe and runs in seconds on 2 CPU cores.

Protocol:
- sample: class-balanced, one image per lesion (HAM10000 has several images of some lesions,
  so one per lesion makes the split lesion-grouped by construction), ``n_images // 7``
  lesions per class or all of a class's lesions when it has fewer (df: 73); each class's
  lesions split in halves, train / test (stratified);
- images: the pipeline's own decode, ``ml_code.package.image_policy.decode_square`` (centre crop of
  the shorter side, Lanczos resize to ``size`` px), normalised with the TF scaling the Lite
  weights were trained with, ``(pixel - 127) / 128``;
- features: global-average-pooled last conv stage (1280-d) of the pretrained net (BatchNorm
  in eval mode with its ImageNet statistics, as served) vs the same architecture randomly
  initialised (PyTorch default init, seed ``seed``), whose BatchNorm statistics are
  re-estimated on the probe's training images first, so the random baseline is not handicapped
  by uncalibrated activations;
- probe: StandardScaler + multinomial LogisticRegression (``C``, class-balanced), the same
  for both; test balanced accuracy (ISIC 2018 metric) and macro one-vs-rest ROC AUC.

Measured (2026-11-30, 2 shared cores, seed 0, C 0.1, 288 train / 295 test images):
128 px: pretrained balanced accuracy 0.448, macro AUC 0.794; random 0.214 / 0.584 (40 s);
 96 px: pretrained 0.456 / 0.793; random 0.225 / 0.568 (23 s).

Prints one row per feature set and their ratio, then a JSON line. Exits 0 with a message when
the data is absent (the data is CC BY-NC-SA and never in the repository).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from ml_code.package.image_policy import decode_square as load_image_square  # noqa: E402
from ml_code.package.model import preprocess_array  # noqa: E402
from ml_code.package.efficientnet_lite import (  # noqa: E402
    TF_MEAN, TF_STD, build_efficientnet_lite, load_pretrained,
)

DEFAULT_DATA = REPO.parent / "shared" / "data" / "ham10000"
CLASSES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")


def data_available(data: Path) -> bool:
    return (data / "HAM10000_metadata.csv").is_file() and (data / "images").is_dir()


def sample_split(data: Path, n_images: int, seed: int) -> tuple[list[str], np.ndarray, list[str], np.ndarray]:
    """Image ids and labels of the train and test halves (see module docstring)."""
    rng = np.random.default_rng(seed)
    lesions: dict[str, dict[str, list[str]]] = {c: {} for c in CLASSES}
    with open(data / "HAM10000_metadata.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            lesions[row["dx"]].setdefault(row["lesion_id"], []).append(row["image_id"])
    quota = max(2, n_images // len(CLASSES))
    train_ids: list[str] = []
    test_ids: list[str] = []
    train_y: list[int] = []
    test_y: list[int] = []
    for k, cls in enumerate(CLASSES):
        ids = sorted(lesions[cls])
        chosen = [ids[i] for i in rng.permutation(len(ids))[: min(quota, len(ids))]]
        images = [sorted(lesions[cls][lid])[rng.integers(len(lesions[cls][lid]))] for lid in chosen]
        half = len(images) // 2
        train_ids += images[:half]
        train_y += [k] * half
        test_ids += images[half:]
        test_y += [k] * (len(images) - half)
    return train_ids, np.array(train_y), test_ids, np.array(test_y)


def load_images(data: Path, ids: list[str], size: int) -> np.ndarray:
    """uint8 ``(N, size, size, 3)`` through the pipeline's decode."""
    return np.stack([load_image_square((data / "images" / f"{i}.jpg").read_bytes(), size) for i in ids])


@torch.no_grad()
def pooled_features(net: torch.nn.Module, images: np.ndarray, batch: int = 64) -> np.ndarray:
    """``(N, 1280)`` pooled last-stage features, float64."""
    out = []
    for start in range(0, len(images), batch):
        x = preprocess_array(images[start:start + batch], TF_MEAN, TF_STD).contiguous(memory_format=torch.channels_last)
        out.append(net.embed(x).double().numpy())
    return np.concatenate(out)


@torch.no_grad()
def calibrate_batchnorm(net: torch.nn.Module, images: np.ndarray, batch: int = 64) -> None:
    """Re-estimate every BatchNorm's running mean/var on ``images`` (cumulative average)."""
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    net.train()
    for start in range(0, len(images), batch):
        net.forward_features(preprocess_array(images[start:start + batch], TF_MEAN, TF_STD))
    net.eval()


def probe_scores(f_train: np.ndarray, y_train: np.ndarray, f_test: np.ndarray, y_test: np.ndarray,
                 C: float, seed: int) -> dict[str, float]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(f_train)
    clf = LogisticRegression(C=C, class_weight="balanced", max_iter=3000, random_state=seed)
    clf.fit(scaler.transform(f_train), y_train)
    proba = clf.predict_proba(scaler.transform(f_test))
    return {
        "balanced_accuracy": float(balanced_accuracy_score(y_test, proba.argmax(1))),
        "macro_auc": float(roc_auc_score(y_test, proba, multi_class="ovr", average="macro")),
    }


def run_probe(data: Path = DEFAULT_DATA, n_images: int = 600, size: int = 128, variant: str = "lite0",
              seed: int = 0, C: float = 0.1, threads: int | None = None) -> dict[str, Any]:
    """Run the probe; returns ``{"pretrained": {...}, "random": {...}, "n_train", "n_test", ...}``."""
    if threads:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    train_ids, y_train, test_ids, y_test = sample_split(Path(data), n_images, seed)
    x_train, x_test = load_images(Path(data), train_ids, size), load_images(Path(data), test_ids, size)
    t_decode = time.perf_counter() - t0

    pretrained = build_efficientnet_lite(variant, 1000).eval()
    n_loaded = load_pretrained(pretrained, variant)
    torch.manual_seed(seed)
    random_net = build_efficientnet_lite(variant, 1000, drop_connect_rate=0.0)
    calibrate_batchnorm(random_net, x_train)

    result: dict[str, Any] = {"variant": variant, "size": size, "n_train": len(y_train), "n_test": len(y_test),
                              "tensors_loaded": n_loaded, "C": C, "seed": seed}
    for name, net in (("pretrained", pretrained), ("random", random_net)):
        net = net.to(memory_format=torch.channels_last)
        f_train, f_test = pooled_features(net, x_train), pooled_features(net, x_test)
        result[name] = probe_scores(f_train, y_train, f_test, y_test, C, seed)
    result["auc_ratio"] = result["pretrained"]["macro_auc"] / result["random"]["macro_auc"]
    result["bacc_ratio"] = result["pretrained"]["balanced_accuracy"] / result["random"]["balanced_accuracy"]
    result["seconds"] = {"decode": round(t_decode, 1), "total": round(time.perf_counter() - t0, 1)}
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--n-images", type=int, default=600)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--variant", default="lite0")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--C", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    if not data_available(args.data):
        print(f"HAM10000 not found at {args.data} (needs HAM10000_metadata.csv and images/): skipping the probe.")
        return 0
    r = run_probe(args.data, args.n_images, args.size, args.variant, args.seed, args.C, args.threads)
    print(f"EfficientNet-{r['variant']} linear probe, {r['size']} px, {r['n_train']} train / {r['n_test']} test images "
          f"(class-balanced, one image per lesion), C={r['C']}, seed {r['seed']}")
    print(f"{'features':<12}{'balanced acc':>14}{'macro AUC':>11}")
    for name in ("pretrained", "random"):
        print(f"{name:<12}{r[name]['balanced_accuracy']:>14.3f}{r[name]['macro_auc']:>11.3f}")
    print(f"{'ratio':<12}{r['bacc_ratio']:>14.2f}{r['auc_ratio']:>11.2f}")
    print(f"{r['seconds']['total']:.1f} s (decode {r['seconds']['decode']:.1f} s)")
    print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
