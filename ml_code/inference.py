"""SageMaker PyTorch inference handlers for the DermaOps lesion classifier.

This file is copied verbatim into ``model.tar.gz`` as ``code/inference.py`` and runs in
the AWS PyTorch inference container, where ``ml_code`` is NOT installed. It therefore
imports only torch, torchvision, Pillow, NumPy and the standard library.

It also holds the canonical network definitions (:func:`build_network`): training
(``ml_code.models.build_model``) builds its networks through this same function, so a
state_dict saved by training always loads here. If you ever split them apart, they MUST
stay in sync: ``tests/ml_code/test_inference.py`` checks that both produce identical
state_dict keys and shapes for every architecture.

Besides the four SageMaker handlers it exposes helpers that other stages reuse so that
everything sees exactly what the endpoint serves:

- :func:`preprocess_array` - uint8 NHWC arrays (the preprocess job's format) -> model input;
- :func:`embed_fn` - penultimate-layer embeddings (monitoring builds drift baselines on them);
- :func:`gradcam` - class-activation heat maps (the evaluation job's Grad-CAM grid).
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image, UnidentifiedImageError
from torch import nn

SUPPORTED_CONTENT_TYPES = ("image/jpeg", "image/png", "application/x-image")
SUPPORTED_ARCHS = ("resnet18", "resnet34", "efficientnet_b0", "mobilenet_v3_small", "dermanet")

# ---------------------------------------------------------------------------------------
# Network definitions (shared with ml_code/models.py - keep in sync, see module docstring)
# ---------------------------------------------------------------------------------------


class _ConvBNAct(nn.Sequential):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


class _ResBlock(nn.Module):
    """Basic residual block; downsamples with a strided conv and a 1x1 projection."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = _ConvBNAct(cin, cout, stride)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        nn.init.zeros_(self.bn2.weight)  # residual branch starts as identity: stabler from scratch
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn2(self.conv2(self.conv1(x))) + self.shortcut(x), inplace=True)


class DermaNet(nn.Module):
    """Compact, wide-ish ResNet for 32-96 px dermoscopy crops, trained from scratch.

    Why not a torchvision net: ImageNet stems downsample 4x before the first block, which
    throws away most of a 64 px lesion; this net keeps full resolution for a cheap stem and
    spends its compute on four stages (x1, /2, /4, /8) with widths ``widths``.
    """

    def __init__(self, num_classes: int, widths: tuple[int, ...] = (32, 64, 128, 256), dropout: float = 0.2) -> None:
        super().__init__()
        self.stem = nn.Sequential(_ConvBNAct(3, widths[0] // 2, stride=2), _ConvBNAct(widths[0] // 2, widths[0]))
        stages = []
        cin = widths[0]
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(_ResBlock(cin, w, stride), _ResBlock(w, w, 1)))
            cin = w
        self.layers = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.layers(self.stem(x))).flatten(1)
        return self.fc(self.dropout(x))


def build_network(arch: str, num_classes: int, small_input: bool = False) -> nn.Module:
    """Build an untrained network with a ``num_classes`` head.

    ``small_input`` (resnets only) swaps the 7x7/2 stem conv for a 3x3/1 conv and keeps
    the max-pool, so a 64 px image reaches the first block at 32 px instead of 16 px.
    """
    if arch not in SUPPORTED_ARCHS:
        raise ValueError(f"Unknown arch {arch!r}; supported: {', '.join(SUPPORTED_ARCHS)}.")
    if arch == "dermanet":
        return DermaNet(num_classes)
    net = getattr(torchvision.models, arch)(weights=None)
    if arch.startswith("resnet"):
        if small_input:
            net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.fc = nn.Linear(net.fc.in_features, num_classes)
    elif arch == "efficientnet_b0":
        net.classifier[-1] = nn.Linear(net.classifier[-1].in_features, num_classes)
    elif arch == "mobilenet_v3_small":
        net.classifier[-1] = nn.Linear(net.classifier[-1].in_features, num_classes)
    return net


def head_layer(net: nn.Module) -> nn.Linear:
    """The final classification layer (its input is the penultimate embedding)."""
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(net).__name__} has no Linear head")
    return linears[-1]


def feature_layer(net: nn.Module) -> nn.Module:
    """The last convolutional stage, whose activations Grad-CAM explains."""
    if isinstance(net, DermaNet):
        return net.layers[-1]
    if hasattr(net, "layer4"):
        return net.layer4
    if hasattr(net, "features"):
        return net.features[-1]
    raise ValueError(f"No Grad-CAM layer known for {type(net).__name__}")


# ---------------------------------------------------------------------------------------
# The served model
# ---------------------------------------------------------------------------------------


class ServedModel(nn.Module):
    """A network plus what serving needs to know about it (classes, normalisation, temperature)."""

    def __init__(self, net: nn.Module, config: dict[str, Any]) -> None:
        super().__init__()
        self.net = net
        self.config = config
        self.classes: list[str] = list(config["classes"])
        self.image_size = int(config["image_size"])
        self.temperature = float(config.get("temperature", 1.0) or 1.0)
        self.register_buffer("mean", torch.tensor(config["mean"], dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(config["std"], dtype=torch.float32).view(1, 3, 1, 1))

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for already-normalised NCHW input."""
        return self.net(x)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.net if isinstance(model, ServedModel) else model


def model_fn(model_dir: str | os.PathLike) -> ServedModel:
    """Load ``model_config.json`` + ``model.pt`` from ``model_dir`` (SageMaker handler)."""
    model_dir = Path(model_dir)
    config_path, weights_path = model_dir / "model_config.json", model_dir / "model.pt"
    for path in (config_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(
                f"{path.name} not found in {model_dir}; model.tar.gz must hold model.pt and "
                "model_config.json at its root (written by ml_code.train)."
            )
    config = json.loads(config_path.read_text())
    missing = [k for k in ("arch", "classes", "image_size", "mean", "std") if k not in config]
    if missing:
        raise ValueError(f"{config_path} lacks keys {missing}")
    net = build_network(config["arch"], len(config["classes"]), bool(config.get("small_input", False)))
    state = torch.load(weights_path, map_location="cpu", weights_only=True)
    net.load_state_dict(state)
    model = ServedModel(net, config)
    model.to(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    model.eval()
    return model


def load_image_square(data: bytes, size: int) -> np.ndarray:
    """Decode image bytes to uint8 ``(size, size, 3)`` RGB: JPEG draft decoding, centre crop of
    the shorter side, Lanczos resize. The one definition: the preprocess job and the drift
    monitor import it from here, so training arrays, served requests and monitored traffic
    all see the same geometry (this file ships alone, so it cannot import theirs).
    """
    with Image.open(io.BytesIO(data)) as img:
        if img.format == "JPEG":
            w, h = img.size
            side = min(w, h)
            img.draft("RGB", (max(size, -(-size * w // side)), max(size, -(-size * h // side))))
        img.load()
        w, h = img.size
        side = min(w, h)
        rgb = img.convert("RGB") if img.mode != "RGB" else img
        left, top = (w - side) / 2, (h - side) / 2
        out = rgb.resize((size, size), Image.Resampling.LANCZOS, box=(left, top, left + side, top + side))
        return np.asarray(out, dtype=np.uint8)


def preprocess_array(images: np.ndarray, model: Any, std: Any = None) -> torch.Tensor:
    """uint8 ``(N, H, W, 3)`` RGB -> float32 ``(N, 3, H, W)`` normalised as the model expects.

    ``model`` is the :func:`model_fn` result or a ``model_config.json`` dict (their 0-1 scale
    per-channel ``mean``/``std`` are used); ``preprocess_array(images, mean, std)`` also works.
    """
    if isinstance(model, ServedModel):
        mean, std = model.mean.detach().cpu().view(3), model.std.detach().cpu().view(3)
    elif isinstance(model, dict):
        mean, std = model["mean"], model["std"]
    elif std is not None:
        mean = model
    else:
        raise ValueError("preprocess_array needs the served model, its config dict, or mean and std")
    arr = np.asarray(images)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"expected uint8 (N, H, W, 3) images, got dtype {arr.dtype} shape {arr.shape}")
    arr = np.ascontiguousarray(arr)
    if not arr.flags.writeable:  # memory-mapped splits are read-only; torch wants writable memory
        arr = arr.copy()
    x = torch.from_numpy(arr).permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.as_tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - m) / s


def input_fn(body: bytes | bytearray, content_type: str) -> dict[str, Any]:
    """Check and pass on a request body (SageMaker handler). The model's input size is not
    known here, so ``predict_fn`` decodes to that size (JPEG draft decoding needs it)."""
    ctype = (content_type or "").split(";")[0].strip().lower()
    if ctype not in SUPPORTED_CONTENT_TYPES:
        raise ValueError(
            f"Unsupported content type {content_type!r}; send one of {', '.join(SUPPORTED_CONTENT_TYPES)} "
            "with the image file's bytes as the body."
        )
    if not isinstance(body, (bytes, bytearray)) or not body:
        raise ValueError("Empty request body; send the bytes of a JPEG or PNG image.")
    body = bytes(body)
    try:
        with Image.open(io.BytesIO(body)) as img:
            img.load()  # validate here, so a bad body is the client's 4xx, not a model error
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ValueError(
            f"Could not decode the {ctype} request body ({len(body)} bytes) as an image: {exc}. "
            "Send the raw bytes of a JPEG or PNG file."
        ) from exc
    return {"image_bytes": body}


@torch.no_grad()
def predict_fn(data: Any, model: ServedModel) -> np.ndarray:
    """Class probabilities ``(N, C)`` with the fitted temperature applied.

    ``data`` is what :func:`input_fn` returned, a normalised float tensor ``(N, 3, S, S)``
    (from :func:`preprocess_array`), or a uint8 ``(N, S, S, 3)`` array.
    """
    if isinstance(data, dict) and "image_bytes" in data:
        x = preprocess_array(load_image_square(data["image_bytes"], model.image_size)[None], model)
    elif isinstance(data, np.ndarray):
        x = preprocess_array(data, model)
    elif isinstance(data, torch.Tensor):
        x = data if data.ndim == 4 else data[None]
    else:
        raise ValueError(f"predict_fn got {type(data).__name__}; expected input_fn output, array or tensor")
    model.eval()
    out = []
    for chunk in torch.split(x, 256):
        logits = model(chunk.to(model.device, torch.float32))
        out.append(torch.softmax(logits.float() / model.temperature, dim=1).cpu())
    probs = torch.cat(out).numpy().view(Probabilities)
    probs.classes, probs.arch = list(model.classes), str(model.config["arch"])
    return probs


class Probabilities(np.ndarray):
    """Class probabilities ``(N, C)`` that remember the class names and arch they belong to.

    SageMaker's ``output_fn`` does not receive the model, so the labels travel with the
    array; it is otherwise a plain ndarray (sums, argmax and indexing work as usual)."""

    classes: list[str]
    arch: str

    def __array_finalize__(self, obj: Any) -> None:
        self.classes = getattr(obj, "classes", [])
        self.arch = getattr(obj, "arch", "")


def output_fn(prediction: np.ndarray, accept: str | None = "application/json") -> str:
    """JSON ``{"predicted_class", "probabilities": {class: p}, "model_arch"}`` per image
    (a list when the request held several images)."""
    acc = (accept or "application/json").split(";")[0].strip().lower()
    if acc not in ("application/json", "*/*", ""):
        raise ValueError(f"Unsupported accept type {accept!r}; this endpoint answers application/json.")
    classes = list(getattr(prediction, "classes", []) or [])
    arch = getattr(prediction, "arch", "") or ""
    probs = np.asarray(prediction, dtype=np.float64)
    if probs.ndim == 1:
        probs = probs[None]
    if len(classes) != probs.shape[1]:
        raise ValueError(
            f"output_fn needs the Probabilities returned by predict_fn (with class names); got "
            f"{type(prediction).__name__} of shape {probs.shape}"
        )
    records = [
        {
            "predicted_class": classes[int(np.argmax(p))],
            "probabilities": {c: float(v) for c, v in zip(classes, p)},
            "model_arch": arch,
        }
        for p in probs
    ]
    return json.dumps(records[0] if len(records) == 1 else records)


# ---------------------------------------------------------------------------------------
# Helpers for monitoring and evaluation
# ---------------------------------------------------------------------------------------


@torch.no_grad()
def embed_fn(batch: torch.Tensor, model: nn.Module) -> np.ndarray:
    """Penultimate-layer embeddings ``(N, D)`` for a normalised NCHW batch (the head's input)."""
    net = _unwrap(model)
    device = next(net.parameters()).device
    captured: list[torch.Tensor] = []
    handle = head_layer(net).register_forward_hook(lambda _m, inp, _o: captured.append(inp[0].detach()))
    try:
        net.eval()
        for chunk in torch.split(batch, 256):
            net(chunk.to(device, torch.float32))
    finally:
        handle.remove()
    return torch.cat(captured).float().cpu().numpy()


def gradcam(model: nn.Module, tensor: torch.Tensor, class_idx: int | list[int] | torch.Tensor) -> np.ndarray:
    """Grad-CAM heat maps in [0, 1], shape ``(N, H, W)`` at the input resolution.

    Weights the last conv stage's activations by the spatially pooled gradient of the
    ``class_idx`` logit (Selvaraju et al. 2017).
    """
    net = _unwrap(model)
    device = next(net.parameters()).device
    x = (tensor if tensor.ndim == 4 else tensor[None]).to(device, torch.float32)
    idx = torch.as_tensor(class_idx, device=device).long().reshape(-1).expand(x.shape[0])
    store: dict[str, torch.Tensor] = {}

    def hook(_m: nn.Module, _i: Any, out: torch.Tensor) -> None:
        store["act"] = out
        out.register_hook(lambda g: store.__setitem__("grad", g))

    handle = feature_layer(net).register_forward_hook(hook)
    try:
        net.eval()
        with torch.enable_grad():
            logits = net(x)
            logits.gather(1, idx[:, None]).sum().backward()
    finally:
        handle.remove()
    act, grad = store["act"].detach(), store["grad"].detach()
    cam = F.relu((grad.mean(dim=(2, 3), keepdim=True) * act).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    flat = cam.flatten(1)
    lo, hi = flat.min(1, keepdim=True)[0], flat.max(1, keepdim=True)[0]
    cam = ((flat - lo) / (hi - lo).clamp_min(1e-8)).view_as(cam)
    net.zero_grad(set_to_none=True)
    return cam.cpu().numpy()
