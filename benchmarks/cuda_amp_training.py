"""CUDA path of training: mixed precision against full precision, checkpoint resume, evaluation.

    python benchmarks/cuda_amp_training.py --splits DIR [--arch resnet18] [--epochs 4] [--out DIR]

Runs ``ml_code.training.train`` exactly as a SageMaker training job would (SM_* environment, channel
``splits`` = a preprocess output folder) twice on the same data: ``amp=false`` (baseline) and
``amp=true`` (fp16 autocast + GradScaler on CUDA, bf16 autocast on CPU), and prints the
per-epoch time of each and their ratio. It then resumes the AMP run for two more epochs from
its checkpoints (the spot-interruption path) and evaluates the result with ``ml_code.evaluation.evaluate``.
Meant for a GPU machine; on CPU it runs too, slowly.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ml_code.contract import parse_metric_line  # noqa: E402


def train(splits: Path, work: Path, hps: dict) -> tuple[list[dict], str]:
    for sub in ("model", "output/data"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", "SM_CHANNEL_SPLITS": str(splits),
           "SM_CHANNELS": '["splits"]', "SM_MODEL_DIR": str(work / "model"), "SM_OUTPUT_DIR": str(work / "output"),
           "SM_OUTPUT_DATA_DIR": str(work / "output/data"), "SM_CHECKPOINT_DIR": str(work / "checkpoints"),
           "SM_HPS": json.dumps(hps)}
    proc = subprocess.run([sys.executable, "-m", "ml_code.training.train"], env=env, capture_output=True, text=True)
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise SystemExit(f"training failed:\n{log[-4000:]}")
    return [m for m in map(parse_metric_line, log.splitlines()) if m and "epoch" in m], log


def evaluate(splits: Path, work: Path) -> dict:
    import tarfile

    model_in = work / "eval-in"
    model_in.mkdir(exist_ok=True)
    with tarfile.open(model_in / "model.tar.gz", "w:gz") as tar:
        for p in sorted((work / "model").rglob("*")):
            tar.add(p, arcname=p.relative_to(work / "model").as_posix(), recursive=False)
    out = work / "evaluation"
    env = {**os.environ, "PYTHONPATH": str(REPO), "SM_PROCESSING_INPUT_MODEL": str(model_in),
           "SM_PROCESSING_INPUT_SPLITS": str(splits), "SM_PROCESSING_OUTPUT_EVALUATION": str(out),
           "SM_OUTPUT_DIR": str(work / "output"), "SM_HPS": json.dumps({"bootstrap_samples": 200})}
    proc = subprocess.run([sys.executable, "-m", "ml_code.evaluation.evaluate"], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"evaluation failed:\n{(proc.stdout + proc.stderr)[-4000:]}")
    return json.loads((out / "report.json").read_text())["headline"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--splits", type=Path, required=True)
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--out", type=Path, default=Path("/tmp/dermaops-cuda-check"))
    args = parser.parse_args()
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    print(f"torch {torch.__version__} on {device}")
    base = {"arch": args.arch, "epochs": args.epochs, "batch_size": args.batch_size, "lr": 3e-3, "seed": 0}
    runs = {}
    for amp in (False, True):
        started = time.time()
        history, log = train(args.splits, args.out / f"amp-{amp}", {**base, "amp": amp})
        # The first epoch carries warm-up (cuDNN autotune, allocator); compare the rest.
        steady = [h["seconds"] for h in history[1:]] or [h["seconds"] for h in history]
        runs[amp] = sum(steady) / len(steady)
        print(f"amp={amp}: {len(history)} epochs, {runs[amp]:.2f} s/epoch after warm-up, wall {time.time() - started:.1f} s, "
              f"val balanced accuracy {history[-1].get('val_balanced_accuracy', float('nan')):.3f}")
        (args.out / f"amp-{amp}.log").write_text(log)
    print(f"ratio fp32/amp epoch time: {runs[False] / runs[True]:.2f}x")

    resumed, log = train(args.splits, args.out / "amp-True", {**base, "amp": True, "epochs": args.epochs + 2})
    epochs = [h["epoch"] for h in resumed]
    print(f"resume: epochs run after restart {epochs} (expected to start at {args.epochs + 1})")
    if not epochs or epochs[0] != args.epochs + 1:
        print("RESUME CHECK FAILED")
        return 1
    headline = evaluate(args.splits, args.out / "amp-True")
    print("evaluation of the AMP model:", json.dumps({k: round(v, 4) for k, v in headline.items()
                                                     if isinstance(v, float)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
