"""Training entry point: ``python -m ml_code.training.train`` (SageMaker training job, or the local runner).

Reads the ``splits`` channel written by ``ml_code.data.preprocess`` (uint8 ``(N, S, S, 3)``
arrays, memory-mapped), trains a lesion classifier and writes the SageMaker model
directory. Shaped like torchvision's ``references/classification/train.py``: :func:`train`
only orchestrates; the parts live in

- :mod:`ml_code.training.options` - every option (type, default, help, allowed values) and RECIPES;
- :mod:`ml_code.training.data` - augmentation, balanced samplers, the training loader;
- :mod:`ml_code.training.loop` - network/optimizer/EMA, ``train_one_epoch``, ``evaluate``, time-budget plan;
- :mod:`ml_code.training.checkpoints` - atomic per-epoch checkpoints and resume;
- :mod:`ml_code.training.fusion` - descriptor model and its stacker with the network;
- :mod:`ml_code.training.packaging` - temperature, model directory, history.json;
- :mod:`ml_code.training.ood` - the package's out-of-distribution statistics (Mahalanobis).

What this project needs on top of the reference: spot interruptions (a checkpoint per epoch,
resume from the newest), class imbalance (nv is ~67% of HAM10000), a wall-clock budget
(``max_minutes``) that shortens the LR schedule instead of cutting training off mid-anneal,
model selection by validation balanced accuracy (the ISIC metric), EMA, temperature scaling
over the test-time views the package serves. The resolved options are stored in every
checkpoint (``options``), in ``model_config.json`` (``training_options``) and in history.json.

Hyperparameters: SM_HPS / ``--key value``; ``--help`` prints the table
(:class:`ml_code.training.options.TrainOptions`); ``recipe=ham10000`` selects the tuned defaults.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import numpy as np
import torch

from ml_code import contract
from ml_code.data.split_reader import load_splits
from ml_code.training.checkpoints import resume, save_checkpoint
from ml_code.training.data import Normalizer, build_train_data, channel_stats
from ml_code.training.fusion import fit_descriptor_fusion, fit_descriptor_model
from ml_code.training.loop import (after_training_seconds, build_network, configure_threads, evaluate, follow_rank0,
                                  plan_after_epoch,
                                   seed_everything, setup_runtime, shutdown, train_one_epoch)
from ml_code.training.models import default_small_input, input_normalisation
from ml_code.training.ood import MAX_TRAIN_IMAGES, add_ood_stats
from ml_code.training.options import format_help, parse_options
from ml_code.training.packaging import calibrate, model_config, write_history, write_model_dir


def train(env: contract.TrainingEnv) -> dict[str, Any]:
    """Train, select the best epoch on validation, calibrate, package; returns the run summary
    (also written to ``history.json``). Resumes from ``env.checkpoint_dir`` when it holds a
    checkpoint of the same model."""
    opts = parse_options(env.hyperparameters)
    options = opts.model_dump()
    rt = setup_runtime(env)
    configure_threads(opts, rt)
    seed_everything(opts.seed + rt.rank, opts.deterministic)

    splits, classes = load_splits(env.channel("splits"))
    train_split, val_split = splits["train"], splits["val"]
    k, image_size = len(classes), int(train_split.images.shape[1])
    small_input = default_small_input(opts.arch, image_size) if opts.small_input is None else bool(opts.small_input)
    mean, std = input_normalisation(opts.arch, opts.weights_path) or channel_stats(train_split.images)
    log = (lambda *a: print(*a, flush=True)) if rt.is_main else (lambda *a: None)
    counts = np.bincount(train_split.labels, minlength=k)
    log(f"train {len(train_split.labels)} / val {len(val_split.labels)} images at {image_size}px; "
        f"class counts {dict(zip(classes, counts.tolist()))}; device {rt.device} x{rt.world}; "
        f"threads {torch.get_num_threads()}")

    net = build_network(opts, k, small_input, rt)
    data = build_train_data(opts, train_split, k, rt.device, rt.rank, rt.world)
    progress = resume(env.checkpoint_dir, net, opts, classes, image_size, mean, std, log)
    norm = Normalizer(progress.mean, progress.std, rt.device)
    steps_per_epoch = len(data.loader)
    warmup_steps = int(opts.warmup_epochs * steps_per_epoch)

    t_start, epoch_times, eval_times, epoch = time.time(), [], [], progress.start_epoch - 1
    # The descriptor model does not need the network: fitted first, its minutes count against the
    # budget before the epochs are planned (fitted after, it ran the job past max_minutes).
    descriptor_fit = fit_descriptor_model(opts, train_split, val_split, k, log) \
        if opts.descriptor_model and rt.is_main else None
    for epoch in range(progress.start_epoch, progress.planned_epochs + 1):
        t0 = time.time()
        timing: dict[str, float] = {}
        train_loss = train_one_epoch(net, data, norm, opts, epoch, progress.planned_epochs, warmup_steps, timing)
        t_eval = time.time()
        eval_model, val_metrics = evaluate(net, val_split, norm, opts)
        eval_times.append(time.time() - t_eval)
        record = {"epoch": epoch, "train_loss": train_loss, **val_metrics, "lr": net.optimizer.param_groups[0]["lr"],
                  # the input pipeline's share of training time, and throughput (benchmarks/training_throughput.py)
                  "data_wait_share": timing["data_wait_seconds"] / max(timing["seconds"], 1e-9),
                  "train_images_per_second": timing["images"] / max(timing["seconds"], 1e-9)}
        epoch_times.append(time.time() - t0)
        record["seconds"] = epoch_times[-1]
        progress.record_epoch(record, eval_model)
        if rt.is_main:
            contract.emit_metric(**record)
        progress.elapsed = progress.elapsed_before + (time.time() - t_start)
        reserve = after_training_seconds(float(np.median(eval_times)), len(val_split.labels), opts.tta_views,
                                         min(len(train_split.labels), MAX_TRAIN_IMAGES) + len(val_split.labels))
        stop = follow_rank0(progress, plan_after_epoch(progress, opts, epoch, epoch_times, log, reserve), rt)
        if rt.is_main:
            save_checkpoint(env.checkpoint_dir, epoch, net, progress, options, classes, image_size,
                            steps_per_epoch, warmup_steps)
        if stop:
            break

    if progress.best_state is None:
        raise RuntimeError("no epoch completed; nothing to save")
    temperature, val_logits = calibrate(net, progress.best_state, val_split, norm, opts)
    trees, fusion, descriptor_summary = None, None, None
    if descriptor_fit is not None:
        trees, fusion, descriptor_summary = fit_descriptor_fusion(opts, descriptor_fit, val_split, val_logits, k, log)
        contract.emit_metric(**{key: v for key, v in descriptor_summary.items() if isinstance(v, float)})
    elif opts.descriptor_model and rt.is_main:
        descriptor_summary = {"skipped": "class absent from train"}
    summary = {"best": progress.best, "temperature": temperature, "stop_reason": progress.stop_reason,
               "epochs_run": epoch, "train_seconds": progress.elapsed_before + (time.time() - t_start),
               "options": options, "descriptor_model": descriptor_summary}
    if rt.is_main:
        config = model_config(net, opts, progress, classes, image_size, temperature, fusion, options)
        write_model_dir(env.model_dir, progress.best_state, config, trees)
        summary["ood"] = add_ood_stats(env.model_dir, train_split, val_split, log)
        write_history(env.output_data_dir, progress.history, summary)
        log(f"done: best epoch {progress.best['epoch']} val balanced accuracy "
            f"{progress.best['val_balanced_accuracy']:.4f}; temperature {temperature:.3f}; stop: {progress.stop_reason}")
    shutdown(rt)
    return summary


def main() -> None:
    """``--help`` prints the options table; otherwise train in the SageMaker environment."""
    if "--help" in sys.argv[1:] or "-h" in sys.argv[1:]:
        print(format_help())
        return
    train(contract.training_env())


if __name__ == "__main__":
    contract.run_entry_point(main)
