"""What the synthetic demo's training recipe costs and gives: the job defaults against ``synthetic_demo``.

    .venv/bin/python benchmarks/demo_recipe.py [--splits DIR] [--recipes default,synthetic_demo] [--quick]
    .venv/bin/python benchmarks/demo_recipe.py --recipes 'synthetic_demo;synthetic_demo:epochs=14'

``make demo`` spends most of its time in ``trained_model``. On the synthetic demo set (64 px) the
asset trains the ``synthetic_demo`` recipe (``ml_code.training.options.RECIPES``): the job defaults
with resnet18's own 7x7/2 stem, where the defaults use the small-image 3x3/1 stem at <= 96 px. This
runs, back to back on the same splits (copied into a scratch local store), the training job
through the local backend's job runner (``dermaops_resources.jobs.LocalJobRunner``: a fresh
``python -m ml_code.training.train`` under the container contract, then the package written) once
per recipe (``default`` = no recipe, the job defaults), then the evaluation job on each package's
test split, and prints per recipe: the training job's wall seconds and its descriptor model's,
its epochs' median training images/second, the best validation balanced accuracy, and the test
balanced accuracy, macro AUC, ECE and log loss (the finest of them: on the easy demo set the others often sit at 1.000).

``--recipes``: names separated by ``;`` (or ``,``), each optionally followed by ``:`` and
``option=value`` overrides joined by ``,`` (values parsed as JSON, else kept as text), e.g.
``synthetic_demo:epochs=14,descriptor_trees=300`` to compare a recipe with a variant of itself.

``--splits``: a processed splits folder; default: the one ``make demo`` left
(``$DERMAOPS_HOME/store/processed/splits/latest/64px.json``, DERMAOPS_HOME defaulting to
``.dermaops``). ``--quick``: one epoch and no descriptor model unless a variant names them (a smoke run; its
figures mean nothing). Not part of ``make bench`` (no target of its own in issue 19; it explains P6's
``make demo`` figure). The demo's drawn lesions are easier than dermoscopy: both recipes reach
the same test figures there, which says nothing about real data (that trains ``ham10000``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
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
    """One training job as ``trained_model`` starts it: its wall seconds, the descriptor model's
    seconds (0 without one), epochs' median images/second, best val balanced accuracy and stem;
    and the package's URI."""
    spec = JobSpec(job_type="training", name=f"train-{name}", entry_point="ml_code.training.train",
                   inputs={"splits": splits_uri}, hyperparameters=hps,
                   output_uri=store.uri("models", f"jobs/train/{name}"))
    result = runner.run(spec, store)
    epochs = [m for m in result.metrics if "epoch" in m]
    descriptor_s = next((m["descriptor_seconds"] for m in result.metrics if "descriptor_seconds" in m), 0.0)
    with tarfile.open(file_uri_to_path(result.model_uri)) as tar:
        config = json.load(tar.extractfile("model_config.json"))
    return {"job_wall_s": round(result.wall_seconds, 1), "descriptor_s": round(float(descriptor_s), 1),
            "epochs": len(epochs),
            "train_images_per_s": round(statistics.median(m["train_images_per_second"] for m in epochs), 1),
            "best_val_balanced_accuracy": round(max(m["val_balanced_accuracy"] for m in epochs), 4),
            "small_input": bool(config.get("small_input"))}, result.model_uri


def evaluate(runner: LocalJobRunner, store: LocalObjectStore, splits_uri: str, name: str, model_uri: str) -> dict:
    """The evaluation job on the test split, as ``evaluation_report`` starts it: balanced accuracy,
    macro AUC, ECE and log loss (nats per image)."""
    spec = JobSpec(job_type="processing", name=f"evaluate-{name}", entry_point="ml_code.evaluation.evaluate",
                   inputs={"model": model_uri.rsplit("/", 1)[0], "splits": splits_uri}, outputs=["evaluation"],
                   output_uri=store.uri("models", f"jobs/evaluate/{name}"), hyperparameters={"n_bootstrap": 200})
    result = runner.run(spec, store)
    found = [m for m in result.metrics if "balanced_accuracy" in m][-1]
    report = json.loads((file_uri_to_path(result.output_uris["evaluation"]) / "evaluation.json").read_text())
    return {**{f"test_{k}": round(float(found[k]), 4) for k in ("balanced_accuracy", "macro_auc", "ece")},
            "test_log_loss": round(float(report["dermaops"]["log_loss"]), 4)}


def parse_variants(text: str) -> list[tuple[str, str, dict]]:
    """``--recipes`` -> [(label, recipe or 'default', overrides)]. Raises ValueError on an
    override without ``=``."""
    variants = []
    for item in (part.strip() for part in re.split(r";|,(?![^:;]*=)", text)):
        if not item:
            continue
        recipe, _, rest = item.partition(":")
        overrides: dict = {}
        for pair in filter(None, (p.strip() for p in rest.split(","))):
            key, eq, value = pair.partition("=")
            if not eq:
                raise ValueError(f"--recipes: override {pair!r} of {recipe!r} is not option=value")
            try:
                overrides[key.strip()] = json.loads(value)
            except json.JSONDecodeError:
                overrides[key.strip()] = value.strip()
        variants.append((item, recipe.strip(), overrides))
    return variants


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--splits", type=Path, default=None, help="processed splits folder (default: make demo's)")
    p.add_argument("--recipes", default="default,synthetic_demo",
                   help="recipe names separated by ';' (or ','), each with optional ':option=value,...' "
                   "overrides; 'default' is the job defaults")
    p.add_argument("--quick", action="store_true", help="one epoch, no descriptor model (smoke run)")
    args = p.parse_args(argv)
    try:
        variants = parse_variants(args.recipes)
    except ValueError as exc:
        p.error(str(exc))
    splits = args.splits or demo_splits()
    if splits is None:
        print("no splits: run `make demo` first or pass --splits DIR", file=sys.stderr)
        return 2
    rows = []
    with tempfile.TemporaryDirectory(prefix="demo-recipe-") as tmp:
        store = LocalObjectStore(root=str(Path(tmp) / "store"))
        runner = LocalJobRunner(work_root=str(Path(tmp) / "jobs"))
        splits_uri = store.upload_dir("processed", "splits/benchmark", splits)
        for i, (label, recipe, overrides) in enumerate(variants):
            hps: dict = {} if recipe == "default" else {"recipe": recipe}
            if args.quick:
                hps.update(epochs=1, descriptor_model=False)
            hps.update(overrides)  # a variant's own options win, --quick's too
            job = f"{i}-{recipe.replace('_', '-')}"
            trained, model_uri = train(runner, store, splits_uri, job, hps)
            row = {"recipe": label, **trained, **evaluate(runner, store, splits_uri, job, model_uri)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    width = max(16, *(len(r["recipe"]) for r in rows))
    print(f"\n{'recipe':{width}s} {'stem':>6s} {'epochs':>6s} {'job s':>7s} {'desc s':>6s} {'img/s':>7s} {'val BA':>7s} "
          f"{'test BA':>8s} {'test AUC':>9s} {'ECE':>7s} {'log loss':>9s}")
    for r in rows:
        print(f"{r['recipe']:{width}s} {'3x3/1' if r['small_input'] else '7x7/2':>6s} {r['epochs']:6d} "
              f"{r['job_wall_s']:7.1f} {r['descriptor_s']:6.1f} {r['train_images_per_s']:7.1f} {r['best_val_balanced_accuracy']:7.3f} "
              f"{r['test_balanced_accuracy']:8.3f} {r['test_macro_auc']:9.3f} {r['test_ece']:7.4f} "
              f"{r['test_log_loss']:9.4f}")
    if len(rows) >= 2:
        print(f"\nimages/second, {rows[-1]['recipe']} / {rows[0]['recipe']}: "
              f"{rows[-1]['train_images_per_s'] / rows[0]['train_images_per_s']:.2f}x; "
              f"job wall {rows[0]['job_wall_s'] / rows[-1]['job_wall_s']:.2f}x shorter")
    return 0


if __name__ == "__main__":
    sys.exit(main())
