"""What running DermaOps costs a month on AWS, from what the platform itself knows.

The architecture document's cost metrics (training cost per run, inference cost per 1,000
requests, storage, total monthly cost with a $500 warning) need no billing API: the endpoint's
instance-hours, the jobs' billable seconds and the stored bytes, each times its list price.
On the local backend the same figures say what this workload would cost on AWS with the
configured instance types; on AWS they are an estimate to check against Cost Explorer.

Prices: us-east-1 on-demand list prices in USD (SageMaker real-time inference and training /
processing instance-hours, S3 Standard storage), from the AWS price pages as of 2026; override
per deployment by passing ``prices``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass

#: USD per instance-hour, SageMaker (training, processing and hosting share these list prices
#: for the instance families DermaOps uses).
INSTANCE_PRICES: dict[str, float] = {
    "ml.g5.xlarge": 1.408, "ml.g5.2xlarge": 1.515, "ml.g5.4xlarge": 2.03, "ml.g4dn.xlarge": 0.736,
    "ml.g4dn.2xlarge": 0.94, "ml.p3.2xlarge": 3.825, "ml.m5.large": 0.115, "ml.m5.xlarge": 0.23,
    "ml.m5.2xlarge": 0.461, "ml.m5.4xlarge": 0.922, "ml.c5.xlarge": 0.204, "ml.c5.2xlarge": 0.408,
}
S3_STANDARD_USD_PER_GB_MONTH = 0.023
HOURS_PER_MONTH = 730.0  # AWS's own monthly convention (8,760 h / 12)


@dataclass(frozen=True)
class JobCost:
    """One training or processing job: billable seconds x instances is what AWS bills."""

    kind: str  # "training" | "processing"
    billable_seconds: float
    instance_type: str


@dataclass(frozen=True)
class MonthlyCost:
    """USD per month, broken down, and the two unit costs of the architecture document."""

    endpoint_usd: float
    training_usd: float
    processing_usd: float
    storage_usd: float
    total_usd: float
    training_runs: int
    training_usd_per_run: float
    requests_per_month: float
    inference_usd_per_1000_requests: float

    def as_dict(self) -> dict[str, float]:
        return {k: round(float(v), 6) for k, v in asdict(self).items()}


def price(instance_type: str, prices: Mapping[str, float] = INSTANCE_PRICES) -> float:
    """USD per hour of ``instance_type``; ValueError naming the table to extend when unknown."""
    if instance_type not in prices:
        raise ValueError(f"no list price for {instance_type!r}; add it to dermaops_resources/cost.py "
                         "INSTANCE_PRICES (USD per instance-hour)")
    return float(prices[instance_type])


def monthly_cost(*, endpoint_instance_type: str, endpoint_instances: int, jobs_last_30_days: Iterable[JobCost],
                 stored_bytes: int, requests_per_month: float,
                 prices: Mapping[str, float] = INSTANCE_PRICES) -> MonthlyCost:
    """The month's cost: endpoint instances around the clock, the last 30 days of jobs (a month
    of retraining at the current pace), storage at S3 Standard. Unit costs: inference per 1,000
    requests = endpoint cost / requests x 1000 (NaN-free: 0 requests gives the whole cost per
    1,000, what an idle endpoint costs), training per run = training cost / runs."""
    jobs = list(jobs_last_30_days)
    endpoint = endpoint_instances * HOURS_PER_MONTH * price(endpoint_instance_type, prices)
    by_kind = {"training": 0.0, "processing": 0.0}
    for job in jobs:
        by_kind[job.kind] = by_kind.get(job.kind, 0.0) + job.billable_seconds / 3600.0 * price(job.instance_type, prices)
    storage = stored_bytes / 1e9 * S3_STANDARD_USD_PER_GB_MONTH
    runs = sum(1 for j in jobs if j.kind == "training")
    total = endpoint + by_kind["training"] + by_kind["processing"] + storage
    return MonthlyCost(
        endpoint_usd=endpoint, training_usd=by_kind["training"], processing_usd=by_kind["processing"],
        storage_usd=storage, total_usd=total, training_runs=runs,
        training_usd_per_run=by_kind["training"] / runs if runs else 0.0, requests_per_month=requests_per_month,
        inference_usd_per_1000_requests=endpoint / max(requests_per_month, 1.0) * 1000.0)
