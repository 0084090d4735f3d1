"""``dermaops``: what a user does by hand beside the Dagster UI.

    dermaops demo-data [--out DIR] [--lesions-per-class N] [--seed S]
    dermaops registry list | approve --version N | reject --version N --reason TEXT | history --version N
    dermaops endpoint status | stop
    dermaops traffic --endpoint URL | --endpoint-name NAME --images DIR [...]   (NAME: SageMaker, billed inference)
    dermaops retrain --reason manual
    dermaops alerts
    dermaops cost [--json]
    dermaops score --images DIR [--labels CSV] [--version N | --model PATH] [--out DIR]
"""

from __future__ import annotations

import argparse
import sys

from .data import cmd_demo_data, cmd_score, cmd_traffic
from .endpoint import cmd_endpoint
from .operations import cmd_alerts, cmd_cost, cmd_retrain
from .registry import cmd_registry


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dermaops", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo-data", help="generate the SYNTHETIC demo dataset (HAM10000 layout)")
    demo.add_argument("--out", help="folder (default: DERMAOPS_RAW_URI or DERMAOPS_HOME/demo-data)")
    demo.add_argument("--lesions-per-class", type=int, default=60)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--force", action="store_true", help="regenerate even if present")

    reg = sub.add_parser("registry", help="list, approve or reject model packages; show who did it (history)")
    reg.add_argument("action", choices=["list", "approve", "reject", "history"])
    reg.add_argument("--version", type=int, help="package version (approve/reject/history)")
    reg.add_argument("--reason", default="", help="why (recorded in the registry)")
    reg.add_argument("--group", help="model package group (default DERMAOPS_MODEL_PACKAGE_GROUP)")
    reg.add_argument("--json", action="store_true", help="machine-readable list or history")

    ep = sub.add_parser("endpoint", help="status, stop, champion/challenger traffic and promotion of the live endpoint")
    ep.add_argument("action", choices=["status", "stop", "traffic", "promote"],
                    help="traffic: serve a challenger package beside the champion (--challenger N with --weight W or "
                         "--shadow; --remove takes it away); promote: make the challenger the only variant")
    ep.add_argument("--challenger", type=int, default=None, metavar="VERSION",
                    help="registry version of the challenger package (traffic)")
    ep.add_argument("--weight", type=float, default=None, help="share of requests the challenger answers, 0..1")
    ep.add_argument("--shadow", action="store_true",
                    help="the challenger scores a copy of every request; its answers are captured, never returned")
    ep.add_argument("--remove", action="store_true", help="stop serving the challenger (traffic)")

    sub.add_parser("traffic", help="send images to an endpoint: a URL, or a SageMaker endpoint by name (real, "
                   "billed inference on AWS; see dermaops traffic --help)", add_help=False)

    rt = sub.add_parser("retrain", help="start the retraining job now (manual trigger)")
    rt.add_argument("--reason", default="manual")
    rt.add_argument("--force", action="store_true", help="train even when nothing new landed since the serving model")

    co = sub.add_parser("cost", help="what the platform costs a month on AWS, broken down (the newest cost_report)")
    co.add_argument("--json", action="store_true")

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
    if args.command == "registry" and args.action in ("approve", "reject", "history") and args.version is None:
        parser.error(f"registry {args.action} needs --version N (see `dermaops registry list`)")
    if args.command == "registry" and args.action == "reject" and not args.reason:
        parser.error("registry reject needs --reason TEXT (it is kept with the package)")
    handler = {"demo-data": cmd_demo_data, "registry": cmd_registry, "endpoint": cmd_endpoint,
               "retrain": cmd_retrain, "alerts": cmd_alerts, "cost": cmd_cost, "score": cmd_score}[args.command]
    return handler(args)

