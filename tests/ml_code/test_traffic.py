"""Traffic simulator against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import base64
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from ml_code.tools.traffic import check_loopback, main, simulate_traffic, list_images

from tests.support.monitoring_synth import lesion_images


class _Handler(BaseHTTPRequestHandler):
    received: list[dict] = []

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        asked = self.headers.get("X-Amzn-SageMaker-Inference-Id", "")
        type(self).received.append({"body": body, "ctype": self.headers["Content-Type"], "id": asked,
                                    "path": self.path})
        payload = json.dumps({"predicted_class": "nv", "probabilities": {"nv": 0.9, "mel": 0.1}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Inference-Id", asked)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


@pytest.fixture()
def server():
    _Handler.received = []
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


@pytest.fixture()
def image_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    for i, img in enumerate(lesion_images(12, size=24, seed=0)):
        Image.fromarray(img).save(folder / f"ISIC_{i:07d}.jpg", quality=95)
    pd.DataFrame({"image_id": [f"ISIC_{i:07d}" for i in range(12)],
                  "dx": ["nv", "mel", "bkl"] * 4}).to_csv(tmp_path / "meta.csv", index=False)
    return folder


def test_sends_at_rate_and_writes_labels(server: str, image_dir: Path, tmp_path: Path) -> None:
    labels = dict(zip(*pd.read_csv(tmp_path / "meta.csv").values.T))
    started = time.monotonic()
    summary = simulate_traffic(server, list_images(image_dir), rate=40, limit=10, labels=labels,
                               labels_out=tmp_path / "landing")
    took = time.monotonic() - started
    assert summary["sent"] == summary["ok"] == 10
    assert took >= 9 / 40 * 0.9  # rate-limited, not a burst
    assert len(_Handler.received) == 10 and all(r["path"] == "/invocations" for r in _Handler.received)
    # unperturbed traffic sends the image files' own bytes
    originals = {p.read_bytes() for p in image_dir.iterdir()}
    assert all(r["body"] in originals and r["ctype"] == "image/jpeg" for r in _Handler.received)
    frame = pd.read_csv(summary["labels_file"])
    assert list(frame.columns) == ["inference_id", "label"]
    assert set(frame["inference_id"]) == {r["id"] for r in _Handler.received}
    assert not list((tmp_path / "landing").glob(".*"))  # nothing half-written left behind


def test_perturbation_and_wrong_labels(server: str, image_dir: Path, tmp_path: Path) -> None:
    labels = {f"ISIC_{i:07d}": "nv" for i in range(12)}
    summary = simulate_traffic(server, list_images(image_dir), rate=200, limit=12, perturb="colour-shift",
                               labels=labels, labels_out=tmp_path / "landing", wrong_labels=1.0,
                               classes=["nv", "mel", "bkl"])
    assert summary["labels_flipped"] == 12
    frame = pd.read_csv(summary["labels_file"])
    assert (frame["label"] != "nv").all()
    originals = {p.read_bytes() for p in image_dir.iterdir()}
    assert all(r["body"] not in originals for r in _Handler.received)


def test_with_context_sends_json_requests_with_the_clinical_fields(server: str, image_dir: Path,
                                                                  tmp_path: Path, capsys) -> None:
    meta = pd.read_csv(tmp_path / "meta.csv")
    meta["age"] = [35.0, None] * 6
    meta["sex"] = ["female", "unknown"] * 6
    meta["localization"] = ["back", "unknown"] * 6
    meta.to_csv(tmp_path / "meta.csv", index=False)
    code = main(["--endpoint", server, "--images", str(image_dir), "--rate", "200", "--limit", "12",
                 "--metadata", str(tmp_path / "meta.csv"), "--with-context"])
    assert code == 0 and json.loads(capsys.readouterr().out)["ok"] == 12
    sent = [json.loads(r["body"]) for r in _Handler.received]
    assert all(r["ctype"] == "application/json" for r in _Handler.received)
    originals = {p.read_bytes() for p in image_dir.iterdir()}
    assert all(base64.b64decode(s["image"]) in originals for s in sent)
    contexts = sorted((s["age"] is None, s["sex"], s["anatom_site"]) for s in sent)
    assert contexts == [(False, "female", "back")] * 6 + [(True, None, None)] * 6  # unknown is sent as null

    meta.drop(columns="localization").to_csv(tmp_path / "meta.csv", index=False)
    assert main(["--endpoint", server, "--images", str(image_dir), "--metadata", str(tmp_path / "meta.csv"),
                 "--with-context"]) == 2
    assert "localization" in capsys.readouterr().err


def test_cli_prints_summary_and_bounds_time(server: str, image_dir: Path, capsys) -> None:
    code = main(["--endpoint", server, "--images", str(image_dir), "--rate", "5", "--limit", "100",
                 "--max-seconds", "0.5"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert 1 <= out["sent"] <= 4  # max-seconds stops it long before the 12 images at 5/s


def test_refuses_remote_hosts(image_dir: Path, capsys) -> None:
    with pytest.raises(ValueError, match="non-loopback"):
        check_loopback("http://example.com:8080")
    assert check_loopback("http://localhost:8080/invocations") == "http://localhost:8080"
    assert main(["--endpoint", "http://10.1.2.3:8080", "--images", str(image_dir)]) == 2
    assert "non-loopback" in capsys.readouterr().err
