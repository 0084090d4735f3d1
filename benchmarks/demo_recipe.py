"""What the synthetic demo's training recipe costs and gives: the job defaults against ``synthetic_demo``.

    .venv/bin/python benchmarks/demo_recipe.py [--splits DIR] [--recipes default,synthetic_demo] [--quick]

``make demo`` spends most of its time in ``trained_model``. On the synthetic demo set (64 px) the
asset trains the ``synthetic_demo`` recipe (``ml_code.training.options.RECIPES``): the job defaults
with resnet18's own 7x7/2 stem, where the defaults use the small-image 3x3/1 stem at <= 96 px. This
runs, back to back on the same splits (copied into a scratch local store), the training job
through the local backend's job runner (``dermaops_resources.jobs.LocalJobRunner``: a fresh
``python -m ml_code.training.train`` under the container contract, then the package written) once
per recipe (``default`` = no recipe, the job defaults), then the evaluation job on each package's
test split, and prints per recipe: the training job's wall seconds, its epochs' median training
images/second, the best validation balanced accuracy, and the test balanced accuracy, macro AUC
and ECE.

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
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from dermaops_resources.jobs import JobSpec, LocalJobRunner  # noqa: E402
from dermaops_resources.object_store import LocalObjectStore, file_uri_to_path  # noqa: E402


def demo_splits() -> Path | None:
    """The splits folder the last ``make demo`` trained on, or None."""
    home = Path(os.environ.get("DERMAOPS_HOME") or REPO / ".dermaops")
    pointer = home / "store" / "processed" / "splits" / "latest" / "64px.json"
    if not pointer.is_file():
        return None
    path = file_uri_to_path(json.loads(pointer.read_text())["splits_uri"])
    return path if path.is_dir() else None


def train(runner: LocalJobRunner, store: LocalObjectStore, splits_uri: str, name: str, hps: dict) -> tuple[dict, str]:
    """One training job as ``trained_model`` starts it: its wall seconds, epochs' median
    images/second, best val balanced accuracy and stem; and the package's URI."""
    spec = JobSpec(job_type="training", name=f"train-{name}", entry_point="ml_code.training.train",
                   inputs={"splits": splits_uri}, hyperparameters=hps,
                   output_uri=store.uri("models", f"jobs/train/{name}"))
    result = runner.run(spec, store)
    epochs = [m for m in result.metrics if "epoch" in m]
    with tarfile.open(file_uri_to_path(result.model_uri)) as tar:
        config = json.load(tar.extractfile("model_config.json"))
    return {"job_wall_s": round(result.wall_seconds, 1), "epochs": len(epochs),
            "train_images_per_s": round(statistics.median(m["train_images_per_second"] for m in epochs), 1),
            "best_val_balanced_accuracy": round(max(m["val_balanced_accuracy"] for m in epochs), 4),
            "small_input": bool(config.get("small_input"))}, result.model_uri


def evaluate(runner: LocalJobRunner, store: LocalObjectStore, splits_uri: str, name: str, model_uri: str) -> dict:
    """The evaluation job on the test split, as ``evaluation_report`` starts it: balanced accuracy, macro AUC, ECE."""
    spec = JobSpec(job_type="processing", name=f"evaluate-{name}", entry_point="ml_code.evaluation.evaluate",
                   inputs={"model": model_uri.rsplit("/", 1)[0], "splits": splits_uri}, outputs=["evaluation"],
                   output_uri=store.uri("models", f"jobs/evaluate/{name}"), hyperparameters={"n_bootstrap": 200})
    found = [m for m in runner.run(spec, store).metrics if "balanced_accuracy" in m][-1]
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
        store = LocalObjectStore(root=str(Path(tmp) / "store"))
        runner = LocalJobRunner(work_root=str(Path(tmp) / "jobs"))
        splits_uri = store.upload_dir("processed", "splits/benchmark", splits)
        for name in [r.strip() for r in args.recipes.split(",") if r.strip()]:
            hps: dict = {} if name == "default" else {"recipe": name}
            if args.quick:
                hps.update(epochs=1, descriptor_model=False)
            trained, model_uri = train(runner, store, splits_uri, name.replace("_", "-"), hps)
            row = {"recipe": name, **trained, **evaluate(runner, store, splits_uri, name.replace("_", "-"), model_uri)}
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
