"""CloudWatch alarms/metrics and SNS notifications against moto."""

from __future__ import annotations

import json
import uuid

import boto3
import pytest

from dermaops_resources.aws.cloudwatch import CloudWatchMetrics, SnsNotifier
from dermaops_resources.metrics import ALARMS

from .conftest import REGION

pytestmark = pytest.mark.aws


@pytest.fixture()
def topic_and_queue(moto_server):
    """An SNS topic with an SQS subscriber, so a test can read what was really delivered."""
    sns, sqs = boto3.client("sns"), boto3.client("sqs")
    topic = sns.create_topic(Name=f"dermaops-alerts-{uuid.uuid4().hex[:6]}")["TopicArn"]
    queue_url = sqs.create_queue(QueueName=f"alerts-{uuid.uuid4().hex[:6]}")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)
    return topic, queue_url


def test_ensure_alarms_creates_all_five_idempotently(topic_and_queue):
    topic, _ = topic_and_queue
    metrics = CloudWatchMetrics(region=REGION, alarm_topic_arn=topic)
    names = metrics.ensure_alarms()
    assert names == [a.name for a in ALARMS]
    assert metrics.ensure_alarms() == names  # second call: same alarms, no error, no duplicates
    alarms = {a["AlarmName"]: a for a in boto3.client("cloudwatch").describe_alarms(
        AlarmNames=names)["MetricAlarms"]}
    assert set(alarms) == set(names)
    for spec in ALARMS:
        alarm = alarms[spec.name]
        if spec.aws_metric:  # the endpoint's own metrics, for this endpoint and variant
            assert alarm["Namespace"] == "AWS/SageMaker" and alarm["MetricName"] == spec.aws_metric
            assert {d["Name"]: d["Value"] for d in alarm["Dimensions"]} == {
                "EndpointName": "dermaops-lesion-endpoint", "VariantName": "AllTraffic"}
            assert alarm["Threshold"] == spec.threshold * spec.aws_threshold_scale
        else:
            assert alarm["Namespace"] == "DermaOps" and alarm["MetricName"] == spec.metric
            assert alarm["Threshold"] == spec.threshold
        assert alarm["ComparisonOperator"] == spec.comparison
        assert alarm["Period"] == spec.period_seconds and alarm["AlarmActions"] == [topic]
        assert spec.severity in alarm["AlarmDescription"]
    assert alarms["dermaops-latency-p95"]["ExtendedStatistic"] == "p95"
    assert "Statistic" not in alarms["dermaops-latency-p95"]
    assert alarms["dermaops-endpoint-errors"]["Statistic"] == "Sum"
    assert set(metrics.alarm_states().values()) <= {"INSUFFICIENT_DATA", "OK", "ALARM"}


def test_put_publishes_plain_and_dimensioned_datum(moto_server):
    metrics = CloudWatchMetrics(region=REGION)
    metrics.put("DriftDetected", 1, dimensions={"Endpoint": "dermaops-lesion-endpoint"})
    listed = boto3.client("cloudwatch").list_metrics(Namespace="DermaOps", MetricName="DriftDetected")["Metrics"]
    dims = sorted(json.dumps(m.get("Dimensions", [])) for m in listed)
    assert dims == ["[]",
                    '[{"Name": "Endpoint", "Value": "dermaops-lesion-endpoint"}]']


def test_sns_notifier_publishes_with_severity_and_short_subject(topic_and_queue):
    topic, queue_url = topic_and_queue
    notifier = SnsNotifier(region=REGION, topic_arn=topic)
    long_subject = "Registration skipped: balanced accuracy 0.61 below the 0.70 gate\n" + "x" * 200
    message_id = notifier.notify(long_subject, "Model v7 not registered (gate 0.70).", severity="warning",
                                 attributes={"asset": "registered_model_package"})
    msgs = boto3.client("sqs").receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10)["Messages"]
    (body,) = [json.loads(m["Body"]) for m in msgs]
    assert body["MessageId"] == message_id
    assert body["Message"] == "Model v7 not registered (gate 0.70)."
    assert len(body["Subject"]) <= 100 and body["Subject"].startswith("[WARNING] Registration skipped")
    assert "\n" not in body["Subject"]
    assert body["MessageAttributes"]["severity"]["Value"] == "warning"
    assert body["MessageAttributes"]["asset"]["Value"] == "registered_model_package"
    with pytest.raises(ValueError, match="severity"):
        notifier.notify("s", "m", severity="panic")


def test_sns_notifier_creates_topic_by_name(moto_server):
    name = f"dermaops-alerts-{uuid.uuid4().hex[:6]}"
    notifier = SnsNotifier(region=REGION, topic_name=name)
    notifier.notify("Retraining started", "drift on 3 features", severity="info")
    assert notifier.resolved_topic_arn().endswith(f":{name}")
    arns = [t["TopicArn"] for t in boto3.client("sns").list_topics()["Topics"]]
    assert notifier.resolved_topic_arn() in arns


def test_every_alarm_watches_a_metric_that_is_emitted(topic_and_queue):
    """Each CloudWatch alarm names a metric SageMaker publishes for the endpoint, or one a DermaOps
    asset publishes (PUBLISHED_BY; the asset tests find each one in the metrics store). An alarm on
    a metric nobody emits can never fire: TreatMissingData=notBreaching keeps it OK forever."""
    from dermaops_resources.metrics import PUBLISHED_BY, SAGEMAKER_ENDPOINT_METRICS

    topic, _ = topic_and_queue
    CloudWatchMetrics(region=REGION, alarm_topic_arn=topic).ensure_alarms()
    alarms = boto3.client("cloudwatch").describe_alarms(AlarmNames=[a.name for a in ALARMS])["MetricAlarms"]
    assert len(alarms) == len(ALARMS)
    for alarm in alarms:
        if alarm["Namespace"] == "AWS/SageMaker":
            assert alarm["MetricName"] in SAGEMAKER_ENDPOINT_METRICS, alarm["AlarmName"]
        else:
            assert alarm["MetricName"] in PUBLISHED_BY, f"nothing publishes {alarm['MetricName']} ({alarm['AlarmName']})"
    latency = next(a for a in alarms if a["AlarmName"] == "dermaops-latency-p95")
    assert latency["MetricName"] == "ModelLatency" and latency["Threshold"] == 1_000_000  # microseconds
