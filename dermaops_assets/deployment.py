"""Deployment: the newest Approved package behind a live endpoint (1-5 instances on AWS,
one local server process here), health-checked before it counts as live."""


import dagster as dg

from dermaops_resources.endpoint import DeploymentFailed, EndpointDeployer
from dermaops_resources.handles import EndpointHandle, RegisteredPackageHandle
from dermaops_resources.metrics import MetricsPublisher
from dermaops_resources.notifier import Notifier
from dermaops_resources.object_store import ObjectStore
from dermaops_resources.registry import ModelRegistry
from dermaops_resources.settings import Settings

from .executor import USES_ALL_CORES


@dg.asset(
    group_name="deployment",
    op_tags=USES_ALL_CORES,  # starts a worker per core, each loading the package
    kinds={"sagemaker"},
    description="Serves the newest Approved model package: GET /ping, POST /invocations (image/jpeg, image/png, "
    "or application/json with the base64 image plus optional age, sex and anatom_site) with every request captured in SageMaker data-capture JSONL. Redeploys swap without failing requests; an "
    "unhealthy package is not swapped in.",
)
def live_endpoint(context: dg.AssetExecutionContext, registered_model_package: RegisteredPackageHandle,
                  registry: ModelRegistry, endpoint: EndpointDeployer, store: ObjectStore,
                  notifier: Notifier, metrics: MetricsPublisher) -> dg.Output[EndpointHandle]:
    group = Settings.from_env().model_package_group
    package = registry.latest(group, status="Approved")
    if package is None:
        raise dg.Failure(
            f"No Approved model package in {group}: nothing to deploy. Latest registration: "
            f"{registered_model_package.reason}. Approve one with `dermaops registry approve --version N` "
            "and materialize live_endpoint again (the approval sensor does this when running).")
    # The alarms must exist before the deploy: on AWS a blue/green update rolls back on the
    # endpoint-errors and latency alarms by name. Idempotent, so every deploy ensures them.
    alarm_names = metrics.ensure_alarms()
    context.log.info(f"alarms in place: {', '.join(alarm_names)}")
    try:
        handle = endpoint.deploy(package, store, on_log=context.log.info)
    except DeploymentFailed as exc:
        notifier.notify("DermaOps: deployment failed", f"Package {group} v{package.version} failed its health "
                        f"check and was not deployed; the previous model keeps serving. {exc}", severity="critical")
        raise dg.Failure(f"Deployment of {group} v{package.version} failed; previous model still serving: {exc}") from exc
    return dg.Output(handle, data_version=dg.DataVersion(f"{group}-v{package.version}"), metadata={
        "url": dg.MetadataValue.url(handle.url) if handle.url.startswith("http") else handle.url,
        "endpoint_name": handle.name,
        "package_version": package.version,
        "variant": handle.variant,
        "instances": f"{handle.min_instances}-{handle.max_instances}",
        "capture_uri": dg.MetadataValue.path(handle.capture_uri),
    })
