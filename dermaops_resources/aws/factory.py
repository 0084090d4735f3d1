"""AWS resources for ``DERMAOPS_BACKEND=aws``: the same keys as the local factory.

Required settings fail here, at definition load, with the variable to set, rather than
deep inside a run: the KMS key (every object is SSE-KMS) and the SageMaker role.
"""

from __future__ import annotations

import dagster as dg

from ..settings import Settings
from .cloudwatch import CloudWatchMetrics, SnsNotifier
from .endpoint import SageMakerEndpointDeployer
from .registry import SageMakerModelRegistry
from .s3 import S3ObjectStore
from .sagemaker_jobs import SageMakerJobRunner

ALERTS_TOPIC_NAME = "dermaops-alerts"  # infra/main.tf creates the topic under this name


def build_aws_resources(settings: Settings) -> dict[str, dg.ConfigurableResource]:
    missing = [var for var, value in (("DERMAOPS_KMS_KEY_ID", settings.kms_key_id),
                                      ("DERMAOPS_SAGEMAKER_ROLE_ARN", settings.role_arn)) if not value]
    if missing:
        raise ValueError(f"DERMAOPS_BACKEND=aws needs {', '.join(missing)}; take the values from "
                         "`terraform -chdir=infra output` (see infra/README.md).")
    region = settings.region
    subnets, groups = settings.id_list(settings.vpc_subnets), settings.id_list(settings.vpc_security_groups)
    job_image = {"image_uri": settings.job_image_uri, "container_requirements": []} if settings.job_image_uri else {}
    return {
        "store": S3ObjectStore(buckets=dict(settings.buckets), region=region, kms_key_id=settings.kms_key_id),
        "jobs": SageMakerJobRunner(
            role_arn=settings.role_arn, region=region,
            training_instance_type=settings.training_instance_type,
            processing_instance_type=settings.processing_instance_type,
            volume_kms_key_id=settings.kms_key_id, output_kms_key_id=settings.kms_key_id,
            use_spot=settings.use_spot, subnets=subnets, security_group_ids=groups,
            network_isolation=settings.network_isolation, **job_image,
        ),
        "registry": SageMakerModelRegistry(region=region),
        "endpoint": SageMakerEndpointDeployer(
            endpoint_name=settings.endpoint_name, role_arn=settings.endpoint_role_arn or settings.role_arn,
            region=region, instance_type=settings.endpoint_instance_type, kms_key_id=settings.kms_key_id,
            subnets=subnets, security_group_ids=groups, network_isolation=settings.network_isolation,
            inference_image_uri=settings.inference_image_uri),
        "notifier": SnsNotifier(region=region, topic_arn=settings.sns_topic_arn, topic_name=ALERTS_TOPIC_NAME),
        "metrics": CloudWatchMetrics(region=region, alarm_topic_arn=settings.sns_topic_arn,
                                     endpoint_name=settings.endpoint_name,
                                     alarm_topic_name=ALERTS_TOPIC_NAME),
    }
