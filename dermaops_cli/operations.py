"""``dermaops retrain`` and ``alerts``: the manual retraining trigger and the local alert log."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from dermaops_resources.settings import REPO_ROOT, child_environment

from .common import resources


def cmd_retrain(args: argparse.Namespace) -> int:
    """Manual retraining trigger: the retrain job, tagged with its reason, on the repo's instance."""
    import dagster as dg

    from dermaops_assets.sensors import retrain_in_progress

    env = child_environment()
    env.setdefault("DAGSTER_HOME", str(REPO_ROOT / ".dagster_home"))
    # `dagster job execute` runs in this process, outside the run queue that keeps retraining
    # to one run at a time, so the check the sensors and schedule make is made here too.
    if Path(env["DAGSTER_HOME"], "dagster.yaml").is_file():
        with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
            if retrain_in_progress(instance):
                print("A retrain_job run is already queued or running (see the UI's Runs page); not starting "
                      "another. Wait for it, or cancel it first.", file=sys.stderr)
                return 3
    tags = {"dermaops/retrain_reason": args.reason}
    if getattr(args, "force", False):
        tags["dermaops/force_retrain"] = "true"  # train even on the serving model's data
    tags = json.dumps(tags)
    cmd = ["dagster", "job", "execute", "-m", "dermaops_assets", "-j", "retrain_job", "--tags", tags]
    return subprocess.call(cmd, env=env, cwd=REPO_ROOT)


def cmd_alerts(args: argparse.Namespace) -> int:
    notifier = resources()["notifier"]
    alerts = notifier.read_alerts() if hasattr(notifier, "read_alerts") else []
    for alert in alerts[-args.last:]:
        print(json.dumps(alert, sort_keys=True))
    return 0


def cmd_cost(args: argparse.Namespace) -> int:
    """The newest cost_report, broken down (``make monitor`` or monitoring_job materializes it)."""
    import dagster as dg

    home = child_environment().get("DAGSTER_HOME") or str(REPO_ROOT / ".dagster_home")
    with dg.DagsterInstance.from_config(home) as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey("cost_report"))
    if event is None or event.asset_materialization is None:
        print("no cost_report yet: run `make monitor` (or materialize cost_report in the UI)", file=sys.stderr)
        return 2
    md = {k: getattr(v, "value", v) for k, v in event.asset_materialization.metadata.items() if k != "breakdown"}
    if args.json:
        print(json.dumps(md, indent=2, sort_keys=True))
        return 0
    for key in ("endpoint_usd", "training_usd", "processing_usd", "storage_usd", "total_usd"):
        print(f"{key.removesuffix('_usd'):>12}: ${md.get(key, 0.0):,.2f} / month")
    print(f"training cost per run: ${md.get('training_usd_per_run', 0.0):,.2f} over {md.get('training_runs', 0):.0f} "
          f"run(s) in 30 days; inference cost per 1,000 requests: ${md.get('inference_usd_per_1000_requests', 0):,.4f}")
    return 0
