"""CloudWatch metrics + alarms and SNS notifications: the AWS side of monitoring and alerting.

Alarms are created by the application (``ensure_alarms``), not by Terraform, so the
thresholds live in one place (``dermaops_resources.metrics.ALARMS``) for both backends.
Every datum is published without dimensions (what the alarms watch) and, when the caller
gives dimensions, once more with them (for dashboards that split by endpoint/model).
"""

from __future__ import annotations

import logging
import re
from typing import Any

from pydantic import Field, PrivateAttr

from ..metrics import ALARMS, NAMESPACE, MetricsPublisher
from ..notifier import Notifier, Severity
from . import aws_client

log = logging.getLogger("dermaops.aws.cloudwatch")
SUBJECT_MAX = 100
SAGEMAKER_NAMESPACE = "AWS/SageMaker"
MESSAGE_MAX = 250_000  # SNS allows 256 KB; keep headroom for attributes


def _resolve_topic(client: Any, topic_arn: str, topic_name: str) -> str:
    if topic_arn:
        return topic_arn
    if not topic_name:
        raise ValueError("No SNS topic: set DERMAOPS_SNS_TOPIC_ARN (terraform output sns_topic_arn) or a topic name.")
    return client.create_topic(Name=topic_name)["TopicArn"]  # idempotent: returns the existing ARN


class CloudWatchMetrics(MetricsPublisher):
    """``put`` -> PutMetricData in namespace DermaOps; ``ensure_alarms`` -> the five ALARMS.

    The endpoint's error and latency alarms watch SageMaker's own ``Invocation5XXErrors`` and
    ``ModelLatency`` for this endpoint and variant; the others watch what the monitoring assets
    publish here. The blue/green deployment's auto-rollback names the first two."""

    region: str = "us-east-1"
    endpoint_url: str | None = None
    namespace: str = NAMESPACE
    alarm_topic_arn: str = Field(default="", description="SNS topic for alarm actions")
    alarm_topic_name: str = Field(default="", description="used (create_topic) when no ARN is given")
    endpoint_name: str = Field(default="dermaops-lesion-endpoint",
                               description="the endpoint whose AWS/SageMaker metrics the endpoint alarms watch")
    variant_name: str = "AllTraffic"
    max_attempts: int = 10

    _clients: dict = PrivateAttr(default_factory=dict)

    def client(self, service: str = "cloudwatch") -> Any:
        if service not in self._clients:
            self._clients[service] = aws_client(service, self.region, self.endpoint_url, self.max_attempts)
        return self._clients[service]

    def put(self, name: str, value: float, unit: str = "None", dimensions: dict[str, str] | None = None) -> None:
        datum: dict[str, Any] = {"MetricName": name, "Value": float(value), "Unit": unit}
        data = [datum]
        if dimensions:
            data.append({**datum, "Dimensions": [{"Name": k, "Value": str(v)} for k, v in sorted(dimensions.items())]})
        self.client().put_metric_data(Namespace=self.namespace, MetricData=data)

    def _alarm_actions(self) -> list[str]:
        if not (self.alarm_topic_arn or self.alarm_topic_name):
            return []
        return [_resolve_topic(self.client("sns"), self.alarm_topic_arn, self.alarm_topic_name)]

    def ensure_alarms(self) -> list[str]:
        """PutMetricAlarm overwrites an alarm of the same name, so calling this again is harmless."""
        actions = self._alarm_actions()
        for spec in ALARMS:
            kwargs: dict[str, Any] = {
                "AlarmName": spec.name,
                "AlarmDescription": f"[{spec.severity}] {spec.description}",
                "Namespace": self.namespace,
                "MetricName": spec.metric,
                "Period": spec.period_seconds,
                "EvaluationPeriods": 1,
                "DatapointsToAlarm": 1,
                "Threshold": float(spec.threshold),
                "ComparisonOperator": spec.comparison,
                "TreatMissingData": "notBreaching",
                "ActionsEnabled": bool(actions),
                "AlarmActions": actions,
                "OKActions": actions,
            }
            if spec.aws_metric:  # SageMaker publishes it: nothing of ours has to run for the alarm to fire
                kwargs.update(Namespace=SAGEMAKER_NAMESPACE, MetricName=spec.aws_metric,
                              Threshold=float(spec.threshold) * spec.aws_threshold_scale,
                              Dimensions=[{"Name": "EndpointName", "Value": self.endpoint_name},
                                          {"Name": "VariantName", "Value": self.variant_name}])
            if spec.statistic.startswith("p"):
                kwargs["ExtendedStatistic"] = spec.statistic
            else:
                kwargs["Statistic"] = spec.statistic
            self.client().put_metric_alarm(**kwargs)
        return [spec.name for spec in ALARMS]

    def alarm_states(self) -> dict[str, str]:
        resp = self.client().describe_alarms(AlarmNames=[spec.name for spec in ALARMS])
        return {a["AlarmName"]: a["StateValue"] for a in resp.get("MetricAlarms", [])}


def _clean_subject(subject: str, severity: str) -> str:
    """SNS subjects: ASCII, no control characters, at most 100 characters."""
    text = f"[{severity.upper()}] {subject}"
    text = re.sub(r"[\x00-\x1f\x7f]+", " ", text).encode("ascii", "replace").decode()
    return text if len(text) <= SUBJECT_MAX else text[: SUBJECT_MAX - 3] + "..."


class SnsNotifier(Notifier):
    """Publishes each notification to one SNS topic, with the severity as a message attribute
    (subscribers filter on it, e.g. page on ``critical`` only)."""

    region: str = "us-east-1"
    endpoint_url: str | None = None
    topic_arn: str = ""
    topic_name: str = "dermaops-alerts"
    max_attempts: int = 10

    _sns: Any = PrivateAttr(default=None)
    _arn: str = PrivateAttr(default="")

    @property
    def client(self) -> Any:
        if self._sns is None:
            self._sns = aws_client("sns", self.region, self.endpoint_url, self.max_attempts)
        return self._sns

    def resolved_topic_arn(self) -> str:
        if not self._arn:
            self._arn = _resolve_topic(self.client, self.topic_arn, self.topic_name)
        return self._arn

    def notify(self, subject: str, message: str, severity: Severity = "info",
               attributes: dict[str, str] | None = None) -> str:
        if severity not in ("info", "warning", "critical"):
            raise ValueError(f"severity {severity!r} must be one of info, warning, critical.")
        attrs = {"severity": {"DataType": "String", "StringValue": severity}}
        for key, value in (attributes or {}).items():
            if len(attrs) >= 10:  # SNS limit
                break
            attrs[str(key)[:256]] = {"DataType": "String", "StringValue": str(value) or "-"}
        body = message if len(message) <= MESSAGE_MAX else message[:MESSAGE_MAX] + "\n[truncated]"
        log.log(logging.CRITICAL if severity == "critical" else logging.WARNING if severity == "warning"
                else logging.INFO, "[%s] %s", severity.upper(), subject)
        resp = self.client.publish(TopicArn=self.resolved_topic_arn(), Subject=_clean_subject(subject, severity),
                                   Message=body, MessageAttributes=attrs)
        return resp["MessageId"]
