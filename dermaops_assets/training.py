"""Training: a torchvision lesion classifier trained as a (spot, checkpointed, mixed-precision)
training job. The asset records the experiment: hyperparameters, data and code version, curves."""


import hashlib
import io
import json
import time

import dagster as dg
from pydantic import Field

from dermaops_resources.handles import ProcessedSplitsHandle, TrainedModelHandle
from dermaops_resources.jobs import JobRunner, JobSpec
from dermaops_resources.object_store import ObjectStore, join_uri

from .ui import code_version, job_callbacks, png_markdown, table_markdown

TRAIN_CODE_VERSION = code_version("train", "models", "inference", "metrics")


class TrainConfig(dg.Config):
    arch: str = Field(default="resnet18", description="resnet18 | efficientnet_b0 | ... (ml_code/models.py)")
    epochs: int = 8
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    amp: bool = Field(default=True, description="bf16 autocast on CPU, fp16 + GradScaler on CUDA")
    seed: int = 0
    weights_path: str = Field(default="", description="local ImageNet state_dict; never downloaded")
    max_minutes: float = Field(default=0.0, description="training time budget; 0 = none")
    extra_hyperparameters: str = Field(default="{}", description="JSON object of further train.py options")
    gpu: bool = Field(default=True, description="on AWS: train on the configured GPU instance type")


def curves_png(history: list[dict]) -> bytes | None:
    """Loss and validation curves per epoch, for the run's record in the UI."""
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h.get("epoch") for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(7, 2.6), dpi=80)
    for key in ("train_loss", "val_loss"):
        if any(key in h for h in history):
            ax1.plot(epochs, [h.get(key) for h in history], marker="o", label=key)
    for key in ("val_balanced_accuracy", "val_macro_auc", "val_accuracy"):
        if any(key in h for h in history):
            ax2.plot(epochs, [h.get(key) for h in history], marker="o", label=key)
    for ax in (ax1, ax2):
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


@dg.asset(
    group_name="training",
    kinds={"pytorch", "sagemaker"},
    code_version=TRAIN_CODE_VERSION,
    description="Lesion classifier trained by ml_code/train.py as a training job (SageMaker contract: channels, "
    "SM_MODEL_DIR, SM_HPS; checkpoint every epoch and resume; class imbalance handled). Output: model.tar.gz "
    "(state_dict + code/inference.py) under a content-addressed key.",
)
def trained_model(context: dg.AssetExecutionContext, config: TrainConfig, processed_splits: ProcessedSplitsHandle,
                  store: ObjectStore, jobs: JobRunner) -> dg.Output[TrainedModelHandle]:
    hps = {"arch": config.arch, "epochs": config.epochs, "batch_size": config.batch_size, "lr": config.lr,
           "weight_decay": config.weight_decay, "label_smoothing": config.label_smoothing, "amp": config.amp,
           "seed": config.seed, "max_minutes": config.max_minutes, **json.loads(config.extra_hyperparameters)}
    if config.weights_path:
        hps["weights_path"] = config.weights_path
    # Checkpoints are keyed by inputs and by the root run, so a retried run (or a spot
    # interruption) resumes where it stopped, while a fresh run trains from the start.
    run_key = hashlib.sha256(json.dumps([processed_splits.content_hash, hps, TRAIN_CODE_VERSION,
                                         context.run.root_run_id or context.run_id], sort_keys=True,
                                        default=str).encode()).hexdigest()[:16]
    job_name = f"dermaops-train-{time.strftime('%Y%m%d-%H%M%S')}-{context.run_id[:8]}"
    on_log, on_metric, history = job_callbacks(context, "train")
    spec = JobSpec(job_type="training", name=job_name, entry_point="ml_code.train",
                   inputs={"splits": processed_splits.splits_uri}, hyperparameters=hps,
                   output_uri=store.uri("models", f"jobs/train/{job_name}"),
                   checkpoint_uri=store.uri("models", f"checkpoints/{run_key}"), gpu=config.gpu)
    result = jobs.run(spec, store, on_log=on_log, on_metric=on_metric)

    # Publish the artefact under its content hash: the handle's identity is the bytes.
    tar_bytes = store.get_bytes(result.model_uri)
    model_hash = hashlib.sha256(tar_bytes).hexdigest()
    model_uri = store.put_bytes("models", f"sha256/{model_hash}/model.tar.gz", tar_bytes)
    # history.json holds every epoch, also those run before a resume; the streamed lines are a fallback.
    history = _stored_history(store, result.output_uris.get("output")) or [h for h in history if "epoch" in h]
    handle = TrainedModelHandle(
        model_uri=model_uri, model_hash=model_hash, arch=config.arch, image_size=processed_splits.image_size,
        classes=processed_splits.classes, data_version=processed_splits.content_hash[:16],
        code_version=TRAIN_CODE_VERSION, history=history, hyperparameters=hps, job_name=job_name,
        training_seconds=result.wall_seconds,
    )
    best = max(history, key=lambda h: h.get("val_balanced_accuracy", -1.0), default={})
    metadata: dict = {
        "arch": config.arch,
        "epochs_run": len(history),
        "training_seconds": float(result.wall_seconds),
        "billable_seconds": float(result.billable_seconds),
        "estimated_cost_usd": float(result.estimated_cost_usd),
        "best_val_balanced_accuracy": float(best.get("val_balanced_accuracy", 0.0)),
        "hyperparameters": dg.MetadataValue.json(hps),
        "data_version": handle.data_version,
        "code_version": TRAIN_CODE_VERSION,
        "model_uri": dg.MetadataValue.path(model_uri),
        "model_hash": model_hash,
        "job_name": job_name,
    }
    if history:
        metadata["history"] = table_markdown(history)
        png = curves_png(history)
        if png:
            metadata["curves"] = png_markdown(png, "training curves")
    return dg.Output(handle, data_version=dg.DataVersion(model_hash[:16]), metadata=metadata)


def _stored_history(store: ObjectStore, output_uri: str | None) -> list[dict]:
    if not output_uri:
        return []
    try:
        stored = store.get_json(join_uri(output_uri, "history.json"))
    except FileNotFoundError:
        return []
    return list(stored["history"] if isinstance(stored, dict) else stored)
