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

A model may carry a second, descriptor model (``descriptors.npz``, read by the sibling
``descriptors.py`` that ships with this file): boosted trees over colour/texture
descriptors and the clinical context (age, sex, body site). :func:`predict_images` fuses
its log-probabilities with the network's by the stacker fitted on validation at training
time (:func:`fuse_log_probs`); without clinical values it scores the image alone.
"""

from __future__ import annotations

import base64
import binascii
import importlib.util
import io
import json
import os
import sys
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image, UnidentifiedImageError
from torch import nn

SUPPORTED_CONTENT_TYPES = ("image/jpeg", "image/png", "application/x-image", "application/json")
#: Decoded-size cap of a request image: a 500 KB PNG of one colour can declare 13000 x 13000
#: pixels (well under Pillow's decompression-bomb limit) and cost a second and ~1 GB to decode.
#: 36 MP covers the largest ISIC Archive originals (6000 x 4000).
MAX_IMAGE_PIXELS = 36_000_000
#: Image files and pixel modes a request may carry. 16-bit and floating-point greyscale (I;16,
#: I, F) are refused: Pillow's RGB conversion clips them instead of scaling, so the network
#: would see a white square and answer confidently.
ACCEPTED_IMAGE_FORMATS = ("JPEG", "PNG")
ACCEPTED_IMAGE_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr")
#: ``application/json`` requests: the image base64-encoded plus optional clinical context.
JSON_REQUEST_FIELDS = ("image", "age", "sex", "anatom_site")
SEX_VALUES = ("male", "female", "unknown")
SUPPORTED_ARCHS = ("resnet18", "resnet34", "efficientnet_b0", "mobilenet_v3_small", "dermanet", "dermanet_d4")
#: Networks whose output is the same for all 8 flip/quarter-turn views: test-time views add nothing.
VIEW_INVARIANT_ARCHS = ("dermanet_d4",)

# ---------------------------------------------------------------------------------------
# Network definitions (shared with ml_code/models.py - keep in sync, see module docstring)
# ---------------------------------------------------------------------------------------


def _plain_conv(cin: int, cout: int, kernel: int = 3, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False)


class _ConvBNAct(nn.Sequential):
    """Conv, batch norm, ReLU; ``conv``/``norm`` build the layers (plain, or the D4 ones)."""

    def __init__(self, cin: int, cout: int, stride: int = 1, conv: Any = _plain_conv,
                 norm: Any = nn.BatchNorm2d) -> None:
        super().__init__(conv(cin, cout, 3, stride), norm(cout), nn.ReLU(inplace=True))


class _ResBlock(nn.Module):
    """Basic residual block; downsamples with a strided conv and a 1x1 projection."""

    def __init__(self, cin: int, cout: int, stride: int, conv: Any = _plain_conv, norm: Any = nn.BatchNorm2d) -> None:
        super().__init__()
        self.conv1 = _ConvBNAct(cin, cout, stride, conv, norm)
        self.conv2 = conv(cout, cout, 3, 1)
        self.bn2 = norm(cout)
        nn.init.zeros_(self.bn2.weight)  # residual branch starts as identity: stabler from scratch
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(conv(cin, cout, 1, stride), norm(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn2(self.conv2(self.conv1(x))) + self.shortcut(x), inplace=True)


def _residual_stages(block: Any, widths: tuple[int, ...]) -> nn.Sequential:
    """Four stages at x1, /2, /4, /8 of the stem's resolution, two residual blocks each."""
    stages, cin = [], widths[0]
    for i, w in enumerate(widths):
        stages.append(nn.Sequential(block(cin, w, 1 if i == 0 else 2), block(w, w, 1)))
        cin = w
    return nn.Sequential(*stages)


class DermaNet(nn.Module):
    """Compact, wide-ish ResNet for 32-96 px dermoscopy crops, trained from scratch.

    Why not a torchvision net: ImageNet stems downsample 4x before the first block, which
    throws away most of a 64 px lesion; this net keeps full resolution for a cheap stem and
    spends its compute on four stages (x1, /2, /4, /8) with widths ``widths``.
    """

    def __init__(self, num_classes: int, widths: tuple[int, ...] = (32, 64, 128, 256), dropout: float = 0.2) -> None:
        super().__init__()
        self.stem = nn.Sequential(_ConvBNAct(3, widths[0] // 2, stride=2), _ConvBNAct(widths[0] // 2, widths[0]))
        self.layers = _residual_stages(_ResBlock, widths)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.layers(self.stem(x))).flatten(1)
        return self.fc(self.dropout(x))


# D4-equivariant DermaNet. A lesion has no canonical orientation: the same lesion turned a
# quarter or mirrored is the same lesion. DermaNet learns that from augmentation and is
# averaged over the 8 views at test time; DermaNetD4 has it built in (group convolutions,
# Cohen & Welling 2016, as Veeling et al. 2018 did for pathology patches), so every filter
# is learnt once for all 8 orientations instead of once per orientation.


@lru_cache(maxsize=1)
def _d4_gather() -> tuple[tuple[int, ...], ...]:
    """``gather[g][h]`` = index of g^-1 h among the 8 :func:`dihedral_view` elements: the input
    orientation that the filter for output orientation g reads at h. Found by composing the
    views on an asymmetric probe (once; every D4 layer shares it)."""
    probe = torch.arange(9.0).reshape(3, 3) * torch.tensor([1.0, 10.0, 100.0])
    views = [dihedral_view(probe, g) for g in range(8)]
    comp = [[next(k for k in range(8) if torch.equal(dihedral_view(dihedral_view(probe, h), g), views[k]))
             for h in range(8)] for g in range(8)]
    inverse = [comp[g].index(0) for g in range(8)]
    return tuple(tuple(comp[inverse[g]][h] for h in range(8)) for g in range(8))


class _D4Conv(nn.Module):
    """Convolution on D4 feature maps: ``cin`` group channels of 8 orientations each
    (``lift=True``: a plain ``cin``-channel image) to ``cout`` group channels.

    The weight holds one filter per (cout, cin[, input orientation]); the forward pass
    expands it to the 8 transformed copies a plain conv2d needs, so the output of an input
    seen in view g is the output seen in view g with its orientations permuted. A stride
    pools 2x2 before convolving: unlike a strided 3x3 conv, that grid maps onto itself under
    every view of an even-sized map, so equivariance stays exact at 64 px.
    """

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, lift: bool = False) -> None:
        super().__init__()
        self.cin, self.cout, self.kernel, self.stride, self.lift = cin, cout, kernel, stride, lift
        orientations = 1 if lift else 8
        # 4-D (cout, cin * orientations, k, k) so that channels_last applies to it.
        self.weight = nn.Parameter(torch.empty(cout, cin * orientations, kernel, kernel))
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")
        self.weight.data.mul_(8 ** -0.5)  # the expanded conv fans out to 8 x cout channels
        self.register_buffer("gather", torch.tensor(_d4_gather()), persistent=False)
        self._served_weight: tuple[tuple, torch.Tensor] | None = None

    def expanded_weight(self) -> torch.Tensor:
        k = self.kernel
        if self.lift:
            w = self.weight.reshape(self.cout, self.cin, k, k)
            return torch.stack([dihedral_view(w, g) for g in range(8)], 1).reshape(self.cout * 8, self.cin, k, k)
        w = self.weight.reshape(self.cout, self.cin, 8, k, k)
        copies = [dihedral_view(w[:, :, self.gather[g]], g) for g in range(8)]
        return torch.stack(copies, 1).reshape(self.cout * 8, self.cin * 8, k, k)

    def _weight(self) -> torch.Tensor:
        """The expanded weight; when serving (eval, no autograd) built once and kept until the
        weight changes, so a single-image request does not rebuild the 8 copies each time."""
        if self.training or torch.is_grad_enabled():
            self._served_weight = None
            return self.expanded_weight()
        key = (self.weight.data_ptr(), self.weight._version, self.weight.device)
        if self._served_weight is None or self._served_weight[0] != key:
            self._served_weight = (key, self.expanded_weight())
        return self._served_weight[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = F.avg_pool2d(x, self.stride)
        return F.conv2d(x, self._weight(), padding=self.kernel // 2)


class _D4BatchNorm(nn.BatchNorm2d):
    """Batch norm with one scale/shift per group channel, shared by its 8 orientations."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c8, h, w = x.shape
        return super().forward(x.reshape(b, c8 // 8, 8 * h, w)).reshape(b, c8, h, w)


class DermaNetD4(nn.Module):
    """DermaNet with D4 group convolutions, pooled over space and orientation at the end, so
    its output is the same for all 8 views of an image (exactly, at even sizes).

    ``widths`` counts group channels; each is 8 feature maps, so (4, 8, 16, 32) has the
    feature-map widths and compute of DermaNet's (32, 64, 128, 256) with 1/8 of its weights.
    """

    def __init__(self, num_classes: int, widths: tuple[int, ...] = (4, 8, 16, 32), dropout: float = 0.2) -> None:
        super().__init__()
        half = max(widths[0] // 2, 1)
        d4 = {"conv": _D4Conv, "norm": _D4BatchNorm}
        self.stem = nn.Sequential(_ConvBNAct(3, half, 2, partial(_D4Conv, lift=True), _D4BatchNorm),
                                  _ConvBNAct(half, widths[0], **d4))
        self.layers = _residual_stages(partial(_ResBlock, **d4), widths)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem(x))
        b, c8, h, w = x.shape
        x = x.reshape(b, c8 // 8, 8 * h * w).mean(-1)  # over space and orientation: view-invariant
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
    if arch == "dermanet_d4":
        return DermaNetD4(num_classes)
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
    if isinstance(net, (DermaNet, DermaNetD4)):
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
        # The test-time views the temperature and fusion were fitted on: what the endpoint
        # serves by default (packages from before this key served one view).
        self.tta_views = check_views(int(config.get("tta_views", 1)), "model_config.json tta_views")
        self.register_buffer("mean", torch.tensor(config["mean"], dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(config["std"], dtype=torch.float32).view(1, 3, 1, 1))
        self.descriptor_model: Any = None  # descriptors.BoostedTrees, when the package has one
        self.fusion: dict[str, Any] | None = None

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for already-normalised NCHW input."""
        return self.net(x)


def _load_descriptors_module() -> Any:
    """The ``descriptors.py`` that sits next to this file: ``code/descriptors.py`` in
    ``model.tar.gz`` (the container has no ``ml_code``), ``ml_code/descriptors.py`` in the repo."""
    name = f"{__name__}_descriptors"
    if name in sys.modules:
        return sys.modules[name]
    path = Path(__file__).with_name("descriptors.py")
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing: model.tar.gz must ship code/descriptors.py with code/inference.py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def fuse_log_probs(cnn_log_probs: np.ndarray, descriptor_log_probs: np.ndarray, fusion: dict[str, Any]) -> np.ndarray:
    """Fused class probabilities ``softmax(a * log p_cnn + w * log p_descriptors + b)``.

    ``a``, ``w`` and the per-class bias ``b`` (``fusion``: ``cnn_scale``, ``descriptor_scale``,
    ``class_bias``) are fitted on validation by ``ml_code.train``: a logistic-regression
    stacker, which also calibrates, so no separate temperature applies to fused output.
    """
    z = (float(fusion["cnn_scale"]) * np.asarray(cnn_log_probs, np.float64)
         + float(fusion["descriptor_scale"]) * np.asarray(descriptor_log_probs, np.float64)
         + np.asarray(fusion["class_bias"], np.float64)[None, :])
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


def check_views(views: int, name: str = "views") -> int:
    """``views`` if it is a valid number of test-time views (1..8), else a clear error naming
    the setting (``name``) that gave it."""
    if not 1 <= views <= 8:
        raise ValueError(f"{name} must be 1..8 (test-time views of the D4 group), got {views}")
    return views


def view_order(views: int) -> list[int]:
    """Which :func:`dihedral_view` indices ``views`` test-time views use: 2 is identity +
    hflip, otherwise the first ``views`` (8 = every flip x quarter turn). Training fits the
    temperature and fusion on the same views the endpoint then serves."""
    return [0, 4] if check_views(views) == 2 else list(range(views))


def dihedral_view(x: torch.Tensor, v: int) -> torch.Tensor:
    """The ``v``-th element of the dihedral group D4 (v < 8): ``v % 4`` quarter turns, hflip if ``v >= 4``.
    Lesions have no canonical orientation, so these are the test-time-augmentation views."""
    y = torch.rot90(x, v % 4, dims=(-2, -1)) if v % 4 else x
    return y.flip(-1) if v >= 4 else y


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
    desc = config.get("descriptors")
    if desc:
        module = _load_descriptors_module()
        if int(desc.get("version", 0)) != module.DESCRIPTOR_VERSION:
            raise ValueError(f"{config_path} wants descriptor version {desc.get('version')} but the shipped "
                             f"descriptors.py computes version {module.DESCRIPTOR_VERSION}; re-package the model")
        model.descriptor_model = module.BoostedTrees.load(model_dir / desc["file"])
        model.fusion = dict(config["fusion"])
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
    known here, so ``predict_fn`` decodes to that size (JPEG draft decoding needs it).

    Image content types carry the file's bytes. ``application/json`` carries
    ``{"image": "<base64 JPEG/PNG>", "age": 63, "sex": "female", "anatom_site": "back"}``;
    the clinical fields are optional (null or absent = unknown) and feed the descriptor model.
    """
    ctype = (content_type or "").split(";")[0].strip().lower()
    if ctype not in SUPPORTED_CONTENT_TYPES:
        raise ValueError(
            f"Unsupported content type {content_type!r}; send one of {', '.join(SUPPORTED_CONTENT_TYPES)} "
            "with the image file's bytes as the body."
        )
    if not isinstance(body, (bytes, bytearray)) or not body:
        raise ValueError("Empty request body; send the bytes of a JPEG or PNG image.")
    body = bytes(body)
    clinical = None
    if ctype == "application/json":
        body, clinical = _parse_json_request(body)
    undecodable = (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError)
    try:
        img = Image.open(io.BytesIO(body))
    except undecodable as exc:
        raise _undecodable(ctype, body, exc) from exc
    with img:
        _check_request_image(img)
        try:
            img.load()  # validate here, so a bad body is the client's 4xx, not a model error
        except undecodable as exc:
            raise _undecodable(ctype, body, exc) from exc
    return {"image_bytes": body, "clinical": clinical}


def _undecodable(ctype: str, body: bytes, exc: BaseException) -> ValueError:
    # Pillow's "cannot identify image file <_io.BytesIO object at 0x...>" says nothing useful.
    detail = "not a JPEG or PNG file" if isinstance(exc, UnidentifiedImageError) else str(exc)
    return ValueError(f"Could not decode the {ctype} request body ({len(body)} bytes) as an image: {detail}. "
                      "Send the raw bytes of a JPEG or PNG file.")


def _check_request_image(img: Image.Image) -> None:
    """Refuse, before decoding pixels, what the model cannot read faithfully or cheaply."""
    if img.format not in ACCEPTED_IMAGE_FORMATS:
        raise ValueError(f"The request image is {img.format or 'of an unknown format'}; send a JPEG or PNG file.")
    w, h = img.size
    if w * h > MAX_IMAGE_PIXELS:
        raise ValueError(f"The request image is {w} x {h} pixels, more than {MAX_IMAGE_PIXELS:,}; downscale it "
                         "(the model reads it at under 100 px) and send it again.")
    if img.mode not in ACCEPTED_IMAGE_MODES:
        raise ValueError(f"The request image has pixel mode {img.mode} (e.g. 16-bit or floating-point greyscale), "
                         "which would be clipped, not scaled; send an 8-bit-per-channel JPEG or PNG.")


def _parse_json_request(body: bytes) -> tuple[bytes, dict[str, Any]]:
    try:
        request = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"application/json body is not valid JSON: {exc}") from exc
    if not isinstance(request, dict) or not isinstance(request.get("image"), str):
        raise ValueError('application/json body must be an object with "image": the base64 of a JPEG or PNG file '
                         '(optional: "age", "sex", "anatom_site")')
    unknown = sorted(set(request) - set(JSON_REQUEST_FIELDS))
    if unknown:
        raise ValueError(f"unknown fields {unknown} in the JSON request; allowed: {', '.join(JSON_REQUEST_FIELDS)}")
    try:
        image = base64.b64decode(request["image"], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f'"image" is not valid base64: {exc}') from exc
    if not image:
        raise ValueError('"image" is empty; send the base64 of a JPEG or PNG file')
    age = request.get("age")
    if age is not None and (isinstance(age, bool) or not isinstance(age, (int, float)) or not 0 <= age <= 120):
        raise ValueError(f'"age" must be a number of years in 0-120 or null, got {age!r}')
    for key in ("sex", "anatom_site"):
        if request.get(key) is not None and not isinstance(request[key], str):
            raise ValueError(f'"{key}" must be a string or null, got {request[key]!r}')
    # A value outside the vocabulary is refused rather than read as unknown: "F" silently
    # scored as "sex unknown" would change the answer without anyone noticing.
    sex, site = request.get("sex"), request.get("anatom_site")
    if sex is not None and sex.strip().lower() not in SEX_VALUES:
        raise ValueError(f'"sex" must be one of {", ".join(SEX_VALUES)} or null, got {sex[:40]!r} (abbreviations '
                         'are not guessed)')
    sites = _known_sites()
    if site is not None and sites and site.strip().lower() not in sites:
        raise ValueError(f'"anatom_site" {site[:40]!r} is not a body site this model knows; send a HAM10000 '
                         f'localization or an ISIC anatom_site_general value ({", ".join(sorted(sites))}) or null')
    return image, {"age": age, "sex": sex, "site": site}


def _known_sites() -> frozenset[str] | None:
    """Body-site values the descriptor model maps (both archives' vocabularies, plus "unknown");
    None when this package has no descriptor model, which ignores the site anyway."""
    try:
        return _load_descriptors_module().KNOWN_SITES | {"unknown"}
    except FileNotFoundError:
        return None


def predict_fn(data: Any, model: ServedModel) -> np.ndarray:
    """Class probabilities ``(N, C)``: what the endpoint serves.

    ``data`` is what :func:`input_fn` returned, a uint8 ``(N, S, S, 3)`` array, or a dict
    ``{"images": uint8 array, "clinical": (N, M) array or None, "views": 1..8 or None,
    "network_only": bool}`` (batch scoring with clinical context; ``views`` overrides the
    package's test-time views, ``network_only`` is for ablations): all go through
    :func:`predict_images`, so the descriptor model is fused in when the package has one.
    A normalised float tensor ``(N, 3, S, S)`` gets the network's temperature-scaled
    probabilities only (no pixels left for descriptors; Grad-CAM titles use this).
    """
    if isinstance(data, dict) and "image_bytes" in data:
        context, clinical = data.get("clinical"), None
        if context and model.descriptor_model is not None:
            clinical = _load_descriptors_module().clinical_features([context.get("age")], [context.get("sex")],
                                                                    [context.get("site")])
        probs = predict_images(load_image_square(data["image_bytes"], model.image_size)[None], model, clinical)
    elif isinstance(data, dict) and "images" in data:
        views = data.get("views")
        probs = predict_images(data["images"], model, data.get("clinical"), None if views is None else int(views),
                               network_only=bool(data.get("network_only", False)))
    elif isinstance(data, np.ndarray):
        probs = predict_images(data, model)
    elif isinstance(data, torch.Tensor):
        x = data if data.ndim == 4 else data[None]
        probs = np.exp(_network_log_probs(x, model, 1, model.temperature))
    else:
        raise ValueError(f"predict_fn got {type(data).__name__}; expected input_fn output, array, dict or tensor")
    out = np.asarray(probs, dtype=np.float32).view(Probabilities)
    out.classes, out.arch = list(model.classes), str(model.config["arch"])
    return out


@torch.no_grad()
def _network_log_probs(x: torch.Tensor, model: ServedModel, views: int, temperature: float) -> np.ndarray:
    """log of the network's softmax(logits / T), averaged over ``views`` D4 views (:func:`view_order`).

    The views of a chunk go through the network as one batch (at most 256 views a pass): a
    single-image request then costs one forward pass of 8 rather than 8 passes of 1, about
    twice as fast on 2 CPU cores (``benchmarks/tta_latency.py``). Eval-mode batch norm makes each
    row independent of its batch, so the result is the per-view loop's.
    """
    order = view_order(views)
    model.eval()
    out = []
    for chunk in torch.split(x, max(1, 256 // len(order))):
        chunk = chunk.to(model.device, torch.float32)
        logits = model(torch.cat([dihedral_view(chunk, v) for v in order])).float() / temperature
        out.append(torch.softmax(logits, dim=1).view(len(order), len(chunk), -1).mean(0).cpu())
    return torch.log(torch.cat(out).clamp_min(1e-12)).numpy().astype(np.float64)


def predict_images(images: np.ndarray, model: ServedModel, clinical: np.ndarray | None = None,
                   views: int | None = None, network_only: bool = False) -> np.ndarray:
    """Probabilities ``(N, C)`` for uint8 ``(N, S, S, 3)`` images at the model's size.

    With a descriptor model: the fused output (:func:`fuse_log_probs`), ``clinical`` being
    ``descriptors.clinical_features`` rows (None = unknown). Without: the network's
    temperature-scaled softmax (also with ``network_only``). ``views`` averages the network
    over D4 views; None serves the package's own ``tta_views`` (what its fusion was fitted on).
    """
    views = model.tta_views if views is None else views
    x = preprocess_array(images, model)
    if model.descriptor_model is None or model.fusion is None or network_only:
        return np.exp(_network_log_probs(x, model, views, model.temperature))
    cnn = _network_log_probs(x, model, views, 1.0)
    module = _load_descriptors_module()
    desc = model.descriptor_model.log_proba(module.descriptor_matrix(np.asarray(images), clinical))
    return fuse_log_probs(cnn, desc, model.fusion)


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
