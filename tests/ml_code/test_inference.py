"""The SageMaker handlers in ml_code/inference.py, on real JPEG/PNG bytes."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ml_code import CLASSES
from ml_code.package import inference
from ml_code.package import views as d4
from ml_code.package import image_policy
from ml_code.package import networks
from ml_code.package import model as package_model
from ml_code.package.drift_embedding import valid_answer_embedding
from ml_code.training import models
from ml_code.training.packaging import write_model_dir

SIZE = 24


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A model dir exactly as train.py writes it (random weights: the handlers, not accuracy, are under test)."""
    torch.manual_seed(0)
    net = models.build_model("resnet18", len(CLASSES), small_input=True)
    folder = tmp_path_factory.mktemp("model")
    config = {"arch": "resnet18", "classes": list(CLASSES), "image_size": SIZE, "mean": [0.7, 0.55, 0.6],
              "std": [0.15, 0.15, 0.17], "temperature": 1.7, "small_input": True}
    write_model_dir(folder, net.state_dict(), config)
    return folder


@pytest.fixture(scope="module")
def served(model_dir):
    return inference.model_fn(str(model_dir))


def image_bytes(fmt: str, size=(200, 150), mode="RGB") -> bytes:
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8)
    img = Image.fromarray(arr).convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize("arch", models.ARCHS)
@pytest.mark.parametrize("small_input", [False, True])
def test_served_builder_matches_training_builder(arch, small_input):
    """models.build_model (training) and networks.build_network (serving) must stay in sync."""
    trained = models.build_model(arch, 7, small_input=small_input).state_dict()
    served = networks.build_network(arch, 7, small_input=small_input).state_dict()
    assert list(trained) == list(served)
    assert all(trained[k].shape == served[k].shape for k in trained)


@pytest.mark.parametrize("fmt,ctype", [("JPEG", "image/jpeg"), ("PNG", "image/png"), ("PNG", "application/x-image")])
def test_handlers_end_to_end(served, fmt, ctype):
    data = inference.input_fn(image_bytes(fmt), ctype)
    probs = inference.predict_fn(data, served)
    assert probs.shape == (1, len(CLASSES))
    assert probs.sum() == pytest.approx(1.0, abs=1e-5)
    body = json.loads(inference.output_fn(probs, "application/json"))
    assert set(body) == {"predicted_class", "probabilities", "model_arch", "ood_score", "in_distribution",
                         "image_features", "drift_embedding"}
    assert valid_answer_embedding(body["drift_embedding"]) is not None  # resnet18's 512 numbers, projected
    assert body["ood_score"] is None and body["in_distribution"] is None  # a package without OOD statistics
    assert list(body["probabilities"]) == list(CLASSES)
    assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert body["predicted_class"] == max(body["probabilities"], key=body["probabilities"].get)
    assert body["model_arch"] == "resnet18"


def test_png_with_alpha_and_grayscale_are_accepted(served):
    for mode in ("RGBA", "L"):
        probs = inference.predict_fn(inference.input_fn(image_bytes("PNG", mode=mode), "image/png"), served)
        assert probs.sum() == pytest.approx(1.0, abs=1e-5)


def test_temperature_is_applied(served):
    x = package_model.preprocess_array(np.full((2, SIZE, SIZE, 3), 128, np.uint8), served)
    logits = served(x.to(served.device)).detach().cpu()
    expected = torch.softmax(logits / 1.7, 1).numpy()
    np.testing.assert_allclose(inference.predict_fn(x, served), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("views", [1, 2, 8])
def test_views_batched_in_one_pass_equal_a_pass_per_view(served, views):
    """40 images x 8 views crosses the 256-view chunk boundary; each row must not depend on
    the others in its batch (eval-mode batch norm), so batching changes nothing."""
    rng = np.random.default_rng(3)
    x = package_model.preprocess_array(rng.integers(0, 255, (40, SIZE, SIZE, 3), dtype=np.uint8), served)
    with torch.no_grad():
        per_view = sum(torch.softmax(served(d4.dihedral_view(x, v)).float() / 1.7, 1)
                       for v in d4.view_order(views)) / views
    np.testing.assert_allclose(np.exp(package_model.network_log_probs(x, served, views, 1.7)), per_view.numpy(),
                               rtol=1e-4, atol=1e-6)


def test_bad_content_type_and_corrupt_bytes(served):
    with pytest.raises(ValueError, match="unsupported Content-Type") as refused:
        inference.input_fn(b"1,2,3", "text/csv")
    assert refused.value.status_code == 415
    with pytest.raises(ValueError, match="truncated or corrupt"):
        inference.input_fn(b"\xff\xd8\xff\xe0 definitely not a jpeg", "image/jpeg")
    truncated = image_bytes("PNG")[:200]
    with pytest.raises(ValueError, match="truncated or corrupt") as refused:
        inference.input_fn(truncated, "image/png")
    assert refused.value.status_code == 400
    with pytest.raises(ValueError, match="file is empty"):
        inference.input_fn(b"", "image/png")
    with pytest.raises(ValueError, match="application/json"):
        inference.output_fn(np.full((1, 7), 1 / 7), "text/csv")


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_images_the_model_cannot_read_faithfully_or_cheaply_are_refused_before_decoding():
    """Each refusal says what was wrong and what to send instead."""
    huge = _png(Image.new("L", (7000, 7000), 30))  # ~50 KB of file, 49 MP of pixels to decode
    with pytest.raises(ValueError, match=r"7000 x 7000 pixels, more than 36,000,000: too large to decode safely; downscale"):
        inference.input_fn(huge, "image/png")
    deep = _png(Image.new("I;16", (64, 64), 40000))  # RGB conversion would clip it to a white square
    with pytest.raises(ValueError, match=r"colour mode I;16 .* re-export the image as an 8-bit-per-channel sRGB JPEG or PNG"):
        inference.input_fn(deep, "image/png")
    tiff = io.BytesIO()
    Image.new("RGB", (64, 64)).save(tiff, format="TIFF")
    with pytest.raises(ValueError, match="format is TIFF; accepted formats are JPEG .* and PNG"):
        inference.input_fn(tiff.getvalue(), "image/png")
    with pytest.raises(ValueError, match=r"not a recognisable image .*send a JPEG or PNG file") as err:
        inference.input_fn(b"GIF89a Smith John", "image/png")
    assert "BytesIO" not in str(err.value) and "Smith" not in str(err.value)  # nothing of the body echoed
    # the 8-bit modes a camera or an export produces still pass
    for mode in ("P", "L", "LA", "RGBA"):
        assert inference.input_fn(_png(Image.new(mode, (40, 30))), "image/png")["image_bytes"]


def test_model_fn_reports_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="model_config.json not found"):
        inference.model_fn(str(tmp_path))


def test_preprocess_and_embeddings(served, model_dir):
    imgs = np.random.default_rng(0).integers(0, 255, size=(5, SIZE, SIZE, 3), dtype=np.uint8)
    x = package_model.preprocess_array(imgs, served)
    assert x.shape == (5, 3, SIZE, SIZE) and x.dtype == torch.float32
    config = json.loads((model_dir / "model_config.json").read_text())
    torch.testing.assert_close(package_model.preprocess_array(imgs, config), x)
    expected = (torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255 - torch.tensor(config["mean"]).view(1, 3, 1, 1)) \
        / torch.tensor(config["std"]).view(1, 3, 1, 1)
    torch.testing.assert_close(x, expected)
    emb = package_model.embed_fn(x, served)
    assert emb.shape == (5, 512) and np.isfinite(emb).all()
    # The embedding is exactly what the head sees: head(emb) reproduces the logits.
    logits = served.net.fc(torch.from_numpy(emb).to(served.device)).detach().cpu()
    torch.testing.assert_close(logits, served(x.to(served.device)).detach().cpu(), rtol=1e-4, atol=1e-4)
    cams = package_model.gradcam(served, x, [0, 1, 2, 3, 4])
    assert cams.shape == (5, SIZE, SIZE) and cams.min() >= 0 and cams.max() <= 1


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_endpoint_decoding_is_a_centre_crop_resize_shared_with_preprocess(fmt):
    """Train/serve skew guard: the preprocess job uses the endpoint's own decode, and that decode
    is a centre crop of the shorter side resized with Lanczos (JPEG: within draft-decoding noise)."""
    import io

    from PIL import Image

    from ml_code.data import preprocess

    assert preprocess.decode_square is image_policy.decode_square
    for size in (32, 64):
        body = image_bytes(fmt, size=(600, 450))
        with Image.open(io.BytesIO(body)) as img:
            ref = np.asarray(img.convert("RGB").resize((size, size), Image.Resampling.LANCZOS,
                                                       box=(75, 0, 525, 450)), dtype=np.float64)
        got = image_policy.decode_square(body, size).astype(np.float64)
        assert got.shape == (size, size, 3)
        if fmt == "PNG":
            np.testing.assert_array_equal(got, ref)
        else:
            assert np.abs(got - ref).mean() < 4.0


def _randomised_batch_norm(net: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial running statistics and scales, so invariance is not an artefact of BN's identity init."""
    gen = torch.Generator().manual_seed(3)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data = torch.rand(m.weight.shape, generator=gen) + 0.5
            m.running_mean = torch.rand(m.running_mean.shape, generator=gen) - 0.5
            m.running_var = torch.rand(m.running_var.shape, generator=gen) + 0.5
    return net.eval()


@pytest.mark.parametrize("size", [64, 48])
def test_dermanet_d4_gives_one_answer_for_every_view_of_a_lesion(size):
    """The D4 net's logits for a quarter-turned or mirrored image equal the original's (even
    sizes included: strides pool on a grid every view maps onto itself)."""
    torch.manual_seed(0)
    net = _randomised_batch_norm(networks.build_network("dermanet_d4", 7))
    x = torch.randn(3, 3, size, size)
    with torch.no_grad():
        reference = net(x)
        for v in range(8):
            torch.testing.assert_close(net(d4.dihedral_view(x, v)), reference, rtol=1e-4, atol=1e-5)
    # The plain DermaNet is not invariant by construction: the test can tell the difference.
    plain = _randomised_batch_norm(networks.build_network("dermanet", 7))
    with torch.no_grad():
        assert not torch.allclose(plain(d4.dihedral_view(x, 1)), plain(x), atol=1e-3)


def test_dermanet_d4_feature_maps_turn_with_the_image():
    """Equivariance layer by layer: the stem's maps of a quarter-turned image are the turned
    maps, with each group channel's 8 orientations permuted among themselves."""
    torch.manual_seed(1)
    net = _randomised_batch_norm(networks.build_network("dermanet_d4", 7))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        maps, turned = net.stem(x), net.stem(d4.dihedral_view(x, 1))
    b, c8, h, w = maps.shape
    expected = d4.dihedral_view(maps, 1).reshape(b, c8 // 8, 8, h, w)
    got = turned.reshape(b, c8 // 8, 8, h, w)
    # some permutation of the 8 orientations, the same for every group channel
    perm = [next(k for k in range(8) if torch.allclose(got[:, 0, k], expected[:, 0, j], atol=1e-5)) for j in range(8)]
    assert sorted(perm) == list(range(8))
    torch.testing.assert_close(got[:, :, perm], expected, rtol=1e-4, atol=1e-5)


def test_dermanet_d4_serves_embeddings_and_gradcam(tmp_path):
    torch.manual_seed(0)
    net = models.build_model("dermanet_d4", len(CLASSES))
    config = {"arch": "dermanet_d4", "classes": list(CLASSES), "image_size": 32, "mean": [0.7, 0.55, 0.6],
              "std": [0.15, 0.15, 0.17]}
    write_model_dir(tmp_path, net.state_dict(), config)
    served = inference.model_fn(str(tmp_path))
    x = package_model.preprocess_array(np.random.default_rng(0).integers(0, 255, (4, 32, 32, 3), dtype=np.uint8), served)
    emb = package_model.embed_fn(x, served)
    assert emb.shape == (4, 32) and np.isfinite(emb).all()
    cams = package_model.gradcam(served, x, [0, 1, 2, 3])
    assert cams.shape == (4, 32, 32) and cams.min() >= 0 and cams.max() <= 1


def test_dermanet_d4_serving_cache_follows_new_weights():
    """Serving keeps the expanded filters between requests; loading other weights must not
    serve the old ones, and training must not see a stale copy."""
    torch.manual_seed(0)
    net = _randomised_batch_norm(networks.build_network("dermanet_d4", 7))
    other = _randomised_batch_norm(networks.build_network("dermanet_d4", 7))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        first = net(x)
        torch.testing.assert_close(net(x), first)  # from the kept filters
        net.load_state_dict(other.state_dict())
        torch.testing.assert_close(net(x), other(x))
    net.train()
    loss = net(x).logsumexp(1).sum()
    loss.backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad and p.dim() == 4)


def test_the_answer_carries_the_monitors_features_of_the_view_the_network_was_fed(served):
    """``image_features`` of an answer: the monitor's own features of the model view (decoded as the
    monitor decodes a captured request) and the size as sent (here an EXIF-rotated JPEG: stored
    200x150, shown 150x200; the size as stored is what the log has always kept), the same floats
    after the JSON round trip."""
    from ml_code.monitoring.capture import model_view
    from ml_code.monitoring.features import PIXEL_FEATURES, batch_features

    img = Image.fromarray(np.random.default_rng(4).integers(0, 255, (150, 200, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif.tobytes())
    body = json.loads(inference.output_fn(inference.predict_fn(inference.input_fn(buf.getvalue(), "image/jpeg"),
                                                               served), "application/json"))
    expected = batch_features(model_view(buf.getvalue(), SIZE))
    answered = [body["image_features"][name] for name in PIXEL_FEATURES]
    assert answered == expected[list(PIXEL_FEATURES)].iloc[0].tolist()
    assert (body["image_features"]["width"], body["image_features"]["height"]) == (200.0, 150.0)
    # batch scoring of arrays (evaluation, baselines) is not a served request: no features computed
    arrays = inference.predict_fn(np.zeros((2, SIZE, SIZE, 3), np.uint8), served)
    assert all("image_features" not in a for a in json.loads(inference.output_fn(arrays, "application/json")))
