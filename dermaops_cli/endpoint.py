"""``dermaops endpoint``: status and stop of the live endpoint."""

from __future__ import annotations

import argparse
import json

from .common import resources


def cmd_endpoint(args: argparse.Namespace) -> int:
    deployer = resources()["endpoint"]
    if args.action == "status":
        status = deployer.status()
        print(json.dumps(status if status else {"running": False}, indent=2, default=str))
        return 0 if status else 1
    stopped = deployer.stop()
    print("endpoint stopped" if stopped else "no endpoint was running")
    return 0
