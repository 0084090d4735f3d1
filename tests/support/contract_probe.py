"""A tiny entry point used by test_jobs: it checks the container contract the runner lays out."""

from __future__ import annotations

import json
import sys

from ml_code import contract


def main() -> None:
    hps = contract.parse_hyperparameters()
    if hps.get("mode") == "fail":
        raise ValueError("channel 'splits' has no train_images.npy; run preprocessing first")
    if "SM_MODEL_DIR" in __import__("os").environ:
        env = contract.training_env()
        data = (env.channel("splits") / "data.txt").read_text()
        (env.model_dir / "weights.txt").write_text(data.upper())
        (env.checkpoint_dir / "checkpoint-epoch-0001.pt").write_text("ckpt")
        (env.output_data_dir / "history.json").write_text(json.dumps([{"epoch": 1}]))
        contract.emit_metric(epoch=1, val_balanced_accuracy=0.5, lr=hps["lr"])
    else:
        src = contract.processing_input("manifest") / "manifest.csv"
        out = contract.processing_output("splits")
        (out / "summary.json").write_text(json.dumps({"rows": len(src.read_text().splitlines())}))
        staged = sorted(p.relative_to(src.parent).as_posix() for p in src.parent.rglob("*") if p.is_file())
        (out / "staged.json").write_text(json.dumps(staged))  # what the job was given to read
        print("processed", flush=True)


if __name__ == "__main__":
    contract.run_entry_point(main)
    sys.exit(0)
