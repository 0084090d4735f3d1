"""Model packages and requests for tests of the local endpoint: a real model.tar.gz built from a
torch state_dict, a model_config.json and handlers following the SageMaker contract (so these
tests do not depend on the training job), and small HTTP helpers against 127.0.0.1."""

from __future__ import annotations

import contextlib
import io
import json
import tarfile
import textwrap
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import torch
from PIL import Image

from dermaops_resources.endpoint import LocalEndpointDeployer
from dermaops_resources.object_store import LocalObjectStore, file_uri_to_path, sha256_file
from dermaops_resources.registry import ModelPackage
from ml_code.package.loader import write_code

CLASSES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
IMAGE_SIZE = 16

HANDLER = textwrap.dedent('''
    """Minimal lesion classifier handlers (SageMaker PyTorch contract)."""
    import io
    import json
    import os

    import torch
    from torch import nn
    from PIL import Image

    CONTENT_TYPES = ("image/jpeg", "image/png", "application/x-image")

    def _build(arch, num_classes):
        if arch != "tiny_cnn":
            raise ValueError(f"unknown arch {arch!r}")
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                             nn.Flatten(), nn.Linear(8, num_classes))

    def model_fn(model_dir):
        __MODEL_FN_HOOK__
        with open(os.path.join(model_dir, "model_config.json")) as fh:
            cfg = json.load(fh)
        model = _build(cfg["arch"], len(cfg["classes"]))
        state = torch.load(os.path.join(model_dir, "model.pt"), map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        model.eval()
        return {"model": model, "cfg": cfg}

    def input_fn(body, content_type):
        if content_type not in CONTENT_TYPES:
            raise ValueError(f"unsupported content type {content_type}")
        img = Image.open(io.BytesIO(body))
        img.load()
        return img.convert("RGB")

    def predict_fn(img, bundle):
        cfg = bundle["cfg"]
        size = cfg["image_size"]
        img = img.resize((size, size))
        x = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).reshape(size, size, 3)
        x = x.permute(2, 0, 1).float().div(255)
        mean = torch.tensor(cfg["mean"]).view(3, 1, 1)
        std = torch.tensor(cfg["std"]).view(3, 1, 1)
        x = ((x - mean) / std).unsqueeze(0)
        with torch.no_grad():
            logits = bundle["model"](x)[0] / cfg["temperature"]
        return __PROBS__

    def output_fn(probs, accept):
        classes = __CLASSES_EXPR__
        values = [float(p) for p in probs]
        best = max(range(len(values)), key=values.__getitem__)
        return json.dumps({"predicted_class": classes[best],
                           "probabilities": dict(zip(classes, values)), "model_arch": "tiny_cnn"})
''')


def _tiny_model(num_classes: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten(), torch.nn.Linear(8, num_classes))


def build_package(out: Path, *, seed: int = 0, model_fn_hook: str = "pass", probs: str = "torch.softmax(logits, 0)",
                  weight_classes: int = len(CLASSES), config_classes: list[str] = CLASSES) -> Path:
    """Write a SageMaker-layout model.tar.gz (model.pt, model_config.json, code/inference.py)."""
    src = out.with_suffix("")
    (src / "code").mkdir(parents=True)
    torch.save(_tiny_model(weight_classes, seed).state_dict(), src / "model.pt")
    (src / "model_config.json").write_text(json.dumps({
        "arch": "tiny_cnn", "classes": config_classes, "image_size": IMAGE_SIZE,
        "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "temperature": 1.0}))
    handler = (HANDLER.replace("__MODEL_FN_HOOK__", model_fn_hook).replace("__PROBS__", probs)
               .replace("__CLASSES_EXPR__", repr(config_classes)))
    (src / "code" / "inference.py").write_text(handler)
    (src / "code" / "requirements.txt").write_text("")
    with tarfile.open(out, "w:gz") as tar:
        for path in sorted(src.rglob("*")):
            tar.add(path, arcname=path.relative_to(src).as_posix(), recursive=False)
    return out


def build_real_package(out: Path) -> Path:
    """A package with the project's own code (``ml_code/package``) and a torchvision resnet18 (32 px)."""
    import torchvision

    src = out.with_suffix("")
    (src / "code").mkdir(parents=True)
    torch.manual_seed(4)
    torch.save(torchvision.models.resnet18(weights=None, num_classes=len(CLASSES)).state_dict(), src / "model.pt")
    (src / "model_config.json").write_text(json.dumps({
        "arch": "resnet18", "classes": CLASSES, "image_size": 32,
        "mean": [0.76, 0.55, 0.57], "std": [0.14, 0.15, 0.17], "temperature": 1.0}))
    write_code(src)
    with tarfile.open(out, "w:gz", compresslevel=1) as tar:
        for path in sorted(src.rglob("*")):
            tar.add(path, arcname=path.relative_to(src).as_posix(), recursive=False)
    return out


def register(store: LocalObjectStore, tar: Path, version: int) -> ModelPackage:
    uri = store.put_file("models", f"packages/v{version}/model.tar.gz", tar)
    now = time.time()
    return ModelPackage(group="dermaops-test", version=version, status="Approved", created_at=now, updated_at=now,
                        model_uri=uri, model_hash=sha256_file(tar), arn=f"local:dermaops-test/{version}")


def lesion_image(fmt: str, size: tuple[int, int] = (40, 30), shade: int = 0) -> bytes:
    img = Image.new("RGB", size)
    img.putdata([((x * 6 + shade) % 256, (y * 8) % 256, 128) for y in range(size[1]) for x in range(size[0])])
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def post(url: str, body: bytes, content_type: str, timeout: float = 10.0, headers: dict | None = None):
    """(status, headers, JSON body) of one POST, without raising on HTTP errors. ``headers`` is the
    response's ``http.client.HTTPMessage``: names are case-insensitive, as HTTP says."""
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": content_type, **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.headers, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, json.loads(exc.read())


def ping(url: str) -> int | None:
    try:
        with urllib.request.urlopen(f"{url}/ping", timeout=2) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def read_captures(deployer: LocalEndpointDeployer) -> list[dict]:
    root = file_uri_to_path(deployer.endpoint_capture_uri())
    records = []
    for path in sorted(root.rglob("*.jsonl")):
        records.extend(json.loads(line) for line in path.read_text().splitlines())
    return records


def wait_for(predicate, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def make_deployer(env, name: str, workers: int = 1) -> LocalEndpointDeployer:
    """A deployer for tests: one worker unless asked (each worker imports torch: seconds of CPU)."""
    return LocalEndpointDeployer(state_dir=str(env["root"] / name / "state"),
                                 capture_uri=env["store"].uri("logs", f"datacapture-{name}"),
                                 endpoint_name=f"{name}-endpoint", startup_timeout_seconds=90, workers=workers)


@contextlib.contextmanager
def inprocess_worker(root: Path, tar: Path, **options):
    """One endpoint worker (``ml_code.serving.app``) under uvicorn in a thread of this process, on
    127.0.0.1: yields (url, WorkerApp) so a test can look at the worker's slots and counters."""
    import uvicorn

    from ml_code.serving.access import allowed_host_names
    from ml_code.serving.app import WorkerApp, WorkerOptions
    from ml_code.serving.control import ControlDir, Desired
    from ml_code.serving.serve import bind_socket

    ctl = ControlDir.create()
    ctl.publish_active(Desired(generation=1, version=1, model_tar=str(tar)))
    sock = bind_socket("127.0.0.1", 0)
    app = WorkerApp(WorkerOptions(control_dir=str(ctl.root), capture_dir=str(root / "capture"),
                                  endpoint_name="inprocess", admin_token=None, invoke_token=None,
                                  allowed_hosts=allowed_host_names("127.0.0.1"), **options))
    server = uvicorn.Server(uvicorn.Config(app, lifespan="on", log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started or not thread.is_alive(), timeout=60, what="the in-process worker to start")
        assert server.started, "the in-process worker did not start"
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", app
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()
        ctl.destroy()


