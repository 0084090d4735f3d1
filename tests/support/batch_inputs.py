"""What the batch-prediction tests share: a small real model package (the project's own
``ml_code/package`` code, random resnet18 weights, OOD statistics) and a folder of lesion
images with broken files among them, as a clinic would send it."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ml_code import CLASSES
from ml_code.data.split_reader import load_splits
from ml_code.training import models
from ml_code.training.ood import add_ood_stats
from ml_code.training.packaging import write_model_dir
from tests.support.synth_splits import make_splits

#: Names (relative, without suffix) that :func:`write_images` makes decodable, and broken.
GOOD = ("clinic-b/lesion_9", "lesion_0", "lesion_1", "lesion_2")
BROKEN = ("not_an_image", "truncated")


def package_dir(root: Path) -> Path:
    """A folder holding ``model.tar.gz``: 16 px resnet18 (random weights: the job is under test,
    not the model) with OOD statistics fitted on synthetic splits, and its ``code/``."""
    torch.manual_seed(0)
    net = models.build_model("resnet18", len(CLASSES), small_input=True)
    config = {"arch": "resnet18", "classes": list(CLASSES), "image_size": 16, "mean": [0.5] * 3, "std": [0.2] * 3,
              "small_input": True}
    write_model_dir(root / "dir", net.state_dict(), config)
    splits, _ = load_splits(make_splits(root / "splits", 16, n_train=60, n_val=30, n_test=14))
    add_ood_stats(root / "dir", splits["train"], splits["val"], log=lambda *_: None)
    (root / "tar").mkdir()
    with tarfile.open(root / "tar" / "model.tar.gz", "w:gz") as tar:
        tar.add(root / "dir", arcname=".")
    return root / "tar"


def jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def write_images(folder: Path) -> Path:
    """:data:`GOOD` (one in a sub-folder, a JPEG named .png), :data:`BROKEN` (a truncated JPEG,
    text named .png) and a .txt that is not an image at all. Returns ``folder``."""
    (folder / "clinic-b").mkdir(parents=True)
    for i in range(3):
        (folder / f"lesion_{i}.jpg").write_bytes(jpeg(i))
    (folder / "clinic-b" / "lesion_9.png").write_bytes(jpeg(9))  # a JPEG named .png still decodes
    (folder / "truncated.jpg").write_bytes(jpeg(5)[:200])
    (folder / "not_an_image.png").write_bytes(b"hello, I am text")
    (folder / "notes.txt").write_text("ignored: not an image suffix")
    return folder
