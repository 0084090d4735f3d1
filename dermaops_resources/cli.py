"""``dermaops``: what a user does by hand beside the Dagster UI.

    dermaops demo-data [--out DIR] [--lesions-per-class N] [--seed S]
    dermaops registry list | approve --version N | reject --version N --reason TEXT
    dermaops endpoint status | stop
    dermaops traffic --endpoint URL --images DIR [...]
    dermaops retrain --reason manual
    dermaops alerts
    dermaops score --images DIR [--labels CSV] [--version N | --model PATH] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from .settings import REPO_ROOT, Settings, child_environment


def _resources():
    from .factory import build_resources

    return build_resources()


def cmd_demo_data(args: argparse.Namespace) -> int:
    from ml_code.tools.demo_data import generate_demo_dataset

    out = Path(args.out or Settings.from_env().raw_uri)
    if (out / "HAM10000_metadata.csv").exists() and not args.force:
        print(f"demo dataset already present at {out} (use --force to regenerate)")
        return 0
    path = generate_demo_dataset(out, n_lesions_per_class=args.lesions_per_class, seed=args.seed)
    print(f"SYNTHETIC demo dataset written to {path}")
    return 0


def cmd_registry(args: argparse.Namespace) -> int:
    from .registry import RegistryError

    registry = _resources()["registry"]
    group = args.group or Settings.from_env().model_package_group
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


def cmd_endpoint(args: argparse.Namespace) -> int:
    deployer = _resources()["endpoint"]
    if args.action == "status":
        status = deployer.status()
        print(json.dumps(status if status else {"running": False}, indent=2, default=str))
        return 0 if status else 1
    stopped = deployer.stop()
    print("endpoint stopped" if stopped else "no endpoint was running")
    return 0


def cmd_traffic(args: argparse.Namespace, rest: list[str]) -> int:
    from ml_code.tools.traffic import main as traffic_main

    return int(traffic_main(rest) or 0)


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
    tags = json.dumps({"dermaops/retrain_reason": args.reason})
    cmd = ["dagster", "job", "execute", "-m", "dermaops_assets", "-j", "retrain_job", "--tags", tags]
    return subprocess.call(cmd, env=env, cwd=REPO_ROOT)


def cmd_alerts(args: argparse.Namespace) -> int:
    notifier = _resources()["notifier"]
    alerts = notifier.read_alerts() if hasattr(notifier, "read_alerts") else []
    for alert in alerts[-args.last:]:
        print(json.dumps(alert, sort_keys=True))
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    """Score a registered model package (default: the newest Approved) on an external set."""
    import tempfile

    from ml_code.evaluation.score import score

    model_path = Path(args.model) if args.model else None
    with tempfile.TemporaryDirectory(prefix="dermaops-score-") as tmp:
        if model_path is None:
            resources = _resources()
            group = Settings.from_env().model_package_group
            package = (resources["registry"].get(group, args.version) if args.version
                       else resources["registry"].latest(group, "Approved"))
            if package is None:
                print(f"no Approved package in {group}; pass --version N or --model PATH", file=sys.stderr)
                return 2
            model_path = Path(tmp) / "model.tar.gz"
            model_path.write_bytes(resources["store"].get_bytes(package.model_uri))
            print(f"scoring {group} v{package.version} ({package.status})")
        out = Path(args.out or Path(Settings.from_env().home) / "scores" / Path(args.images).name)
        result = score(model_path, Path(args.images), out, Path(args.labels) if args.labels else None, args.tta_views)
    print(json.dumps({k: v for k, v in result.items() if k != "per_class"}, indent=2, default=float))
    print(f"predictions (ISIC challenge format): {out / 'predictions.csv'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dermaops", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo-data", help="generate the SYNTHETIC demo dataset (HAM10000 layout)")
    demo.add_argument("--out", help="folder (default: DERMAOPS_RAW_URI or DERMAOPS_HOME/demo-data)")
    demo.add_argument("--lesions-per-class", type=int, default=60)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--force", action="store_true", help="regenerate even if present")

    reg = sub.add_parser("registry", help="list, approve or reject model packages")
    reg.add_argument("action", choices=["list", "approve", "reject"])
    reg.add_argument("--version", type=int, help="package version (approve/reject)")
    reg.add_argument("--reason", default="", help="why (recorded in the registry)")
    reg.add_argument("--group", help="model package group (default DERMAOPS_MODEL_PACKAGE_GROUP)")
    reg.add_argument("--json", action="store_true", help="machine-readable list")

    ep = sub.add_parser("endpoint", help="status or stop of the live endpoint")
    ep.add_argument("action", choices=["status", "stop"])

    sub.add_parser("traffic", help="send images to an endpoint (see dermaops traffic --help)", add_help=False)

    rt = sub.add_parser("retrain", help="start the retraining job now (manual trigger)")
    rt.add_argument("--reason", default="manual")

    al = sub.add_parser("alerts", help="print the most recent local alerts")
    al.add_argument("--last", type=int, default=20)

    sc = sub.add_parser("score", help="score a model package on an external image set (ISIC-format predictions)")
    sc.add_argument("--images", required=True, help="folder of JPEG/PNG images")
    sc.add_argument("--labels", help="ISIC ground-truth CSV or HAM10000/ISIC metadata CSV (optional)")
    sc.add_argument("--version", type=int, help="registry package version (default: newest Approved)")
    sc.add_argument("--model", help="a model.tar.gz instead of a registry package")
    sc.add_argument("--out", help="output folder (default DERMAOPS_HOME/scores/<images folder name>)")
    sc.add_argument("--tta-views", type=int, default=None,
                    help="test-time views 1..8 (default: the package's own, as the endpoint serves it)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "traffic":
        return cmd_traffic(argparse.Namespace(), argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "registry" and args.action in ("approve", "reject") and args.version is None:
        parser.error(f"registry {args.action} needs --version N (see `dermaops registry list`)")
    if args.command == "registry" and args.action == "reject" and not args.reason:
        parser.error("registry reject needs --reason TEXT (it is kept with the package)")
    handler = {"demo-data": cmd_demo_data, "registry": cmd_registry, "endpoint": cmd_endpoint,
               "retrain": cmd_retrain, "alerts": cmd_alerts, "score": cmd_score}[args.command]
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
