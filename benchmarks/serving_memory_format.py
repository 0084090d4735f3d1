"""The served network in channels_last against the contiguous (NCHW) layout it used before.

    .venv/bin/python benchmarks/serving_memory_format.py --model MODEL.tar.gz --splits SPLITS_DIR
        [--images 256] [--views 8] [--rounds 2]

Why: the evaluation job scores every validation and test image through the package's served
views (``ml_code.evaluation.evaluate.predict_split``), and on HAM10000 with 8 views it took
8 minutes of the 30-minute ingest-to-endpoint budget on two cores. The network trains in
channels_last (``ml_code.training.loop``); ``ml_code.package.model.load_model`` now serves it in
that layout too. This scores the same ``--images`` test images (``test_images.npy`` of the
processing job's output, with their clinical context) through the package's own ``predict_fn``
in both layouts, alternating for ``--rounds`` (the machine is shared: the median of the rounds
is reported), prints seconds for each, the ratio and the largest difference of the
probabilities. Needs a trained package and its splits (the README's real-data ``make demo``
leaves both under ``.dermaops/store``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ml_code.data.split_reader import load_splits  # noqa: E402
from ml_code.evaluation.evaluate import predict_split  # noqa: E402
from ml_code.package.loader import open_package  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True, help="model.tar.gz of a trained package")
    p.add_argument("--splits", type=Path, required=True, help="the processing job's output folder")
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--views", type=int, default=8)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args(argv)
    splits, _ = load_splits(args.splits)
    test = splits["test"]
    images = np.asarray(test.images[: args.images])
    clinical = None if test.clinical is None else test.clinical[: args.images]
    with tempfile.TemporaryDirectory(prefix="dermaops-bench-") as work:
        package = open_package(args.model, Path(work), "bench")
        handlers, model = package.api, package.model
        layouts = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
        seconds: dict[str, list[float]] = {name: [] for name in layouts}
        probs: dict[str, np.ndarray] = {}
        for _ in range(args.rounds):
            for name, layout in layouts.items():
                model.net.to(memory_format=layout)
                predict_split(handlers, model, images[:16], 1, None if clinical is None else clinical[:16])  # warm-up
                t0 = time.perf_counter()
                probs[name] = predict_split(handlers, model, images, args.views, clinical)
                seconds[name].append(time.perf_counter() - t0)
    contiguous, channels_last = (statistics.median(seconds[n]) for n in layouts)
    print(f"{len(images)} test images x {args.views} views, {torch.get_num_threads()} threads, "
          f"median of {args.rounds} rounds")
    print(f"contiguous (before): {contiguous:.1f} s; channels_last (served): {channels_last:.1f} s; "
          f"ratio {contiguous / channels_last:.2f}x")
    print(f"largest probability difference: {np.abs(probs['contiguous'] - probs['channels_last']).max():.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
