"""Training: a torchvision lesion classifier trained as a (spot, checkpointed, mixed-precision)
training job. The asset records the experiment: hyperparameters, data and code version, curves."""


import hashlib
import json
import time

import dagster as dg
from pydantic import Field, create_model

from dermaops_resources.handles import ProcessedSplitsHandle, TrainedModelHandle
from dermaops_resources.jobs import JobRunner, JobSpec, read_training_record
from dermaops_resources.object_store import ObjectStore
from dermaops_resources.registry import ModelRegistry
from dermaops_resources.settings import Settings
from ml_code.evaluation.curves import curves_png
from ml_code.options import config_fields
from ml_code.training.options import RECIPES, TrainOptions, validate_options

from .executor import USES_ALL_CORES
from .jobs import FORCE_RETRAIN_TAG, NOTHING_NEW, RETRAIN_OUTCOME_TAG, RETRAIN_REASON_TAG
from .versioning import code_version
from .ui import job_callbacks, png_markdown, table_markdown

TRAIN_CODE_VERSION = code_version("ml_code.training.train")
REAL_DATA_RECIPE = "ham10000"
SYNTHETIC_DATA_RECIPE = "synthetic_demo"
EXTRA_HINT = "set each option as a field of trained_model's config instead, e.g. mixup: 0.2, tta_views: 8"


class TrainConfigBase(dg.Config):
    """Asset-only fields and the mapping to the job's hyperparameters; the option fields are
    added from :class:`ml_code.training.options.TrainOptions` by :data:`TrainConfig`."""

    recipe: str = Field(default="", description=f"named recipe in ml_code.training.options RECIPES "
                        f"({', '.join(sorted(RECIPES))}); unset: the deployment's DERMAOPS_TRAIN_RECIPE, else the "
                        "job defaults. Fields set here override the recipe")
    gpu: bool = Field(default=True, description="on AWS: train on the configured GPU instance type")
    extra_hyperparameters: str = Field(default="{}", description="DEPRECATED, must stay {}: every training option "
                                       "is a typed field of this config")

    def hyperparameters(self, real_data: bool = False) -> dict:
        """The job's SM_HPS: the options set in this config, plus the recipe. Unset options are
        left out, so the job applies the recipe's value or its own default. The recipe: the
        config's, else the deployment's (DERMAOPS_TRAIN_RECIPE), else the data's: for real data
        the real-data recipe (``ham10000``: the pretrained network), for the synthetic demo set
        ``synthetic_demo`` (the job's quick defaults with resnet18's own stem, 10 epochs, 100
        boosting rounds, the whole job within 75 s)."""
        if self.extra_hyperparameters.strip() not in ("", "{}"):
            raise dg.Failure(f"trained_model config extra_hyperparameters is no longer read "
                             f"({self.extra_hyperparameters[:80]!r}): {EXTRA_HINT}")
        hps = {name: getattr(self, name) for name in TrainOptions.model_fields
               if name != "recipe" and getattr(self, name) not in (None, "")}
        # Retrains started by sensors and schedules carry no run config: they follow the
        # deployment's recipe (DERMAOPS_TRAIN_RECIPE) instead of the job's plain defaults.
        hps["recipe"] = self.recipe or Settings.from_env().train_recipe or \
            (REAL_DATA_RECIPE if real_data else SYNTHETIC_DATA_RECIPE)
        return hps


# The launchpad config: one typed, optional field per TrainOptions option (None = the
# recipe's value or the job default), so names, types and help exist once, in ml_code;
# Dagster rejects an unknown field when the run is launched.
TrainConfig = create_model(
    "TrainConfig", __base__=TrainConfigBase, __module__=__name__,
    __doc__="Training options: every field of ml_code.training.options.TrainOptions, unset = recipe or job default.",
    **config_fields(TrainOptions, unset_default=True, skip=("recipe",)),
)


@dg.asset(
    group_name="training",
    op_tags=USES_ALL_CORES,  # the training job
    kinds={"pytorch", "sagemaker"},
    code_version=TRAIN_CODE_VERSION,
    description="Lesion classifier trained by ml_code.training.train as a training job (SageMaker contract: channels, "
    "SM_MODEL_DIR, SM_HPS; checkpoint every epoch and resume; class imbalance handled). Output: model.tar.gz "
    "(state_dict + code/inference.py) under a content-addressed key. In a retrain_job run (the 'Check Data' "
    "step of the architecture) it trains only when the splits differ from the serving model's data; otherwise "
    "the run ends here, tagged dermaops/retrain_outcome=nothing-new.",
    output_required=False,
)
def trained_model(context: dg.AssetExecutionContext, config: TrainConfig, processed_splits: ProcessedSplitsHandle,
                  store: ObjectStore, jobs: JobRunner, registry: ModelRegistry, settings: Settings):
    nothing_new = nothing_new_to_learn(context, processed_splits, registry, settings)
    if nothing_new:
        context.log.info(nothing_new)
        context.instance.add_run_tags(context.run_id, {RETRAIN_OUTCOME_TAG: NOTHING_NEW})
        return  # no output: evaluation, registration and the baseline are skipped
    hps = config.hyperparameters(real_data=processed_splits.real_data)
    try:  # values (ranges, choices, recipe name) are checked before a paid-for job starts
        validate_options(hps)
    except ValueError as exc:
        raise dg.Failure(f"trained_model config: {exc}") from exc
    # Checkpoints are keyed by inputs and by the root run, so a retried run (or a spot
    # interruption) resumes where it stopped, while a fresh run trains from the start.
    run_key = hashlib.sha256(json.dumps([processed_splits.content_hash, hps, TRAIN_CODE_VERSION,
                                         context.run.root_run_id or context.run_id], sort_keys=True,
                                        default=str).encode()).hexdigest()[:16]
    job_name = f"dermaops-train-{time.strftime('%Y%m%d-%H%M%S')}-{context.run_id[:8]}"
    on_log, on_metric, history = job_callbacks(context, "train")
    spec = JobSpec(job_type="training", name=job_name, entry_point="ml_code.training.train",
                   inputs={"splits": processed_splits.splits_uri}, hyperparameters=hps,
                   output_uri=store.uri("models", f"jobs/train/{job_name}"),
                   checkpoint_uri=store.uri("models", f"checkpoints/{run_key}"), gpu=config.gpu)
    result = jobs.run(spec, store, on_log=on_log, on_metric=on_metric)

    # Publish the artefact under its content hash: the handle's identity is the bytes.
    tar_bytes = store.get_bytes(result.model_uri)
    model_hash = hashlib.sha256(tar_bytes).hexdigest()
    model_uri = store.put_bytes("models", f"sha256/{model_hash}/model.tar.gz", tar_bytes)
    # history.json holds every epoch (also those before a resume) and the resolved configuration;
    # the streamed metric lines are a fallback.
    record = read_training_record(store, result.output_uris.get("output"))
    history = record.get("history") or [h for h in history if "epoch" in h]
    resolved = record.get("options") or record.get("config") or hps  # "config": records before options
    arch = str(resolved.get("arch") or "resnet18")
    handle = TrainedModelHandle(
        model_uri=model_uri, model_hash=model_hash, arch=arch, image_size=processed_splits.image_size,
        classes=processed_splits.classes, data_version=processed_splits.content_hash[:16],
        code_version=TRAIN_CODE_VERSION, history=history, hyperparameters=resolved, job_name=job_name,
        training_seconds=result.wall_seconds,
    )
    best = max(history, key=lambda h: h.get("val_balanced_accuracy", -1.0), default={})
    metadata: dict = {
        "arch": arch,
        "recipe": hps.get("recipe") or "default",  # also when DERMAOPS_TRAIN_RECIPE chose it
        "epochs_run": len(history),
        "training_seconds": float(result.wall_seconds),
        "billable_seconds": float(result.billable_seconds),
        "estimated_cost_usd": float(result.estimated_cost_usd),
        "best_val_balanced_accuracy": float(best.get("val_balanced_accuracy", 0.0)),
        "hyperparameters": dg.MetadataValue.json(resolved),
        "data_version": handle.data_version,
        "code_version": TRAIN_CODE_VERSION,
        "model_uri": dg.MetadataValue.path(model_uri),
        "model_hash": model_hash,
        "job_name": job_name,
    }
    descriptor = record.get("descriptor_model") or {}
    if descriptor.get("fusion"):
        # The served model is the network fused with the descriptor model (clinical context);
        # these are its validation figures, plotted across runs next to the network's own.
        for key in ("fused_val_balanced_accuracy", "fused_val_macro_auc", "fused_image_only_val_balanced_accuracy",
                    "fused_image_only_val_macro_auc", "descriptors_val_macro_auc"):
            if isinstance(descriptor.get(key), (int, float)):
                metadata[key] = float(descriptor[key])
        metadata["fusion"] = dg.MetadataValue.json(descriptor["fusion"])
    if history:
        metadata["history"] = table_markdown(history)
        png = curves_png(history)
        if png:
            metadata["curves"] = png_markdown(png, "training curves")
    yield dg.Output(handle, data_version=dg.DataVersion(model_hash[:16]), metadata=metadata)


def nothing_new_to_learn(context: dg.AssetExecutionContext, processed_splits: ProcessedSplitsHandle,
                         registry: ModelRegistry, settings: Settings) -> str | None:
    """Why a retrain_job run has nothing to train on, or None: the splits (new raw batches and
    labelled captures change them) are the ones the serving, Approved package was trained on.
    Runs not started as retrains (a user's materialization) and runs tagged
    ``dermaops/force_retrain=true`` (``dermaops retrain --force``) always train."""
    tags = context.run.tags
    if RETRAIN_REASON_TAG not in tags or tags.get(FORCE_RETRAIN_TAG, "").lower() == "true":
        return None
    serving = registry.latest(settings.model_package_group, status="Approved")
    if serving is None or serving.lineage.get("data_version") != processed_splits.content_hash[:16]:
        return None
    return (f"Nothing new to learn: the data ({processed_splits.content_hash[:16]}) is what the serving "
            f"v{serving.version} was trained on; no new landed batch or labelled capture since. Not training "
            f"(force with `dermaops retrain --force` or the tag {FORCE_RETRAIN_TAG}=true).")
