"""The served model: network + normalisation + temperature + optional descriptor model.

Ships inside ``model.tar.gz``. Besides loading (:func:`load_model`) and scoring
(:func:`predict_images`) it holds what other stages reuse so that everything sees exactly what
the endpoint serves:

- :func:`preprocess_array` - uint8 NHWC arrays (the preprocess job's format) -> model input;
- :func:`embed_fn` - penultimate-layer embeddings (monitoring builds drift baselines on them);
- :func:`ood_features_fn` - the features at several depths the package's out-of-distribution
  statistics (:mod:`ood`) are fitted on;
- :func:`gradcam` - class-activation heat maps (the evaluation job's Grad-CAM grid).

A model may carry a second, descriptor model (``descriptors.npz``, read by the sibling
:mod:`descriptors`): boosted trees over colour/texture descriptors and the clinical context
(age, sex, body site). :func:`predict_images` fuses its log-probabilities with the network's by
the stacker fitted on validation at training time (:func:`fuse_log_probs`); without clinical
values it scores the image alone.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import descriptors
from .networks import (
    PENULTIMATE,
    build_network,
    feature_layer,
    head_layer,
    layer_features,
    penultimate,
)
from .ood import MahalanobisOOD
from .views import check_views, dihedral_view, view_order


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
        self.ood: MahalanobisOOD | None = None  # ood.npz, when the package has OOD statistics

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for already-normalised NCHW input."""
        return self.net(x)



def fuse_log_probs(cnn_log_probs: np.ndarray, descriptor_log_probs: np.ndarray, fusion: dict[str, Any]) -> np.ndarray:
    """Fused class probabilities ``softmax(a * log p_cnn + w * log p_descriptors + b)``.

    ``a``, ``w`` and the per-class bias ``b`` (``fusion``: ``cnn_scale``, ``descriptor_scale``,
    ``class_bias``) are fitted on validation by ``ml_code.training.train``: a logistic-regression
    stacker, which also calibrates, so no separate temperature applies to fused output.
    """
    z = (float(fusion["cnn_scale"]) * np.asarray(cnn_log_probs, np.float64)
         + float(fusion["descriptor_scale"]) * np.asarray(descriptor_log_probs, np.float64)
         + np.asarray(fusion["class_bias"], np.float64)[None, :])
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)



def _unwrap(model: nn.Module) -> nn.Module:
    return model.net if isinstance(model, ServedModel) else model



def load_model(model_dir: str | os.PathLike) -> ServedModel:
    """Load ``model_config.json`` + ``model.pt`` (+ the descriptor model) from ``model_dir``."""
    model_dir = Path(model_dir)
    config_path, weights_path = model_dir / "model_config.json", model_dir / "model.pt"
    for path in (config_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(
                f"{path.name} not found in {model_dir}; model.tar.gz must hold model.pt and "
                "model_config.json at its root (written by ml_code.training.train)."
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
        if int(desc.get("version", 0)) != descriptors.DESCRIPTOR_VERSION:
            raise ValueError(f"{config_path} wants descriptor version {desc.get('version')} but the shipped "
                             f"descriptors.py computes version {descriptors.DESCRIPTOR_VERSION}; re-package the model")
        model.descriptor_model = descriptors.BoostedTrees.load(model_dir / desc["file"])
        model.fusion = dict(config["fusion"])
    ood = config.get("ood")
    if ood:
        model.ood = MahalanobisOOD.load(model_dir / ood["file"])
    model.to(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    # channels_last, as the network trained: on two CPU cores the HAM10000 package (EfficientNet-Lite0,
    # 96 px) scores 256 test images x 8 views in 23.4 s against 35.0 s contiguous (1.49x), with
    # probabilities within 2.4e-7 (benchmarks/serving_memory_format.py; docs/PERFORMANCE.md).
    model.net.to(memory_format=torch.channels_last)
    model.eval()
    return model



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



@torch.no_grad()
def network_log_probs(x: torch.Tensor, model: ServedModel, views: int, temperature: float,
                      features: list[dict[str, np.ndarray]] | None = None) -> np.ndarray:
    """log of the network's softmax(logits / T), averaged over ``views`` D4 views (:func:`view_order`).

    With ``features`` (a list), the identity view's :func:`networks.layer_features` of each chunk
    (``{layer name: (n, D_l)}``) are appended to it, from the same forward pass (the head is
    applied to its penultimate embedding), so the OOD score costs no extra pass.

    The views of a chunk go through the network as one batch (at most 256 views a pass): a
    single-image request then costs one forward pass of 8 rather than 8 passes of 1, about
    twice as fast on 2 CPU cores (``benchmarks/tta_latency.py``). Eval-mode batch norm makes each
    row independent of its batch, so the result is the per-view loop's.
    """
    return network_log_probs_at(x, model, views, (temperature,), features)[0]


@torch.no_grad()
def network_log_probs_at(x: torch.Tensor, model: ServedModel, views: int, temperatures: tuple[float, ...],
                         features: list[dict[str, np.ndarray]] | None = None) -> list[np.ndarray]:
    """:func:`network_log_probs` at each of ``temperatures`` from ONE forward pass of the views
    (evaluation's ablations need the network at T = 1 for the fusion and at its own T alone);
    each entry is what :func:`network_log_probs` gives for that temperature, to the bit."""
    order = view_order(views)
    model.eval()
    out: list[list[torch.Tensor]] = [[] for _ in temperatures]
    for chunk in torch.split(x, max(1, 256 // len(order))):
        chunk = chunk.to(model.device, torch.float32)
        batch = torch.cat([dihedral_view(chunk, v) for v in order])
        if features is None:
            logits = model(batch).float()
        else:  # order[0] is the identity view: the first len(chunk) rows are the images as sent
            layers = layer_features(model.net, batch, rows=len(chunk))
            emb = layers[PENULTIMATE]
            features.append({name: f[: len(chunk)].float().cpu().numpy() for name, f in layers.items()})
            logits = head_layer(model.net)(emb).float()
        for t, temperature in enumerate(temperatures):
            out[t].append(torch.softmax(logits / temperature, dim=1).view(len(order), len(chunk), -1).mean(0).cpu())
    return [torch.log(torch.cat(parts).clamp_min(1e-12)).numpy().astype(np.float64) for parts in out]


def predict_images(images: np.ndarray, model: ServedModel, clinical: np.ndarray | None = None,
                   views: int | None = None, network_only: bool = False,
                   features: list[dict[str, np.ndarray]] | None = None,
                   ablations: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """Probabilities ``(N, C)`` for uint8 ``(N, S, S, 3)`` images at the model's size.

    With a descriptor model: the fused output (:func:`fuse_log_probs`), ``clinical`` being
    ``descriptors.clinical_features`` rows (None = unknown). Without: the network's
    temperature-scaled softmax (also with ``network_only``). ``views`` averages the network
    over D4 views; None serves the package's own ``tta_views`` (what its fusion was fitted on).
    ``features``: see :func:`network_log_probs` (the OOD score's input).

    ``ablations`` (a dict, for evaluation): filled with ``image_only`` (fused without clinical
    context, what a bare image gets) and ``network_only`` (the network alone), each what this
    function returns for that request, from the same network pass: evaluating a package with
    its ablations then costs one pass over the test images, not three.
    """
    views = model.tta_views if views is None else views
    x = preprocess_array(images, model)
    if model.descriptor_model is None or model.fusion is None or network_only:
        probs = np.exp(network_log_probs(x, model, views, model.temperature, features))
        if ablations is not None:
            ablations.update(image_only=probs, network_only=probs)
        return probs
    matrix = descriptors.descriptor_matrix(np.asarray(images), clinical)
    if ablations is None:
        cnn = network_log_probs(x, model, views, 1.0, features)
    else:
        cnn, alone = network_log_probs_at(x, model, views, (1.0, model.temperature), features)
        bare = matrix.copy()  # the same image descriptors (computed once), the clinical columns unknown
        bare[:, -len(descriptors.CLINICAL_FEATURES):] = np.nan
        ablations.update(network_only=np.exp(alone), image_only=fuse_log_probs(
            cnn, model.descriptor_model.log_proba(bare), model.fusion))
    return fuse_log_probs(cnn, model.descriptor_model.log_proba(matrix), model.fusion)



class Probabilities(np.ndarray):
    """Class probabilities ``(N, C)`` that remember the class names and arch they belong to,
    and each image's OOD score and flag (``ood_scores``, ``in_distribution``: ``(N,)`` arrays,
    None when the package has no OOD statistics).

    SageMaker's ``output_fn`` does not receive the model, so these travel with the
    array; it is otherwise a plain ndarray (sums, argmax and indexing work as usual)."""

    classes: list[str]
    arch: str
    ood_scores: np.ndarray | None
    in_distribution: np.ndarray | None
    ablations: dict[str, np.ndarray] | None
    """Evaluation only (``predict_fn``'s ``"ablations"``): ``image_only`` and ``network_only`` (N, C)."""

    def __array_finalize__(self, obj: Any) -> None:
        self.classes = getattr(obj, "classes", [])
        self.arch = getattr(obj, "arch", "")
        self.ood_scores = getattr(obj, "ood_scores", None)
        self.in_distribution = getattr(obj, "in_distribution", None)
        self.ablations = getattr(obj, "ablations", None)


@torch.no_grad()
def embed_fn(batch: torch.Tensor, model: nn.Module) -> np.ndarray:
    """Penultimate-layer embeddings ``(N, D)`` for a normalised NCHW batch (the head's input;
    :func:`networks.penultimate`, no hooks, so safe beside concurrent requests)."""
    net = _unwrap(model)
    device = next(net.parameters()).device
    net.eval()
    out = [penultimate(net, chunk.to(device, torch.float32)).float().cpu() for chunk in torch.split(batch, 256)]
    return torch.cat(out).numpy() if out else np.zeros((0, head_layer(net).in_features), np.float32)


@torch.no_grad()
def ood_features_fn(batch: torch.Tensor, model: nn.Module) -> dict[str, np.ndarray]:
    """:func:`networks.layer_features` ``{layer name: (N, D_l)}`` of a normalised NCHW batch, in
    chunks of 256 (what the OOD statistics are fitted on; the endpoint gets the same from its
    forward pass in :func:`network_log_probs`)."""
    net = _unwrap(model)
    device = next(net.parameters()).device
    net.eval()
    out: dict[str, list[np.ndarray]] = {}
    for chunk in torch.split(batch, 256):
        for name, f in layer_features(net, chunk.to(device, torch.float32)).items():
            out.setdefault(name, []).append(f.float().cpu().numpy())
    return {name: np.concatenate(parts) for name, parts in out.items()}


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
