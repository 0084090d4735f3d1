"""What the synthetic demo's training recipe costs and gives: the job defaults against ``synthetic_demo``.

    .venv/bin/python benchmarks/demo_recipe.py [--splits DIR] [--recipes default,synthetic_demo] [--quick]

``make demo`` spends most of its time in ``trained_model``. On the synthetic demo set (64 px) the
asset trains the ``synthetic_demo`` recipe (``ml_code.training.options.RECIPES``): the job defaults
with resnet18's own 7x7/2 stem, where the defaults use the small-image 3x3/1 stem at <= 96 px. This
runs, back to back on the same splits, the training job as the local backend runs it
(``python -m ml_code.training.train`` under the container contract: SM_* folders, a fresh process)
once per recipe (``default`` = no recipe, the job defaults), then the evaluation job
(``python -m ml_code.evaluation.evaluate``) on each package's test split, and prints per recipe:
the training job's wall seconds, its epochs' median training images/second, the best validation
balanced accuracy, and the test balanced accuracy, macro AUC and ECE.

``--splits``: a processed splits folder; default: the one ``make demo`` left
(``$DERMAOPS_HOME/store/processed/splits/latest/64px.json``, DERMAOPS_HOME defaulting to
``.dermaops``). ``--quick``: one epoch and no descriptor model (a smoke run; its figures mean
nothing). Not part of ``make bench`` (no target of its own in issue 19; it explains P6's
``make demo`` figure). The demo's drawn lesions are easier than dermoscopy: both recipes reach
the same test figures there, which says nothing about real data (that trains ``ham10000``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ml_code import contract  # noqa: E402


def demo_splits() -> Path | None:
    """The splits folder the last ``make demo`` trained on, or None."""
    home = Path(os.environ.get("DERMAOPS_HOME") or REPO / ".dermaops")
    pointer = home / "store" / "processed" / "splits" / "latest" / "64px.json"
    if not pointer.is_file():
        return None
    uri = json.loads(pointer.read_text())["splits_uri"]
    path = Path(uri.removeprefix("file://"))
    return path if path.is_dir() else None


def _job_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SM_")}
    env.update(PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1", **extra)
    return env


def _metrics(stdout: str) -> list[dict]:
    return [m for m in map(contract.parse_metric_line, stdout.splitlines()) if m]


def train(splits: Path, work: Path, hps: dict) -> dict:
    """One training job; its wall seconds, epochs' median images/second and best val balanced accuracy."""
    for sub in ("model", "output/data", "checkpoints"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    env = _job_env({"SM_CHANNEL_SPLITS": str(splits), "SM_CHANNELS": '["splits"]', "SM_MODEL_DIR": str(work / "model"),
                    "SM_OUTPUT_DIR": str(work / "output"), "SM_OUTPUT_DATA_DIR": str(work / "output" / "data"),
                    "SM_CHECKPOINT_DIR": str(work / "checkpoints"), "SM_HPS": json.dumps(hps),
                    "SM_HOSTS": '["algo-1"]', "SM_CURRENT_HOST": "algo-1", "SM_NUM_GPUS": "0"})
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "ml_code.training.train"], cwd=work, env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"training job with {hps} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    epochs = [m for m in _metrics(proc.stdout) if "epoch" in m]
    config = json.loads((work / "model" / "model_config.json").read_text())
    return {"job_wall_s": round(wall, 1), "epochs": len(epochs),
            "train_images_per_s": round(statistics.median(m["train_images_per_second"] for m in epochs), 1),
            "best_val_balanced_accuracy": round(max(m["val_balanced_accuracy"] for m in epochs), 4),
            "small_input": bool(config.get("small_input"))}


def evaluate(splits: Path, model_dir: Path, work: Path) -> dict:
    """The evaluation job on the test split: balanced accuracy, macro AUC, ECE."""
    (work / "evaluation").mkdir(parents=True, exist_ok=True)
    env = _job_env({"SM_PROCESSING_INPUT_MODEL": str(model_dir), "SM_PROCESSING_INPUT_SPLITS": str(splits),
                    "SM_PROCESSING_OUTPUT_EVALUATION": str(work / "evaluation"), "SM_OUTPUT_DIR": str(work),
                    "SM_HPS": json.dumps({"n_bootstrap": 200})})
    proc = subprocess.run([sys.executable, "-m", "ml_code.evaluation.evaluate"], cwd=work, env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"evaluation job failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    found = [m for m in _metrics(proc.stdout) if "balanced_accuracy" in m][-1]
    return {f"test_{k}": round(float(found[k]), 4) for k in ("balanced_accuracy", "macro_auc", "ece")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--splits", type=Path, default=None, help="processed splits folder (default: make demo's)")
    p.add_argument("--recipes", default="default,synthetic_demo",
                   help="comma-separated recipe names; 'default' is the job defaults")
    p.add_argument("--quick", action="store_true", help="one epoch, no descriptor model (smoke run)")
    args = p.parse_args(argv)
    splits = args.splits or demo_splits()
    if splits is None:
        print("no splits: run `make demo` first or pass --splits DIR", file=sys.stderr)
        return 2
    rows = []
    with tempfile.TemporaryDirectory(prefix="demo-recipe-") as tmp:
        for name in [r.strip() for r in args.recipes.split(",") if r.strip()]:
            hps: dict = {} if name == "default" else {"recipe": name}
            if args.quick:
                hps.update(epochs=1, descriptor_model=False)
            work = Path(tmp) / name
            row = {"recipe": name, **train(splits, work / "train", hps)}
            row.update(evaluate(splits, work / "train" / "model", work / "evaluate"))
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\n{'recipe':16s} {'stem':>9s} {'job s':>7s} {'img/s':>7s} {'val BA':>7s} {'test BA':>8s} "
          f"{'test AUC':>9s} {'ECE':>7s}")
    for r in rows:
        print(f"{r['recipe']:16s} {'3x3/1' if r['small_input'] else '7x7/2':>9s} {r['job_wall_s']:7.1f} "
              f"{r['train_images_per_s']:7.1f} {r['best_val_balanced_accuracy']:7.3f} "
              f"{r['test_balanced_accuracy']:8.3f} {r['test_macro_auc']:9.3f} {r['test_ece']:7.4f}")
    if len(rows) >= 2:
        print(f"\nimages/second, {rows[-1]['recipe']} / {rows[0]['recipe']}: "
              f"{rows[-1]['train_images_per_s'] / rows[0]['train_images_per_s']:.2f}x; "
              f"job wall {rows[0]['job_wall_s'] / rows[-1]['job_wall_s']:.2f}x shorter")
    return 0


if __name__ == "__main__":
    sys.exit(main())
