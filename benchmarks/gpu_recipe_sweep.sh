#!/usr/bin/env bash
# Recipe sweep on a GPU machine: several ml_code.train configurations in parallel on one
# preprocess output folder (the `splits` of processed_splits), each evaluated on the test split.
#
#   bash benchmarks/gpu_recipe_sweep.sh SPLITS_DIR [EPOCHS] [OUT_DIR]
#
# Used to compare recipes quickly before spending 20 CPU minutes on one; prints one line per
# configuration with test balanced accuracy and macro AUC.
set -u
SPLITS=${1:?usage: gpu_recipe_sweep.sh SPLITS_DIR [EPOCHS] [OUT_DIR]}
EPOCHS=${2:-30}
OUT=${3:-/tmp/dermaops-sweep}
REPO=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
run() {  # name, hyperparameters JSON
  local D=$OUT/$1
  mkdir -p "$D/model" "$D/out" "$D/output" "$D/ckpt" "$D/modelin" "$D/eval"
  (
    export PYTHONPATH=$REPO SM_CHANNEL_SPLITS=$SPLITS SM_MODEL_DIR=$D/model SM_OUTPUT_DATA_DIR=$D/out \
      SM_OUTPUT_DIR=$D/output SM_CHECKPOINT_DIR=$D/ckpt SM_HPS="$2"
    $PY -m ml_code.train > "$D/train.log" 2>&1
    tar -czf "$D/modelin/model.tar.gz" -C "$D/model" .
    SM_PROCESSING_INPUT_MODEL=$D/modelin SM_PROCESSING_INPUT_SPLITS=$SPLITS SM_PROCESSING_OUTPUT_EVALUATION=$D/eval \
      SM_HPS='{"bootstrap_samples":100}' $PY -m ml_code.evaluate > "$D/eval.log" 2>&1
    echo "$1: $(tail -1 "$D/eval.log" | grep -o '"balanced_accuracy": [0-9.]*\|"macro_auc": [0-9.]*' | tr '\n' ' ')"
  ) &
}
C="\"epochs\":$EPOCHS,\"batch_size\":64,\"amp\":true,\"deterministic\":false,\"num_workers\":2"
run resnet18 "{\"arch\":\"resnet18\",\"small_input\":false,$C}"
run resnet18-small-stem "{\"arch\":\"resnet18\",\"small_input\":true,$C}"
run resnet18-mixup-ema "{\"arch\":\"resnet18\",\"small_input\":false,\"mixup\":0.2,\"ema_decay\":0.998,\"balance_power\":0.75,$C}"
run resnet18-weighted-loss-onecycle "{\"arch\":\"resnet18\",\"small_input\":false,\"balance\":\"loss\",\"schedule\":\"onecycle\",$C}"
run ham10000-recipe "{\"recipe\":\"ham10000\",$C,\"max_minutes\":0}"
run dermanet "{\"arch\":\"dermanet\",$C}"
wait
