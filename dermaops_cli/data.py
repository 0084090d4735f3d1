"""``dermaops demo-data``, ``traffic`` and ``score``: data in, traffic to the endpoint, external scoring."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .common import resources, settings


def cmd_demo_data(args: argparse.Namespace) -> int:
    from ml_code.tools.demo_data import generate_demo_dataset

    out = Path(args.out or settings().raw_uri)
    if (out / "HAM10000_metadata.csv").exists() and not args.force:
        print(f"demo dataset already present at {out} (use --force to regenerate)")
        return 0
    path = generate_demo_dataset(out, n_lesions_per_class=args.lesions_per_class, seed=args.seed)
    print(f"SYNTHETIC demo dataset written to {path}")
    return 0


def cmd_traffic(args: argparse.Namespace, rest: list[str]) -> int:
    from ml_code.tools.traffic import main as traffic_main

    return int(traffic_main(rest) or 0)


def cmd_score(args: argparse.Namespace) -> int:
    """Score a registered model package (default: the newest Approved) on an external set."""
    import tempfile

    from ml_code.evaluation.score import score

    model_path = Path(args.model) if args.model else None
    with tempfile.TemporaryDirectory(prefix="dermaops-score-") as tmp:
        if model_path is None:
            configured = resources()
            group = settings().model_package_group
            package = (configured["registry"].get(group, args.version) if args.version
                       else configured["registry"].latest(group, "Approved"))
            if package is None:
                print(f"no Approved package in {group}; pass --version N or --model PATH", file=sys.stderr)
                return 2
            model_path = Path(tmp) / "model.tar.gz"
            model_path.write_bytes(configured["store"].get_bytes(package.model_uri))
            print(f"scoring {group} v{package.version} ({package.status})")
        out = Path(args.out or Path(settings().home) / "scores" / Path(args.images).name)
        result = score(model_path, Path(args.images), out, Path(args.labels) if args.labels else None, args.tta_views)
    print(json.dumps({k: v for k, v in result.items() if k != "per_class"}, indent=2, default=float))
    print(f"predictions (ISIC challenge format): {out / 'predictions.csv'}")
    return 0
