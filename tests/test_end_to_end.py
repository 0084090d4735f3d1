"""The whole graph on the local default, driven the way a user drives it: the `dermaops` and
`dagster asset materialize` commands, then HTTP against the live endpoint."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow

TINY_RUN_CONFIG = {
    "ops": {
        "processed_splits": {"config": {"image_size": 32}},
        "trained_model": {"config": {"epochs": 3, "batch_size": 32, "arch": "resnet18"}},
        "evaluation_report": {"config": {"bootstrap_samples": 100}},
        "registered_model_package": {"config": {"min_balanced_accuracy": 0.0, "auto_approve": True}},
    }
}


def _run(cmd: list[str], env: dict, timeout: int = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    return proc


def _jpeg(path: Path) -> bytes:
    buf = io.BytesIO()
    Image.open(path).convert("RGB").save(buf, format="JPEG")
    return buf.getvalue()


def test_whole_graph_to_live_endpoint(tmp_path: Path) -> None:
    home = tmp_path / "home"
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    env = {**os.environ, "DERMAOPS_HOME": str(home), "DAGSTER_HOME": str(dagster_home),
           "DERMAOPS_BACKEND": "local", "PYTHONUNBUFFERED": "1"}
    env.pop("DERMAOPS_RAW_URI", None)
    config = tmp_path / "run_config.yaml"
    config.write_text(yaml.safe_dump(TINY_RUN_CONFIG))

    _run([str(BIN / "dermaops"), "demo-data", "--lesions-per-class", "8"], env)
    try:
        _run([str(BIN / "dagster"), "asset", "materialize", "-m", "dermaops_assets", "--select", "*",
              "-c", str(config)], env)
        status = json.loads(_run([str(BIN / "dermaops"), "endpoint", "status"], env).stdout)
        assert status["package_version"] == 1
        url = status["url"].rstrip("/")
        assert urllib.request.urlopen(f"{url}/ping", timeout=10).status == 200

        image = sorted((home / "demo-data" / "images").glob("*.jpg"))[0]
        req = urllib.request.Request(f"{url}/invocations", data=_jpeg(image), method="POST",
                                     headers={"Content-Type": "image/jpeg"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            answer = json.loads(resp.read())
            inference_id = resp.headers.get("X-Inference-Id")
        assert abs(sum(answer["probabilities"].values()) - 1.0) < 1e-4
        assert answer["predicted_class"] in answer["probabilities"]

        capture_root = home / "store" / "logs" / "datacapture"
        deadline, records = time.time() + 15, []
        while time.time() < deadline and not records:
            records = [json.loads(line) for f in capture_root.rglob("*.jsonl") for line in f.read_text().splitlines()]
            time.sleep(0.5)
        assert any(r["eventMetadata"]["inferenceId"] == inference_id for r in records), records[:2]
        record = records[0]
        assert record["captureData"]["endpointInput"]["encoding"] == "BASE64"

        registry = json.loads(_run([str(BIN / "dermaops"), "registry", "list", "--json"], env).stdout)
        assert registry[0]["status"] == "Approved"
        assert registry[0]["lineage"]["dagster_run_id"]
    finally:
        subprocess.run([str(BIN / "dermaops"), "endpoint", "stop"], cwd=REPO, env=env, timeout=60)
    # The endpoint is gone after stop.
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{url}/ping", timeout=3)
