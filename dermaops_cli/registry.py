"""``dermaops registry``: list, approve, reject model packages, and their approval history."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime

from .common import resources, settings


def _when(at: float) -> str:
    return datetime.fromtimestamp(at, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if at else "-"


def cmd_registry(args: argparse.Namespace) -> int:
    from dermaops_resources.registry import RegistryError

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
        if args.action == "history":
            changes = registry.history(group, args.version)
            if args.json:
                print(json.dumps([c.model_dump() for c in changes], indent=2, default=str))
                return 0
            print(f"{group} v{args.version}: approval history, oldest first")
            print("when\tstatus\tactor\treason")
            for c in changes:
                if c.dropped_before:
                    print(f"...\t({c.dropped_before} older change(s) dropped: SageMaker keeps 50 properties; "
                          "see CloudTrail UpdateModelPackage)")
                reason = c.reason + (" [cut]" if c.truncated else "")
                print(f"{_when(c.at)}\t{c.status}\t{c.actor or '(unknown)'}\t{reason or '-'}")
            return 0
        status = "Approved" if args.action == "approve" else "Rejected"
        package = registry.set_status(group, args.version, status, args.reason or "")
        print(f"{group} v{package.version} is now {package.status}")
        return 0
    except RegistryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
