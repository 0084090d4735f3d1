"""How often the OOD flag lets images through: HAM10000 held-out test images vs non-dermoscopy.

    python benchmarks/ood_pass_rates.py [--quick] [--model model.tar.gz --splits SPLITS_DIR] [--per-kind N]

Takes a trained HAM10000 package and the processed splits it was trained on (default: the
earlier recipe run under /tmp/bench18/seed42/recipe), adds OOD statistics with the packaging
code (``ml_code.training.ood.add_ood_stats``: Mahalanobis feature ensemble over the stem, every
stage end and the penultimate embedding, Lee et al. 2018; calibrated so 95% of validation images
pass), then reports the share of images that pass (``in_distribution``) on the lesion-grouped
test split and on ``--per-kind`` images of each non-dermoscopy kind
(``ml_code.tools.non_dermoscopy``: scene, document, solid colour).

Baselines, same run and same forward pass: the penultimate layer's Mahalanobis distance alone
at its validation 95th percentile (the method before the ensemble), and the maximum softmax
probability (Hendrycks & Gimpel 2017) thresholded so that 95% of validation images pass too.
All from one view (the OOD score reads the identity view whatever the package's test-time views).
``--quick`` uses 600 training, 300 validation and 300 test images.
Prints ``BENCH_SKIP`` and exits 0 when the package or splits are missing.
"""

from __future__ import annotations

import argparse
import json
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ml_code.data.split_reader import Split, has_split_pixels, load_splits
from ml_code.package import inference
from ml_code.package.image_policy import decode_square
from ml_code.package.model import predict_images
from ml_code.tools import non_dermoscopy
from ml_code.training.ood import add_ood_stats

RECIPE = Path("/tmp/bench18/seed42/recipe/store")
DEFAULT_MODEL = RECIPE / "models/sha256/1b82c90acfe5031a6a03d6099bb5469a54884fd1308fbb13780e5affede32e42/model.tar.gz"
DEFAULT_SPLITS = RECIPE / "processed/splits/dde7bc3106ed8b36/splits"


def _head(split: Split, n: int | None) -> Split:
    return split if n is None else Split(np.asarray(split.images[:n]), np.asarray(split.labels[:n]))


def _score(model, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pass flags of the ensemble, pass flags of the penultimate layer alone, max softmax
    probability) per image, chunked, one view, one forward pass (what ``predict_fn`` does)."""
    ours, single, msp = [], [], []
    pen = next(layer for layer in model.ood.layers if layer.name == "penultimate")
    for i in range(0, len(images), 256):
        feats: list[dict[str, np.ndarray]] = []
        probs = predict_images(np.asarray(images[i:i + 256]), model, views=1, features=feats)
        merged = {name: np.concatenate([f[name] for f in feats]) for name in feats[0]}
        ours.append(model.ood.in_distribution(model.ood.scores(merged)))
        single.append(pen.distances(merged["penultimate"]) <= pen.centre + pen.scale)  # its val 95th percentile
        msp.append(np.asarray(probs).max(1))
    return np.concatenate(ours), np.concatenate(single), np.concatenate(msp)


def _result(metric: str, ours: float, baseline: float | None, target: str, met: bool) -> None:
    """One ``BENCH_RESULT`` line (benchmarks convention); ratio is ours / baseline."""
    ratio = None if baseline is None or baseline == 0 else ours / baseline
    print("BENCH_RESULT " + json.dumps({"stage": "serving", "metric": metric, "ours": ours, "baseline": baseline,
                                        "ratio": ratio, "target": target, "met": met, "unit": "share of images"}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--splits", type=Path, default=DEFAULT_SPLITS)
    parser.add_argument("--per-kind", type=int, default=100)
    args = parser.parse_args(argv)
    if not args.model.is_file() or not has_split_pixels(args.splits, "train"):
        print(f"BENCH_SKIP no trained HAM10000 package/splits at {args.model} / {args.splits} "
              "(train one with DERMAOPS_RAW_URI=../shared/data/ham10000, then pass --model and --splits)")
        return 0
    n_train, n_eval = (600, 300) if args.quick else (None, None)
    per_kind = min(args.per_kind, 20) if args.quick else args.per_kind
    splits, _ = load_splits(args.splits)
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="dermaops-oodbench-") as tmp:
        with tarfile.open(args.model, "r:*") as tar:
            tar.extractall(tmp, filter="data")
        record = add_ood_stats(Path(tmp), _head(splits["train"], n_train), _head(splits["val"], n_eval))
        model = inference.model_fn(tmp)
        size = model.image_size
        _, _, val_msp = _score(model, _head(splits["val"], n_eval).images)
        msp_threshold = float(np.quantile(val_msp, 0.05))  # 95% of validation images pass
        sets = {"ham10000_test": _head(splits["test"], n_eval).images}
        for kind in non_dermoscopy.KINDS:
            sets[kind] = np.stack([decode_square(non_dermoscopy.jpeg_bytes(kind, 1000 + s), size)
                                   for s in range(per_kind)])
        rates: dict[str, tuple[float, float, float]] = {}
        for name, images in sets.items():
            ours, single, msp = _score(model, images)
            rates[name] = (float(ours.mean()), float(single.mean()), float((msp >= msp_threshold).mean()))
    layers = ", ".join(f"{x['name']} {x['dim']}-d (alone flags {x['val_flag_rate']:.1%} of val)"
                       for x in record["layers"])
    print(f"package {args.model.name}: {len(record['layers'])} layers, {record['dim']} features, of "
          f"{record['n_train']} training images; threshold {record['threshold']:.2f} (val pass "
          f"{record['val_pass_rate']:.1%} of {record['n_val']}); {time.time() - t0:.0f} s\n  {layers}")
    print(f"{'set':<16}{'n':>6}{'pass (ensemble)':>17}{'pass (penultimate only)':>25}{'pass (MSP)':>12}")
    for name, (ours, single, base) in rates.items():
        print(f"{name:<16}{len(sets[name]):>6}{ours:>17.1%}{single:>25.1%}{base:>12.1%}")
    test_pass = rates["ham10000_test"][0]
    _result("ham10000_test_pass_rate", test_pass, rates["ham10000_test"][1], ">= 0.90", test_pass >= 0.90)
    for kind in non_dermoscopy.KINDS:  # baseline: the penultimate layer alone (the method before the ensemble)
        flagged = 1 - rates[kind][0]
        _result(f"{kind}_flagged_rate", flagged, 1 - rates[kind][1], ">= 0.90 flagged", flagged >= 0.90)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
