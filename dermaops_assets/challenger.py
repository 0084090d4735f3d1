"""``challenger_report``: champion vs challenger on live traffic (issue 21), in the monitoring stage.

The body reads the captured answers of every variant (``dermaops_services.challenger``) and
the labels that have arrived (``dermaops_services.monitoring.read_labels``), compares them
(``ml_code.monitoring.challenger``) and publishes the report; promoting stays a human's
decision (``dermaops endpoint promote``)."""


from datetime import datetime, timezone

import dagster as dg

from dermaops_resources.endpoint import EndpointDeployer
from dermaops_resources.handles import EndpointHandle
from dermaops_resources.object_store import ObjectStore
from dermaops_resources.settings import Settings
from dermaops_services.challenger import read_variant_rows
from dermaops_services.monitoring import read_labels
from ml_code.monitoring.challenger import compare_variants, report_markdown


class ChallengerConfig(dg.Config):
    window_hours: float = 24.0 * 14
    min_labelled: int = 30
    n_resamples: int = 1000


@dg.asset(group_name="monitoring", kinds={"python"}, deps=["inference_log"],
          description="Champion vs challenger on live traffic: prediction agreement, per-variant latency, "
          "balanced accuracy and melanoma sensitivity on labelled requests with bootstrap intervals of the "
          "difference; recommends promote / keep / not enough data.")
def challenger_report(context: dg.AssetExecutionContext, config: ChallengerConfig, live_endpoint: EndpointHandle,
                      endpoint: EndpointDeployer, store: ObjectStore) -> dg.MaterializeResult:
    served = (endpoint.status() or {}).get("challenger") or {}
    shadow = frozenset([served["variant"]]) if served.get("shadow") and served.get("variant") else frozenset()
    rows = read_variant_rows(store, live_endpoint.capture_uri, live_endpoint.name, config.window_hours, shadow)
    labels = read_labels(store, Settings.from_env().labels_uri)
    report = compare_variants(rows, labels, min_labelled=config.min_labelled, n_resamples=config.n_resamples)
    report["challenger_served"] = served or None
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    uri = store.put_json("logs", f"monitoring/challenger/{stamp}/report.json", report)
    context.log.info(f"challenger report: {report['recommendation']} ({report['reason']})")
    bacc = ((report.get("quality") or {}).get("balanced_accuracy") or {}).get("difference")
    return dg.MaterializeResult(metadata={
        "recommendation": report["recommendation"], "mode": report["mode"], "report_uri": uri, "answers": len(rows),
        "balanced_accuracy_difference": dg.MetadataValue.float(float(bacc) if bacc is not None else float("nan")),
        "report": dg.MetadataValue.md(report_markdown(report)),
    })
