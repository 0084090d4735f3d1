"""Real-data quality benchmark: the whole pipeline on HAM10000, on this machine.

    .venv/bin/python benchmarks/ham10000_quality.py [--data ../shared/data/ham10000] [--image-size 64]
        [--minutes M] [--arch NAME] [--seed N] [--option KEY=VALUE ...] [--with-baseline]
        [--external-images DIR --external-labels CSV] [--home DIR]

Ingests the dataset, builds the lesion-grouped splits, trains with the DermaOps recipe
(`--recipe`, default the real-data recipe `ham10000` of ml_code/training/options.py) within the training-time budget, evaluates on the test split and prints
the metrics with bootstrap 95% intervals and the training wall time. `--with-baseline`
also trains the plain reference recipe (resnet18, 64 px, 14 epochs, class weights, label
smoothing, one-cycle) on the same split in the same run and prints the ratio of the two.
`--external-images/--external-labels` also score the trained model on an independent labelled
set (ISIC ground-truth CSV or HAM10000/ISIC metadata; see `ml_code/score.py`) and print its
metrics; the ISIC-format predictions land in `<home>/recipe/external/predictions.csv`.
`--arch` / `--seed` override the recipe's network and seed (e.g. `--arch dermanet_d4`), to
compare networks on the same split with everything else held. State goes to a temporary
DERMAOPS_HOME unless --home is given.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DEFAULT_DATA = REPO.parent / "shared" / "data" / "ham10000"

# The reference point: plain from-scratch resnet18, 14 epochs, flips/rotations,
# sqrt-inverse-frequency class weights, label smoothing, one-cycle schedule.
BASELINE: dict = {"arch": "resnet18", "epochs": 14, "label_smoothing": 0.1,
                  "balance": "loss", "balance_power": 0.5, "schedule": "onecycle", "small_input": False}
TARGETS = {"macro_auc": 0.96, "balanced_accuracy": 0.75}  # issue 18


def run_pipeline(home: Path, data: Path, image_size: int, train_config: dict, minutes: float | None) -> dict:
    dagster_home = home / "dagster_home"
    dagster_home.mkdir(parents=True, exist_ok=True)
    (dagster_home / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    cfg = {"ops": {
        "processed_splits": {"config": {"image_size": image_size}},
        "trained_model": {"config": {**train_config, **({} if minutes is None else {"max_minutes": minutes})}},
        "evaluation_report": {"config": {"n_bootstrap": 1000}},
    }}
    config_path = home / f"run-{int(time.time())}.yaml"
    config_path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "DERMAOPS_HOME": str(home), "DAGSTER_HOME": str(dagster_home),
           "DERMAOPS_RAW_URI": str(data), "DERMAOPS_BACKEND": "local"}
    started = time.time()
    cmd = [str(BIN / "dagster"), "asset", "materialize", "-m", "dermaops_assets", "--select",
           "raw_images,processed_splits,trained_model,evaluation_report", "-c", str(config_path)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-6000:])
        raise SystemExit(f"pipeline failed ({proc.returncode})")
    handle = json.loads((home / "store" / "models" / "handles" / "evaluation_report.json").read_text())["handle"]
    report_dir = Path(handle["report_uri"].removeprefix("file://"))
    report = json.loads((report_dir / "report.json").read_text())
    model = json.loads((home / "store" / "models" / "handles" / "trained_model.json").read_text())["handle"]
    return {"report": report, "training_seconds": model["training_seconds"], "pipeline_seconds": time.time() - started,
            "epochs_run": len(model["history"]), "model_path": Path(model["model_uri"].removeprefix("file://"))}


def score_external(model_path: Path, images: Path, labels: Path, out: Path) -> None:
    """The trained model on an independent labelled set (reported, not tuned for)."""
    sys.path.insert(0, str(REPO))
    from ml_code.evaluation.score import score

    result = score(model_path, images, out, labels)
    print(f"== external set {images} ({result['scored']} scored, {result['skipped']} skipped; "
          f"clinical context {'used' if result['clinical_context_used'] else 'not available'})")
    for key in ("balanced_accuracy", "macro_auc"):
        if key in result:
            low, high = result[f"{key}_ci"]
            print(f"{key:>22}: {result[key]:.4f}  95% CI [{low:.3f}, {high:.3f}]")
    print(f"{'predictions':>22}: {out / 'predictions.csv'} (ISIC format)")


def describe(name: str, result: dict) -> None:
    m, ci = result["report"]["headline"], result["report"].get("confidence_intervals", {})
    print(f"== {name}")
    for key in ("balanced_accuracy", "macro_auc", "accuracy", "macro_f1", "melanoma_sensitivity", "ece"):
        if key in m:
            interval = ci.get(key)
            extra = f"  95% CI [{interval['low']:.3f}, {interval['high']:.3f}]" if interval else ""
            target = f"  (target >= {TARGETS[key]:.2f}: {'met' if m[key] >= TARGETS[key] else 'NOT met'})" \
                if key in TARGETS else ""
            print(f"{key:>22}: {m[key]:.4f}{extra}{target}")
    fusion = result["report"].get("model", {}).get("fusion")
    if fusion:
        print(f"{'served model':>22}: network x{fusion['cnn_scale']:.2f} + descriptor model x{fusion['descriptor_scale']:.2f} "
              "(clinical context: age, sex, site)")
    for name, label in (("image_only", "without clinical context"), ("network_only", "network alone (ablation)")):
        part = result["report"].get(name)
        if part:
            print(f"{label:>26}: balanced_accuracy {part['balanced_accuracy']:.4f}, macro_auc {part['macro_auc']:.4f}")
    print(f"{'training wall time':>22}: {result['training_seconds'] / 60:.1f} min ({result['epochs_run']} epochs)")
    print(f"{'pipeline wall time':>22}: {result['pipeline_seconds'] / 60:.1f} min")
    print(f"{'model package':>22}: {result['model_path']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--recipe", default="ham10000", help="named recipe (ham10000: pretrained Lite0; "
                        "ham10000_scratch: the from-scratch DermaNet, with --image-size 64)")
    parser.add_argument("--minutes", type=float, default=None,
                        help="the training job's budget (default: the recipe's): the descriptor model, the epochs "
                             "and the calibration and OOD passes")
    parser.add_argument("--arch", help="network instead of the recipe's (see ml_code.training.models.ARCHS)")
    parser.add_argument("--seed", type=int, help="seed instead of the recipe's")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="any other training option over the recipe's (ml_code/training/options.py), "
                             "e.g. --option freeze_stages=3; repeatable")
    parser.add_argument("--home", type=Path, help="keep state here instead of a temporary folder")
    parser.add_argument("--with-baseline", action="store_true")
    parser.add_argument("--external-images", type=Path, help="an independent labelled test set's image folder")
    parser.add_argument("--external-labels", type=Path, help="its ISIC ground-truth CSV or metadata CSV")
    args = parser.parse_args()
    if bool(args.external_images) != bool(args.external_labels):
        parser.error("--external-images and --external-labels go together")
    if not (args.data / "HAM10000_metadata.csv").exists():
        print(f"HAM10000 not found at {args.data}; pass --data", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="dermaops-bench-") as tmp:
        home = args.home or Path(tmp)
        overrides = {k: v for k, v in (("arch", args.arch), ("seed", args.seed)) if v is not None}
        for item in args.option:
            key, sep, value = item.partition("=")
            if not sep:
                parser.error(f"--option {item!r}: expected KEY=VALUE")
            overrides[key] = yaml.safe_load(value)
        result = run_pipeline(home / "recipe", args.data, args.image_size, {"recipe": args.recipe, **overrides},
                              args.minutes)
        describe("DermaOps recipe" + "".join(f", {k} {v}" for k, v in overrides.items()), result)
        if args.external_images:
            score_external(result["model_path"], args.external_images, args.external_labels, home / "recipe" / "external")
        if args.with_baseline:
            base = run_pipeline(home / "baseline", args.data, 64, BASELINE, args.minutes or 15.0)
            describe("plain baseline", base)
            for key in ("balanced_accuracy", "macro_auc"):
                ratio = result["report"]["headline"][key] / base["report"]["headline"][key]
                print(f"ratio recipe/baseline {key}: {ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
