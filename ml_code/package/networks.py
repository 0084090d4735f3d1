"""The lesion classifier's network definitions: one place for training and serving.

Training (``ml_code.training.models.build_model``) and the served package build their
networks through :func:`build_network`, so a state_dict saved by training always loads when
served. Ships inside ``model.tar.gz``: torch and torchvision only.
"""

from __future__ import annotations

from functools import lru_cache, partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .efficientnet_lite import ARCH_NAMES as LITE_ARCHS
from .efficientnet_lite import EfficientNetLite, build_efficientnet_lite
from .views import dihedral_view

#: ImageNet-pretrained EfficientNet-Lite (ml_code/package/efficientnet_lite.py): the real-data model.
PRETRAINED_ARCHS = LITE_ARCHS
SUPPORTED_ARCHS = ("resnet18", "resnet34", "efficientnet_b0", "mobilenet_v3_small", "dermanet", "dermanet_d4",
                   *LITE_ARCHS)
#: Networks whose output is the same for all 8 flip/quarter-turn views: test-time views add nothing.
VIEW_INVARIANT_ARCHS = ("dermanet_d4",)


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

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate embedding ``(N, widths[-1])``: the head's input."""
        return self.pool_map(self.layers(self.stem(x)))

    def pool_map(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's map ``(N, widths[-1], h, w)`` averaged to the embedding."""
        return self.pool(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.embed(x)))


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

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate embedding ``(N, widths[-1])``: the head's input."""
        return self.pool_map(self.layers(self.stem(x)))

    def pool_map(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's map averaged over space and orientation: view-invariant."""
        b, c8, h, w = x.shape
        return x.reshape(b, c8 // 8, 8 * h * w).mean(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.embed(x)))


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
    if arch in LITE_ARCHS:
        return build_efficientnet_lite(arch.removeprefix("efficientnet_"), num_classes)
    # torchvision only here: importing it pulls in sympy and triton (160 MB resident), which a
    # DermaNet package (and the drift monitor embedding with one) never needs
    import torchvision

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


def penultimate(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The embedding ``(N, D)`` the head reads (``head_layer(net)(penultimate(net, x))`` equals
    ``net(x)`` in eval mode), computed without forward hooks, so concurrent requests of a
    threaded endpoint cannot see each other's activations. ``D``: 1280 for EfficientNet-Lite,
    512 for resnet18/34, ``widths[-1]`` for DermaNet."""
    if hasattr(net, "embed"):  # DermaNet, DermaNetD4, EfficientNetLite
        return net.embed(x)
    if hasattr(net, "layer4"):  # torchvision resnets: every child but the fc head
        for name, child in net.named_children():
            if name != "fc":
                x = child(x)
        return torch.flatten(x, 1)
    if hasattr(net, "features") and hasattr(net, "classifier"):  # efficientnet_b0, mobilenet_v3_small
        return net.classifier[:-1](torch.flatten(net.avgpool(net.features(x)), 1))
    raise ValueError(f"No penultimate embedding known for {type(net).__name__}")


#: The penultimate embedding's name among :func:`layer_features`' outputs.
PENULTIMATE = "penultimate"


def pooled_stats(x: torch.Tensor, rows: int | None = None, orientations: bool = False) -> torch.Tensor:
    """Per-channel spatial mean and standard deviation ``(rows, 2 C)`` of the first ``rows`` maps of
    ``x`` ``(N, C, H, W)`` (all when None): the low-level statistics of a layer (a flat image's
    maps have almost no spatial spread) that the penultimate average hides. ``orientations``: D4
    maps (``C`` = 8 x group channels), pooled over each group channel's 8 orientations too."""
    x = x[:rows].float()
    b, c = x.shape[:2]
    flat = x.reshape(b, c // 8, -1) if orientations else x.reshape(b, c, -1)
    return torch.cat([flat.mean(-1), flat.std(-1, unbiased=False)], 1)


def layer_features(net: nn.Module, x: torch.Tensor, rows: int | None = None) -> dict[str, torch.Tensor]:
    """Features at several depths from ONE forward pass, for the OOD feature ensemble
    (``ml_code/package/ood.py``): ``{PENULTIMATE: (N, D)}`` (the head's input for every row, as
    :func:`penultimate`, so ``head_layer(net)`` applied to it gives the logits) plus, for the
    first ``rows`` rows, :func:`pooled_stats` ``(rows, 2 C_i)`` at the stem and at the end of every
    stage but the one the penultimate average reads: ``"stem", "stage1", ...`` (DermaNet and
    DermaNetD4: stem + 3 stages; EfficientNet-Lite: stem + 7 stages; torchvision resnets: stem +
    layer1-3; other torchvision nets: the penultimate only). Computed by an explicit forward, not
    hooks, so concurrent requests of a threaded endpoint never see each other's activations."""
    taps: dict[str, torch.Tensor] = {}
    if isinstance(net, (DermaNet, DermaNetD4)):
        d4 = isinstance(net, DermaNetD4)
        h = net.stem(x)
        taps["stem"] = pooled_stats(h, rows, d4)
        for i, stage in enumerate(net.layers):
            h = stage(h)
            if i < len(net.layers) - 1:
                taps[f"stage{i + 1}"] = pooled_stats(h, rows, d4)
        return {PENULTIMATE: net.pool_map(h), **taps}
    if isinstance(net, EfficientNetLite):
        head, stages = net.forward_stages(x)
        taps = {("stem" if i == 0 else f"stage{i}"): pooled_stats(m, rows) for i, m in enumerate(stages)}
        return {PENULTIMATE: head.mean(dim=(2, 3)), **taps}
    if hasattr(net, "layer4") and hasattr(net, "fc"):  # torchvision resnets
        h = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        taps["stem"] = pooled_stats(h, rows)
        for i, name in enumerate(("layer1", "layer2", "layer3")):
            h = getattr(net, name)(h)
            taps[f"stage{i + 1}"] = pooled_stats(h, rows)
        return {PENULTIMATE: torch.flatten(net.avgpool(net.layer4(h)), 1), **taps}
    return {PENULTIMATE: penultimate(net, x)}


def feature_layer(net: nn.Module) -> nn.Module:
    """The last convolutional stage, whose activations Grad-CAM explains."""
    if isinstance(net, (DermaNet, DermaNetD4)):
        return net.layers[-1]
    if isinstance(net, EfficientNetLite):
        return net.feature_layer()
    if hasattr(net, "layer4"):
        return net.layer4
    if hasattr(net, "features"):
        return net.features[-1]
    raise ValueError(f"No Grad-CAM layer known for {type(net).__name__}")

