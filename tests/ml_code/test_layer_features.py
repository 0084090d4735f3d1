"""``networks.layer_features``: the OOD feature ensemble's explicit forward pass, for every
network family a package ships, gives the same logits as the network and is safe to call from
concurrent request threads (no hooks, nothing stored on the module)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from ml_code.package.networks import (
    PENULTIMATE,
    build_network,
    head_layer,
    layer_features,
)

FAMILIES = {  # arch -> the layers it exposes and their widths (mean + std per channel: 2 C)
    "dermanet": {"stem": 64, "stage1": 64, "stage2": 128, "stage3": 256, PENULTIMATE: 256},
    "dermanet_d4": {"stem": 8, "stage1": 8, "stage2": 16, "stage3": 32, PENULTIMATE: 32},
    "efficientnet_lite0": {"stem": 64, "stage1": 32, "stage2": 48, "stage3": 80, "stage4": 160, "stage5": 224,
                           "stage6": 384, "stage7": 640, PENULTIMATE: 1280},
    "resnet18": {"stem": 128, "stage1": 128, "stage2": 256, "stage3": 512, PENULTIMATE: 512},
}


@pytest.mark.parametrize("arch", sorted(FAMILIES))
def test_features_come_from_the_forward_that_gives_the_logits(arch):
    torch.manual_seed(0)
    net = build_network(arch, 7, small_input=True).eval()
    x = torch.randn(5, 3, 64, 64)
    with torch.no_grad():
        feats = layer_features(net, x, rows=3)
        logits = net(x)
        alone = layer_features(net, x[1:2])
    assert {k: v.shape[1] for k, v in feats.items()} == FAMILIES[arch]
    assert feats[PENULTIMATE].shape[0] == 5 and all(v.shape[0] == 3 for k, v in feats.items() if k != PENULTIMATE)
    torch.testing.assert_close(head_layer(net)(feats[PENULTIMATE]), logits, rtol=1e-4, atol=1e-5)
    for name, f in alone.items():  # a row's features do not depend on the rest of its batch
        torch.testing.assert_close(f[0], feats[name][1], rtol=1e-4, atol=1e-5)
    stem_std = feats["stem"][:, feats["stem"].shape[1] // 2:]
    assert (stem_std >= 0).all()


def test_concurrent_calls_never_mix_activations():
    """Eight threads, each with its own images, get exactly the features of a call made alone."""
    torch.manual_seed(1)
    net = build_network("efficientnet_lite0", 7).eval()
    inputs = [torch.randn(2, 3, 64, 64) * (1 + i) for i in range(8)]
    with torch.no_grad():
        alone = [layer_features(net, x)["stem"] for x in inputs]

    def call(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return layer_features(net, x)["stem"]

    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(call, inputs))
    for a, b in zip(alone, together):
        torch.testing.assert_close(a, b)
