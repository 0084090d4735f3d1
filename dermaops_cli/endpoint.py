"""``dermaops endpoint``: status and stop of the live endpoint; champion/challenger traffic and promotion."""

from __future__ import annotations

import argparse
import json
import sys

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
            handle = deployer.promote(res["store"], on_log=print)
            print(f"promoted: package v{handle.package_version} is now the only variant of {handle.name}")
            return 0
    except DeploymentFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    stopped = deployer.stop()
    print("endpoint stopped" if stopped else "no endpoint was running")
    return 0
