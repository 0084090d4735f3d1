"""What the drift embedding's projection costs the MMD test: detection rates, full embedding vs 32 numbers.

    .venv/bin/python benchmarks/drift_projection_power.py --model MODEL.tar.gz [--repeats 40] [--traffic 60]

The drift monitor compares recent traffic with the baseline's held-out images by an MMD permutation
test (``ml_code.monitoring.drift.mmd_test``, alpha ``DriftThresholds.mmd_alpha``). Since the
endpoint returns a random projection of the penultimate embedding to 32 numbers
(``ml_code.package.drift_embedding``), the test sees those, not the full embedding. This measures,
on the same embeddings, how often each way flags drift:

- baseline: 150 images (as ``model_baseline``'s default sample is held-out images; here a fresh
  synthetic demo set, ``dermaops demo-data --seed 11``, which the package never saw);
- traffic: ``--traffic`` other images of a second fresh set (``--seed 12``), drawn ``--repeats``
  times, unchanged (the false-alarm rate) and under acquisition shifts of growing strength: a
  contrast change ``(x - mean) * s + mean`` per image and a brightness offset, both on the model
  view before the network sees it.

Prints, per shift: the share of repeats flagged by the full embedding and by the projection
(alpha 0.001, 1,999 permutations as ``drift_report`` runs it), and each way's median p-value.
``--model``: a package of the embedding's network, e.g. the ``model.tar.gz`` that ``make demo``
leaves under ``.dermaops/store/models/jobs/train/``. Not part of ``make bench`` (no target in
issue 19). The synthetic demo's pictures are simpler than dermoscopy:
read the comparison between the two ways, not the rates themselves.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SHIFTS: tuple[tuple[str, float, float], ...] = (
    ("none", 1.0, 0.0), ("contrast x1.5", 1.5, 0.0), ("contrast x2", 2.0, 0.0), ("contrast x3", 3.0, 0.0),
    ("brightness +20", 1.0, 20.0), ("brightness +40", 1.0, 40.0), ("brightness +60", 1.0, 60.0),
)


def _views(folder: Path, size: int):
    """Every demo image of ``folder`` decoded to the model view (the endpoint's decode)."""
    import numpy as np

    from ml_code.package.image_policy import decode_square_with_facts

    return np.stack([decode_square_with_facts(p.read_bytes(), size)[0]
                     for p in sorted((folder / "images").glob("*.jpg"))])


def _shifted(views, contrast: float, brightness: float):
    import numpy as np

    x = views.astype(np.float32)
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    return np.clip((x - mean) * contrast + mean + brightness, 0, 255).round().astype(np.uint8)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--traffic", type=int, default=60)
    parser.add_argument("--baseline", type=int, default=150, help="baseline images (model_baseline's sample)")
    parser.add_argument("--demo-lesions", type=int, default=None, help="demo-data --lesions-per-class (default: its own)")
    parser.add_argument("--permutations", type=int, default=1999)  # drift_report's default: p can go below alpha
    args = parser.parse_args(argv)
    import numpy as np

    from ml_code.monitoring.baseline import embed_views, load_packaged_model
    from ml_code.monitoring.drift import DriftThresholds, mmd_test
    from ml_code.package.drift_embedding import project

    alpha = DriftThresholds().mmd_alpha
    with tempfile.TemporaryDirectory(prefix="dermaops-drift-power-") as tmp:
        module, model = load_packaged_model(args.model, Path(tmp) / "model")
        size = int(model.image_size)
        pools = []
        for seed in (11, 12):
            out = Path(tmp) / f"demo-{seed}"
            lesions = [] if args.demo_lesions is None else ["--lesions-per-class", str(args.demo_lesions)]
            subprocess.run([sys.executable, "-m", "dermaops_cli", "demo-data", "--out", str(out), "--seed", str(seed),
                            *lesions], check=True, capture_output=True, cwd=REPO)
            pools.append(_views(out, size))
        rng = np.random.default_rng(0)
        base_views = pools[0][rng.choice(len(pools[0]), args.baseline, replace=False)]
        base_full = embed_views(module, model, base_views)
        base_projected = project(base_full)
        print(f"package {args.model.name}: embedding width {base_full.shape[1]}, projected to {base_projected.shape[1]}; "
              f"baseline {args.baseline} images, traffic {args.traffic} a draw, {args.repeats} draws a shift, alpha {alpha}")
        for name, contrast, brightness in SHIFTS:
            flagged = {"full": 0, "projected": 0}
            p_values: dict[str, list[float]] = {"full": [], "projected": []}
            for repeat in range(args.repeats):
                pick = rng.choice(len(pools[1]), args.traffic, replace=False)
                emb = embed_views(module, model, _shifted(pools[1][pick], contrast, brightness))
                for way, (base, cur) in {"full": (base_full, emb), "projected": (base_projected, project(emb))}.items():
                    result = mmd_test(base, cur, n_permutations=args.permutations, seed=repeat)
                    flagged[way] += result.p_value < alpha
                    p_values[way].append(result.p_value)
            print(f"{name:16s} flagged: full embedding {flagged['full'] / args.repeats:6.1%} "
                  f"(median p {np.median(p_values['full']):.4f})   projection {flagged['projected'] / args.repeats:6.1%} "
                  f"(median p {np.median(p_values['projected']):.4f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
