#!/usr/bin/env bash
# Recipe runs on this machine, one after another (each gets every core, as the 20-minute
# budget assumes), on one preprocess output folder (the `splits` of processed_splits):
#
#   bash benchmarks/recipe_runs.sh SPLITS_DIR OUT_DIR NAME='HPS_JSON' [NAME='HPS_JSON' ...]
#   e.g. bash benchmarks/recipe_runs.sh <home>/recipe/store/processed/splits/<hash>/splits /tmp/runs \
#          dermanet-seed7='{"recipe":"ham10000","seed":7}' d4-seed7='{"recipe":"ham10000","arch":"dermanet_d4","seed":7}'
#
# Each run is `python -m ml_code.training.train` then `python -m ml_code.evaluation.evaluate` (200 bootstrap
# resamples) under the SageMaker container contract, as the pipeline's jobs run them; prints
# one line per run with the test metrics of the served model and of its network alone, the
# training wall time and the epochs that fitted. Compares networks or seeds on the same split
# without re-ingesting; benchmarks/ham10000_quality.py is the whole pipeline, and
# benchmarks/gpu_recipe_sweep.sh runs several of these in parallel on a GPU machine.
set -u
SPLITS=${1:?usage: recipe_runs.sh SPLITS_DIR OUT_DIR NAME=HPS_JSON ...}
OUT=${2:?usage: recipe_runs.sh SPLITS_DIR OUT_DIR NAME=HPS_JSON ...}
shift 2
[ $# -gt 0 ] || { echo "name at least one run: NAME='{\"recipe\":\"ham10000\"}'" >&2; exit 2; }
[ -f "$SPLITS/train_pixels.json" ] || [ -f "$SPLITS/train_images.npy" ] || { echo "$SPLITS has no train split (train_pixels.json): pass the splits folder of processed_splits" >&2; exit 2; }
REPO=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$REPO/.venv/bin/python}
for spec in "$@"; do
  NAME=${spec%%=*}
  HPS=${spec#*=}
  D=$OUT/$NAME
  rm -rf "$D" && mkdir -p "$D/model" "$D/out" "$D/output" "$D/ckpt" "$D/modelin" "$D/eval"
  if ! PYTHONPATH=$REPO SM_CHANNEL_SPLITS=$SPLITS SM_MODEL_DIR=$D/model SM_OUTPUT_DATA_DIR=$D/out \
      SM_OUTPUT_DIR=$D/output SM_CHECKPOINT_DIR=$D/ckpt SM_HPS=$HPS "$PY" -m ml_code.training.train > "$D/train.log" 2>&1; then
    echo "$NAME: training failed, see $D/train.log and $D/output/failure" >&2; continue
  fi
  tar -czf "$D/modelin/model.tar.gz" -C "$D/model" .
  if ! PYTHONPATH=$REPO SM_PROCESSING_INPUT_MODEL=$D/modelin SM_PROCESSING_INPUT_SPLITS=$SPLITS \
      SM_PROCESSING_OUTPUT_EVALUATION=$D/eval SM_HPS='{"n_bootstrap":200}' "$PY" -m ml_code.evaluation.evaluate > "$D/eval.log" 2>&1; then
    echo "$NAME: evaluation failed, see $D/eval.log" >&2; continue
  fi
  "$PY" - "$NAME" "$D" <<'PY'
import json, sys
from pathlib import Path
name, d = sys.argv[1], Path(sys.argv[2])
report = json.loads((d / "eval" / "evaluation.json").read_text())["dermaops"]
head, net = report["headline"], report.get("network_only", {})
history = json.loads((d / "out" / "history.json").read_text())
print(f"{name}: test balanced_accuracy {head['balanced_accuracy']:.4f} "
      f"[{head['balanced_accuracy_ci_low']:.3f}, {head['balanced_accuracy_ci_high']:.3f}] "
      f"macro_auc {head['macro_auc']:.4f} [{head['macro_auc_ci_low']:.3f}, {head['macro_auc_ci_high']:.3f}]; "
      f"network alone {net.get('balanced_accuracy', float('nan')):.4f} / {net.get('macro_auc', float('nan')):.4f}; "
      f"training {history['train_seconds'] / 60:.1f} min, {history['epochs_run']} epochs; package {d}/modelin/model.tar.gz")
PY
done
