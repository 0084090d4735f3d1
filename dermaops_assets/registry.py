"""Conditional registration: the model enters the registry only if it clears the quality gates."""



import dagster as dg
from pydantic import Field

from dermaops_resources.handles import EvaluationHandle, RegisteredPackageHandle, TrainedModelHandle
from dermaops_resources.metrics import MetricsPublisher
from dermaops_resources.notifier import Notifier
from dermaops_resources.registry import ModelRegistry
from dermaops_resources.settings import Settings


def _auto_approve_default() -> bool:
    return Settings.from_env().auto_approve


class RegistrationConfig(dg.Config):
    """The registration gates. Comparisons with the Approved champion use both models' scores on
    the SAME test images (evaluation_report scores the champion through its own package)."""

    min_balanced_accuracy: float = Field(default=0.5, description="gate: test balanced accuracy at least this")
    min_melanoma_sensitivity: float = Field(default=0.5, description="gate: melanoma sensitivity on test at the "
                                            "package's operating point (chosen on validation) at least this")
    max_regression: float = Field(default=0.0, description="gate: balanced accuracy at most this much below the "
                                  "champion's on the same images")
    max_class_recall_drop_points: float = Field(default=10.0, description="gate: no class's recall more than this "
                                                "many points below the champion's on the same images")
    auto_approve: bool = Field(default_factory=_auto_approve_default,
                               description="register as Approved (demo); default PendingManualApproval")


def registration_gates(metrics: dict[str, float], config: RegistrationConfig,
                       champion: dict | None) -> list[str]:
    """Reasons the model must not be registered, one per failed gate (empty list = clears every gate).

    ``champion``: the comparison on the same test images (``EvaluationHandle.champion``), or None
    when there is no other Approved package (the first model is judged by the floors alone)."""
    failures = []
    ba = metrics.get("balanced_accuracy", 0.0)
    if ba < config.min_balanced_accuracy:
        failures.append(f"balanced accuracy {ba:.3f} is below the floor {config.min_balanced_accuracy:.3f}")
    mel = metrics.get("melanoma_sensitivity_at_operating_point")
    if mel is not None and mel < config.min_melanoma_sensitivity:
        failures.append(f"melanoma sensitivity {mel:.3f} at the operating point is below the floor "
                        f"{config.min_melanoma_sensitivity:.3f}")
    if champion:
        same = champion["balanced_accuracy"]
        if same["challenger"] < same["champion"] - config.max_regression:
            failures.append(
                f"balanced accuracy {same['challenger']:.3f} is below the Approved v{champion['version']}'s "
                f"{same['champion']:.3f} on the same {champion['n_images']} test images (difference "
                f"{same['difference']:+.3f}, 95% CI [{same['ci_low']:+.3f}, {same['ci_high']:+.3f}])")
        for cls, recall in champion["recall"].items():
            new, old = recall["challenger"], recall["champion"]
            if new is not None and old is not None and (old - new) * 100 > config.max_class_recall_drop_points:
                failures.append(f"{cls} recall {new:.3f} is {100 * (old - new):.1f} points below the Approved "
                                f"v{champion['version']}'s {old:.3f} (at most {config.max_class_recall_drop_points:g})")
    return failures


@dg.asset(
    group_name="registry",
    kinds={"sagemaker"},
    description="Registers the evaluated model as a new model package version (PendingManualApproval, or "
    "Approved when auto_approve) only if it clears the gates; otherwise says why and notifies the team.",
)
def registered_model_package(context: dg.AssetExecutionContext, config: RegistrationConfig,
                             trained_model: TrainedModelHandle, evaluation_report: EvaluationHandle,
                             registry: ModelRegistry, notifier: Notifier,
                             metrics: MetricsPublisher) -> dg.Output[RegisteredPackageHandle]:
    group = Settings.from_env().model_package_group
    approved = registry.latest(group, status="Approved")
    failures = registration_gates(evaluation_report.metrics, config, evaluation_report.champion)
    for name in ("balanced_accuracy", "accuracy", "macro_auc"):
        if name in evaluation_report.metrics:
            metrics.put(f"Evaluation_{name}", evaluation_report.metrics[name], dimensions={"ModelPackageGroup": group})
    if failures:
        reason = "; ".join(failures)
        context.log.warning(f"registration skipped: {reason}")
        notifier.notify("DermaOps: model not registered", f"Model {trained_model.model_hash[:12]} was not "
                        f"registered in {group}: {reason}.", severity="warning",
                        attributes={"model_hash": trained_model.model_hash[:12]})
        handle = RegisteredPackageHandle(registered=False, reason=reason, group=group,
                                         metrics=evaluation_report.metrics)
        return dg.Output(handle, metadata={"registered": False, "reason": reason, "failed_gates": len(failures)})
    status = "Approved" if config.auto_approve else "PendingManualApproval"
    package = registry.register(
        group=group, model_uri=trained_model.model_uri, model_hash=trained_model.model_hash,
        metrics=evaluation_report.metrics, evaluation_uri=evaluation_report.evaluation_uri,
        lineage={"data_version": trained_model.data_version, "code_version": trained_model.code_version,
                 "dagster_run_id": context.run_id, "training_job": trained_model.job_name},
        status=status,
    )
    reason = "cleared every gate" + (" (auto-approved)" if config.auto_approve else
                                     "; approve with `dermaops registry approve`")
    context.log.info(f"registered {group} v{package.version} as {package.status}")
    handle = RegisteredPackageHandle(registered=True, reason=reason, group=group, version=package.version,
                                     package_arn=package.arn, status=package.status, model_uri=package.model_uri,
                                     metrics=evaluation_report.metrics)
    return dg.Output(handle, metadata={
        "registered": True, "version": package.version, "status": package.status, "package_arn": package.arn,
        "balanced_accuracy": float(evaluation_report.metrics.get("balanced_accuracy", 0.0)),
        "previous_approved_version": approved.version if approved else 0,
        **_champion_metadata(evaluation_report.champion),
    })


def _champion_metadata(champion: dict | None) -> dict:
    """What the champion gate compared: both models' balanced accuracy on the same test images
    (empty for a first model)."""
    if not champion:
        return {}
    ba = champion["balanced_accuracy"]
    return {"champion_version": champion["version"], "champion_test_images": champion["n_images"],
            "champion_balanced_accuracy_same_images": float(ba["champion"]),
            "challenger_balanced_accuracy_same_images": float(ba["challenger"])}
