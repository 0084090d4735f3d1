"""Benchmark: the training job's images/second vs a raw PyTorch loop (issue 19, P2).

    python benchmarks/training_throughput.py [--quick] [--steps N]

The ``ham10000`` recipe (EfficientNet-Lite0 at 96 px, its batch size, its AMP setting, balanced
sampler, batch augmentation, EMA, channels_last) runs ``--steps`` optimizer steps through the
job's own code (``build_train_data``, ``build_network``, ``train_one_epoch`` with its data-wait
timer) on synthetic 96 px splits; the baseline, in the same process, is a raw loop written
here: the same network built the same way, uint8 batches already in memory (no loader),
the same batch augmentation, AdamW, gradient clipping, autocast only if the recipe asks, the
same number of steps, each timed ``--repeats`` times in turn (the best of each is kept). Both
run after a few untimed steps of the raw loop (``--warmup-steps``)
that warm the process (oneDNN's kernels for these shapes, the allocator, the thread pool): a
training job pays that once in an epoch of ~220 steps, not in every 20. Prints images/second of both, their ratio (target >= 0.9), the job's
share of step time spent waiting for data, and the epochs of HAM10000's ~7,000 training
images that fit in the recipe's ``max_minutes`` at the measured rate. ``--quick``: 3 steps.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

HAM10000_TRAIN_IMAGES = 7000  # about 70 % of 10,015 images after the lesion-grouped split


def _first_batches(split, steps: int, batch_size: int):
    """The split's first ``steps`` batches as one uint8 NCHW image tensor and its int64 labels, in
    memory: what the raw loop reads (it has no loader)."""
    import numpy as np
    import torch

    n = steps * batch_size
    return (torch.from_numpy(np.array(split.images[:n])).permute(0, 3, 1, 2),
            torch.from_numpy(np.asarray(split.labels[:n])).long())


def _raw_loop(opts, images, labels, steps: int) -> float:
    """Seconds for ``steps`` steps of a plain PyTorch loop on the recipe's network and batch."""
    import torch
    from torch import nn

    from ml_code.training.data import BatchAugment
    from ml_code.training.models import build_model

    model = build_model(opts.arch, 7, None, small_input=False).to(memory_format=torch.channels_last)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    augment = BatchAugment(opts.rrc_scale, opts.color_jitter)
    mean = torch.tensor([127.0] * 3).view(1, 3, 1, 1)
    bs = opts.batch_size
    t0 = time.perf_counter()
    for s in range(steps):
        x = augment(images[s * bs:(s + 1) * bs].float())
        x = ((x - mean) / 128.0).contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=opts.amp):
            logits = model(x)
        loss = nn.functional.cross_entropy(logits.float(), labels[s * bs:(s + 1) * bs], label_smoothing=opts.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="3 steps")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--warmup-steps", type=int, default=3, help="untimed raw-loop steps before either is timed")
    p.add_argument("--repeats", type=int, default=2,
                   help="time the job and the raw loop this many times each, in turn, and keep each one's best: "
                        "this machine's speed moves within a minute, and a slow spell would otherwise fall on one")
    args = p.parse_args(argv)
    steps = args.steps or (3 if args.quick else 20)

    import torch

    from ml_code.data.split_reader import load_splits
    from ml_code.training.data import Normalizer, build_train_data
    from ml_code.training.loop import Runtime, build_network, configure_threads, train_one_epoch
    from ml_code.training.options import validate_options
    from tests.support.synth_splits import make_splits

    opts = validate_options({"recipe": "ham10000"})
    rt = Runtime(torch.device("cpu"))
    configure_threads(opts, rt)
    n = steps * opts.batch_size
    with tempfile.TemporaryDirectory(prefix="dermaops-train-bench-") as tmp:
        splits, _ = load_splits(make_splits(Path(tmp) / "splits", size=96, n_train=n, n_val=14, n_test=14))
        train = splits["train"]
        if args.warmup_steps:  # untimed, on the first batches: warms the process, not either measurement
            warm = min(args.warmup_steps, len(train.labels) // opts.batch_size)
            _raw_loop(opts, *_first_batches(train, warm, opts.batch_size), warm)
        norm = Normalizer([127 / 255] * 3, [128 / 255] * 3, rt.device)
        jobs, raws, raw_batches = [], [], None
        for _ in range(args.repeats):  # the pair again: the best of each, as timeit takes its best
            # the job: its loader, sampler, augmentation, EMA and timers, one epoch of `steps` steps
            torch.manual_seed(0)
            net = build_network(opts, 7, False, rt)
            data = build_train_data(opts, train, 7, rt.device)
            timing: dict[str, float] = {}
            train_one_epoch(net, data, norm, opts, 1, opts.epochs, 0, timing)
            jobs.append(timing)
            job_steps = len(data.loader)
            raw_batches = raw_batches or _first_batches(train, job_steps, opts.batch_size)
            torch.manual_seed(0)
            raws.append(_raw_loop(opts, *raw_batches, job_steps))
    timing = max(jobs, key=lambda t: t["images"] / t["seconds"])
    raw_s = min(raws)
    ours = timing["images"] / timing["seconds"]
    base = job_steps * opts.batch_size / raw_s
    wait = timing["data_wait_seconds"] / timing["seconds"]
    epochs = opts.max_minutes * 60 * ours / HAM10000_TRAIN_IMAGES
    print(f"{opts.arch} at 96 px, batch {opts.batch_size}, amp {opts.amp}, {job_steps} steps, "
          f"{torch.get_num_threads()} threads")
    print(f"training job: {ours:.1f} img/s ({wait:.1%} of step time waiting for data); raw loop: {base:.1f} img/s")
    print(f"epochs of ~{HAM10000_TRAIN_IMAGES} images in the recipe's {opts.max_minutes:g} min, were all of it "
          f"epochs (the job also fits the descriptor model and makes its calibration and OOD passes): {epochs:.1f} "
          f"(recipe plans {opts.epochs})")
    for metric, o, b, target, met, unit in (
            ("images_per_second_vs_raw_loop", ours, base, ">= 0.9x", ours >= 0.9 * base, "img/s"),):
        print("BENCH_RESULT " + json.dumps({"stage": "training", "metric": metric, "ours": round(o, 2),
                                            "baseline": round(b, 2), "ratio": round(o / b, 3), "target": target,
                                            "met": bool(met), "unit": unit}))
    print("BENCH_RESULT " + json.dumps({"stage": "training", "metric": "data_wait_share", "ours": round(wait, 4),
                                        "baseline": None, "ratio": None, "target": "report", "met": True,
                                        "unit": "share"}))
    # issue 19 asks for this figure, with no target: the loop replans its epochs (and the LR
    # schedule) to fit max_minutes on a slower machine (ml_code.training.loop), so fewer than the
    # recipe plans is a slower model-building run, not a failure
    print("BENCH_RESULT " + json.dumps({"stage": "training", "metric": "epochs_in_recipe_budget",
                                        "ours": round(epochs, 2), "baseline": None, "ratio": None,
                                        "target": f"report (recipe plans {opts.epochs})", "met": None,
                                        "unit": "epochs"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
