#!/usr/bin/env bash
# Recipe sweep on a GPU machine: several ml_code.training.train configurations in parallel on one
# preprocess output folder (the `splits` of processed_splits), each evaluated on the test split.
#
#   bash benchmarks/gpu_recipe_sweep.sh SPLITS_DIR [EPOCHS] [OUT_DIR]
#
# Used to compare recipes quickly before spending 20 CPU minutes on one; each configuration is
# one benchmarks/recipe_runs.sh run (train, then evaluate), so each prints its line of test
# metrics as it ends. The pretrained EfficientNet-Lite runs are the real-data recipe at the
# networks' native sizes when SPLITS_DIR was made at 224-260 px (processed_splits image_size),
# which is what a SageMaker training job on ml.g5.xlarge runs.
set -u
SPLITS=${1:?usage: gpu_recipe_sweep.sh SPLITS_DIR [EPOCHS] [OUT_DIR]}
EPOCHS=${2:-30}
OUT=${3:-/tmp/dermaops-sweep}
HERE=$(cd "$(dirname "$0")" && pwd)
export PYTHON=${PYTHON:-python3}
run() {  # name, hyperparameters JSON
  bash "$HERE/recipe_runs.sh" "$SPLITS" "$OUT" "$1=$2" &
}
C="\"epochs\":$EPOCHS,\"batch_size\":64,\"amp\":true,\"deterministic\":false,\"num_workers\":2"
run resnet18 "{\"arch\":\"resnet18\",\"small_input\":false,$C}"
run resnet18-small-stem "{\"arch\":\"resnet18\",\"small_input\":true,$C}"
run resnet18-mixup-ema "{\"arch\":\"resnet18\",\"small_input\":false,\"mixup\":0.2,\"ema_decay\":0.998,\"balance_power\":0.75,$C}"
run resnet18-weighted-loss-onecycle "{\"arch\":\"resnet18\",\"small_input\":false,\"balance\":\"loss\",\"schedule\":\"onecycle\",$C}"
run ham10000-scratch-recipe "{\"recipe\":\"ham10000_scratch\",$C}"
run lite0-pretrained "{\"recipe\":\"ham10000\",$C}"
run lite2-pretrained "{\"recipe\":\"ham10000\",\"arch\":\"efficientnet_lite2\",$C}"
run dermanet "{\"arch\":\"dermanet\",$C}"
wait
