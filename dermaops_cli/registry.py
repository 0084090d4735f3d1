"""``dermaops registry``: list, approve, reject model packages, and their approval history."""

from __future__ import annotations

import argparse
import json
import sys

from .common import resources, settings


def cmd_registry(args: argparse.Namespace) -> int:
    from .registry import RegistryError

    registry = resources()["registry"]
    group = args.group or settings().model_package_group
    try:
        if args.action == "list":
            packages = registry.list_packages(group)
            if args.json:
                print(json.dumps([p.model_dump() for p in packages], indent=2, default=str))
            elif not packages:
                print(f"no model packages in {group} yet")
            for p in packages if not args.json else []:
                ba = p.metrics.get("balanced_accuracy")
                print(f"{group} v{p.version}\t{p.status}\tbalanced_accuracy="
                      f"{'-' if ba is None else f'{ba:.3f}'}\tdata={p.lineage.get('data_version', '-')}\t{p.model_uri}")
            return 0
        status = "Approved" if args.action == "approve" else "Rejected"
        package = registry.set_status(group, args.version, status, args.reason or "")
        print(f"{group} v{package.version} is now {package.status}")
        return 0
    except RegistryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
