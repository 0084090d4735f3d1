"""How often the OOD flag lets images through: HAM10000 held-out test images vs non-dermoscopy.

    python benchmarks/ood_pass_rates.py [--quick] [--model model.tar.gz --splits SPLITS_DIR] [--per-kind N]

Takes a trained HAM10000 package and the processed splits it was trained on (default: the
earlier recipe run under /tmp/bench18/seed42/recipe), adds OOD statistics with the packaging
code (``ml_code.training.ood.add_ood_stats``: Mahalanobis, Lee et al. 2018; threshold = 95th
percentile of validation scores), then reports the share of images that pass
(``in_distribution``) on the lesion-grouped test split and on ``--per-kind`` images of each
non-dermoscopy kind (``ml_code.tools.non_dermoscopy``: scene, document, solid colour).

Baseline, same run: the maximum softmax probability (Hendrycks & Gimpel 2017) thresholded so
that 95% of validation images pass too. Both from one view (the OOD score reads the identity
view whatever the package's test-time views; MSP is taken from the same pass).
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

from ml_code.data.split_reader import Split, load_splits
from ml_code.package import inference
from ml_code.package.image_policy import decode_square
from ml_code.tools import non_dermoscopy
from ml_code.training.ood import add_ood_stats

RECIPE = Path("/tmp/bench18/seed42/recipe/store")
DEFAULT_MODEL = RECIPE / "models/sha256/1b82c90acfe5031a6a03d6099bb5469a54884fd1308fbb13780e5affede32e42/model.tar.gz"
DEFAULT_SPLITS = RECIPE / "processed/splits/dde7bc3106ed8b36/splits"


def _head(split: Split, n: int | None) -> Split:
    return split if n is None else Split(np.asarray(split.images[:n]), np.asarray(split.labels[:n]))


def _score(model, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(in_distribution flags, max softmax probability) per image, chunked, one view."""
    flags, msp = [], []
    for i in range(0, len(images), 256):
        p = inference.predict_fn({"images": np.asarray(images[i:i + 256]), "views": 1}, model)
        flags.append(p.in_distribution)
        msp.append(np.asarray(p).max(1))
    return np.concatenate(flags), np.concatenate(msp)


def _result(metric: str, ours: float, baseline: float | None, target: str, met: bool) -> None:
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
    if not args.model.is_file() or not (args.splits / "train_images.npy").is_file():
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
        _, val_msp = _score(model, _head(splits["val"], n_eval).images)
        msp_threshold = float(np.quantile(val_msp, 0.05))  # 95% of validation images pass
        test = _head(splits["test"], n_eval).images
        test_flags, test_msp = _score(model, test)
        rates: dict[str, tuple[float, float]] = {"ham10000_test": (float(test_flags.mean()),
                                                                   float((test_msp >= msp_threshold).mean()))}
        for kind in non_dermoscopy.KINDS:
            views = np.stack([decode_square(non_dermoscopy.jpeg_bytes(kind, 1000 + s), size) for s in range(per_kind)])
            flags, msp = _score(model, views)
            rates[kind] = (float(flags.mean()), float((msp >= msp_threshold).mean()))
    print(f"package {args.model.name}: {record['dim']}-d penultimate embeddings of {record['n_train']} training "
          f"images; threshold {record['threshold']:.2f} (val pass {record['val_pass_rate']:.1%} of {record['n_val']}); "
          f"{time.time() - t0:.0f} s")
    print(f"{'set':<16}{'n':>6}{'pass (Mahalanobis)':>20}{'pass (MSP baseline)':>21}")
    for name, (ours, base) in rates.items():
        n = len(test) if name == "ham10000_test" else per_kind
        print(f"{name:<16}{n:>6}{ours:>20.1%}{base:>21.1%}")
    test_pass = rates["ham10000_test"][0]
    _result("ham10000_test_pass_rate", test_pass, None, ">= 0.90", test_pass >= 0.90)
    flagged = float(np.mean([1 - rates[k][0] for k in non_dermoscopy.KINDS]))
    flagged_msp = float(np.mean([1 - rates[k][1] for k in non_dermoscopy.KINDS]))
    _result("non_dermoscopy_flagged_rate", flagged, flagged_msp, ">= 0.95 flagged", flagged >= 0.95)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
