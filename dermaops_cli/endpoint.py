"""``dermaops endpoint``: status and stop of the live endpoint; champion/challenger traffic and promotion."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dermaops_resources.settings import REPO_ROOT, child_environment

from .common import resources, settings


def _traffic(args: argparse.Namespace, res: dict) -> int:
    deployer, store = res["endpoint"], res["store"]
    if args.remove:
        status = deployer.set_traffic(None, store, on_log=print)
    else:
        if args.challenger is None or (args.weight is None) == (not args.shadow):
            print("endpoint traffic needs --challenger VERSION and exactly one of --weight W (0..1) or --shadow "
                  "(or --remove)", file=sys.stderr)
            return 2
        package = res["registry"].get(settings().model_package_group, args.challenger)
        status = deployer.set_traffic(package, store, weight=args.weight or 0.0, shadow=args.shadow, on_log=print)
    print(json.dumps(status.get("challenger"), indent=2, default=str))
    return 0


def _promote(res: dict) -> int:
    """Promote the challenger and leave the platform saying so: the package is Approved in the
    registry (a person chose it to serve everyone; without that the next deploy_job would put the
    newest Approved package back), and ``live_endpoint``'s stored handle and its newest
    materialization name it, so model_quality_report, inference_log and the baselines compare
    against the model that serves, without redeploying it."""
    import dagster as dg
    from dagster._core.definitions.data_version import (
        DATA_VERSION_TAG,  # live_endpoint's data version
    )

    from dermaops_resources.io_manager import store_handle

    deployer, store, registry = res["endpoint"], res["store"], res["registry"]
    group = settings().model_package_group
    challenger = ((deployer.status() or {}).get("challenger") or {}).get("package_version")
    if challenger is None:
        print("error: the endpoint serves no challenger; nothing to promote "
              "(`dermaops endpoint traffic --challenger N --weight W` first)", file=sys.stderr)
        return 1
    package = registry.get(group, int(challenger))
    if package.status != "Approved":  # before promoting: a Rejected package refuses here, nothing changed
        package = registry.set_status(group, package.version, "Approved",
                                           reason="promoted from challenger on the live endpoint")
        print(f"registry: {group} v{package.version} Approved (promoted)")
    handle = deployer.promote(store, on_log=print)
    handle = handle.model_copy(update={"model_uri": package.model_uri, "package_arn": package.arn or None})
    uri = store_handle(store, dg.AssetKey("live_endpoint"), handle)
    home = child_environment().get("DAGSTER_HOME") or str(REPO_ROOT / ".dagster_home")
    if Path(home).is_dir():  # the instance the UI and the sensors use
        with dg.DagsterInstance.from_config(home) as instance:
            instance.report_runless_asset_event(dg.AssetMaterialization(
                "live_endpoint", description="dermaops endpoint promote",
                metadata={"endpoint_name": handle.name, "package_version": package.version, "variant": handle.variant, "promoted": True},
                tags={DATA_VERSION_TAG: f"{group}-v{package.version}"}))
    print(f"promoted: package v{handle.package_version} is now the only variant of {handle.name}; "
          f"live_endpoint now names it ({uri})")
    return 0


def cmd_endpoint(args: argparse.Namespace) -> int:
    from dermaops_resources.endpoint import DeploymentFailed

    res = resources()
    deployer = res["endpoint"]
    if args.action == "status":
        status = deployer.status()
        print(json.dumps(status if status else {"running": False}, indent=2, default=str))
        return 0 if status else 1
    try:
        if args.action == "traffic":
            return _traffic(args, res)
        if args.action == "promote":
            return _promote(res)
    except DeploymentFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    stopped = deployer.stop()
    print("endpoint stopped" if stopped else "no endpoint was running")
    return 0
