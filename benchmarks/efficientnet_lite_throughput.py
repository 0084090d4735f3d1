"""CPU training throughput of EfficientNet-Lite0 vs today's served DermaNet, on this machine.

    .venv/bin/python benchmarks/efficientnet_lite_throughput.py [--sizes 96 112 128] [--batch 64]
        [--steps 12] [--warmup 2] [--threads 2] [--freeze 0 3 6] [--variant lite0]

Why: the pretrained recipe must train on ~7,000 HAM10000 images within a ~16 minute network
budget on 2 cores (issue goal: <= 20 min end to end); how many epochs that buys at which image
size decides the recipe. One training step is what ``ml_code.train`` does per batch:
channels-last input, forward, label-smoothed cross-entropy, backward, AdamW step, with bf16
autocast (``amp=True`` on CPU) or fp32. Data loading and augmentation are not included (the
recipe's batch augmentation adds a few %).

Rows: ``dermanet`` at 64 px (the served ``ham10000`` recipe's network, the baseline), then
Lite0 at each ``--sizes``, fp32 and bf16; ``--freeze N`` adds Lite0 rows (``--freeze-dtype``) with the stem
and the first N MBConv blocks frozen (``freeze_backbone``; 3 = the 112/56 px stages at
224-equivalent, 6 = also the 28 px stage). Reported: median step time over ``--steps`` steps
after ``--warmup``, the configurations stepped round-robin (median and round-robin, because the
2 cores are shared: single steps spike and the load drifts during a run), images/s,
the fastest step (``min s``, ``best img/s``: the closest to an idle machine, as ``timeit`` advises),
the median process CPU seconds per step (both threads; on an idle machine the wall time is
about half of it), the ratio to the DermaNet bf16 row, and epochs of 7,000 images that fit in
16 minutes at the median and at the best rate.

Measured 2026-11-30 (``--batch 32 --steps 6 --warmup 1 --freeze 6 --freeze-dtype bf16``, load
~2-4, CPU s/step ~2x wall: both cores ours), median img/s: DermaNet 64 px bf16 380, fp32 213;
Lite0 fp32 / bf16: 96 px 97 / 68, 112 px 60 / 54, 128 px 51 / 45; Lite0 112 px bf16 with 6
blocks frozen 81. bf16 autocast is *slower* for Lite0 (depthwise convs, BatchNorm and ReLU6
gain nothing from AMX and pay the casts); fp32 is the Lite0 default on CPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from ml_code.package.networks import build_network  # noqa: E402
from ml_code.package.efficientnet_lite import build_efficientnet_lite, freeze_backbone  # noqa: E402

TRAIN_IMAGES = 7000
BUDGET_MINUTES = 16.0


class Config:
    """One row: a network, its optimiser and a fixed random batch, stepped one step at a time."""

    def __init__(self, name: str, net: torch.nn.Module, size: int, batch: int, bf16: bool, frozen: int) -> None:
        self.name, self.size, self.batch, self.bf16, self.frozen = name, size, batch, bf16, frozen
        self.net = net.train().to(memory_format=torch.channels_last)
        self.opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.05)
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(batch, 3, size, size, generator=g).contiguous(memory_format=torch.channels_last)
        self.y = torch.randint(0, 7, (batch,), generator=g)
        self.times: list[float] = []
        self.cpu_times: list[float] = []

    def step(self, record: bool = True) -> None:
        """Forward + label-smoothed cross-entropy + backward + AdamW step; seconds appended."""
        t0, c0 = time.perf_counter(), time.process_time()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            loss = F.cross_entropy(self.net(self.x), self.y, label_smoothing=0.1)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        if record:
            self.times.append(time.perf_counter() - t0)
            self.cpu_times.append(time.process_time() - c0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[96, 112, 128])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--freeze", type=int, nargs="*", default=[3, 6], help="extra Lite0 rows with N blocks frozen")
    ap.add_argument("--freeze-size", type=int, default=112)
    ap.add_argument("--freeze-dtype", choices=("fp32", "bf16"), default="fp32",
                    help="dtype of the frozen rows (fp32: the faster one for Lite0 on CPU, measured)")
    ap.add_argument("--variant", default="lite0")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # as ml_code.train does on CPU
    torch.manual_seed(0)

    lite = f"eff-{args.variant}"
    configs = [Config("dermanet", build_network("dermanet", 7), 64, args.batch, bf16, 0) for bf16 in (False, True)]
    for size in args.sizes:
        configs += [Config(lite, build_efficientnet_lite(args.variant, 7), size, args.batch, bf16, 0)
                    for bf16 in (False, True)]
    for n in args.freeze:
        net = build_efficientnet_lite(args.variant, 7)
        freeze_backbone(net, n)
        configs.append(Config(lite, net, args.freeze_size, args.batch, args.freeze_dtype == "bf16", n))
    # Round-robin, one step of each configuration per round: on a shared machine every row
    # then sees the same contention, so the ratios hold even when the absolute numbers drift.
    t0 = time.perf_counter()
    for _ in range(args.warmup):
        for c in configs:
            c.step(record=False)
    for r in range(args.steps):
        for c in configs:
            c.step()
        print(f"round {r + 1}/{args.steps} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)

    print(f"{args.threads} threads, batch {args.batch}, median of {args.steps} round-robin steps after {args.warmup} warm-up")
    print(f"{'net':<10}{'px':>5}{'dtype':>6}{'frozen':>7}{'step s':>9}{'img/s':>9}{'min s':>8}{'best img/s':>11}"
          f"{'cpu s':>8}")
    rows: list[dict] = []
    for c in configs:
        med = statistics.median(c.times)
        row = {"net": c.name, "size": c.size, "dtype": "bf16" if c.bf16 else "fp32", "frozen_blocks": c.frozen,
               "batch": c.batch, "step_s": round(med, 3), "img_s": round(c.batch / med, 1),
               "min_step_s": round(min(c.times), 3), "best_img_s": round(c.batch / min(c.times), 1),
               "cpu_s_per_step": round(statistics.median(c.cpu_times), 3)}
        rows.append(row)
        print(f"{c.name:<10}{c.size:>5}{row['dtype']:>6}{c.frozen:>7}{med:>9.3f}{row['img_s']:>9.1f}"
              f"{row['min_step_s']:>8.3f}{row['best_img_s']:>11.1f}{row['cpu_s_per_step']:>8.2f}")

    base = next(r for r in rows if r["net"] == "dermanet" and r["dtype"] == "bf16")
    print(f"\nratio to dermanet 64 px bf16 (median {base['img_s']:.0f}, best {base['best_img_s']:.0f} img/s); "
          f"epochs of {TRAIN_IMAGES} images in {BUDGET_MINUTES:.0f} min at the median / best rate")
    print(f"{'net':<10}{'px':>5}{'dtype':>6}{'frozen':>7}{'ratio':>7}{'best ratio':>11}{'epochs':>8}{'best epochs':>12}")
    for r in rows:
        r["ratio_to_dermanet"] = round(r["img_s"] / base["img_s"], 3)
        r["best_ratio_to_dermanet"] = round(r["best_img_s"] / base["best_img_s"], 3)
        r["epochs_in_budget"] = round(BUDGET_MINUTES * 60 * r["img_s"] / TRAIN_IMAGES, 1)
        r["best_epochs_in_budget"] = round(BUDGET_MINUTES * 60 * r["best_img_s"] / TRAIN_IMAGES, 1)
        print(f"{r['net']:<10}{r['size']:>5}{r['dtype']:>6}{r['frozen_blocks']:>7}{r['ratio_to_dermanet']:>7.2f}"
              f"{r['best_ratio_to_dermanet']:>11.2f}{r['epochs_in_budget']:>8.1f}{r['best_epochs_in_budget']:>12.1f}")
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
