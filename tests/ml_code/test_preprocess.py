"""The processing job end to end as a subprocess, the way the local job runner starts it."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ml_code import CLASSES
from ml_code.tools.demo_data import generate_demo_dataset
from dermaops_services.ingestion import ingest_dataset
from dermaops_resources.object_store import LocalObjectStore
from ml_code.data.ingest import canonical_manifest_csv
from ml_code.data.preprocess import decode_square as load_image_square
from ml_code.data.split_reader import open_split_images
from ml_code.data.splits import check_no_leakage

REPO = Path(__file__).resolve().parents[2]
SPLITS = ("train", "val", "test")


@pytest.fixture(scope="module")
def job_inputs(tmp_path_factory) -> dict[str, Path]:
    """A tiny demo set, ingested (as ``raw_images`` does) into a local store's content-addressed
    images prefix, plus a manifest.csv folder the test can tamper with."""
    base = tmp_path_factory.mktemp("pre")
    source = generate_demo_dataset(base / "source", n_lesions_per_class=5, images_per_lesion=(1, 2),
                                   image_size=(60, 45), seed=4)
    store = LocalObjectStore(root=str(base / "store"))
    handle, _ = ingest_dataset(str(source), store, salt="t")
    images = store.local_path(handle.images_prefix_uri)
    manifest = pd.read_csv(store.local_path(handle.manifest_uri), dtype=str, keep_default_na=False)
    # an image that passed ingestion but is corrupt in the store now (sha no longer matches) ...
    tampered = manifest.iloc[0]
    (images / tampered.image_key).write_bytes(b"garbage")
    # ... and one whose stored bytes do match the manifest but do not decode
    undecodable = manifest.index[1]
    bad_bytes = (images / manifest.loc[undecodable, "image_key"]).read_bytes()[:200]
    sha = hashlib.sha256(bad_bytes).hexdigest()
    key = f"{sha[:2]}/{sha}.jpg"
    (images / key).parent.mkdir(parents=True, exist_ok=True)
    (images / key).write_bytes(bad_bytes)
    manifest.loc[undecodable, ["sha256", "image_key"]] = [sha, key]
    (base / "manifest").mkdir()
    (base / "manifest" / "manifest.csv").write_bytes(canonical_manifest_csv(manifest))
    return {"base": base, "images": images, "manifest": base / "manifest", "table": manifest,
            "bad": [tampered.image_id, manifest.loc[undecodable, "image_id"]]}


def _run_job(job_inputs: dict, out: Path, hps: dict) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "SM_PROCESSING_INPUT_MANIFEST": str(job_inputs["manifest"]),
        "SM_PROCESSING_INPUT_IMAGES": str(job_inputs["images"]),
        "SM_PROCESSING_OUTPUT_SPLITS": str(out),
        "SM_OUTPUT_DIR": str(out.parent / f"{out.name}-sm-output"),
        "SM_HPS": json.dumps(hps),
        "PYTHONPATH": str(REPO),
    }
    return subprocess.run([sys.executable, "-m", "ml_code.data.preprocess"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_job_writes_mmap_splits_and_quarantines_corrupt_images(job_inputs: dict, tmp_path: Path) -> None:
    out = tmp_path / "splits"
    proc = _run_job(job_inputs, out, {"image_size": "16", "val_fraction": "0.2", "test_fraction": "0.2", "seed": "5"})
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "[preprocess]" in proc.stdout
    metrics = [json.loads(line.split(" ", 1)[1]) for line in proc.stdout.splitlines()
               if line.startswith("[dermaops-metric] ")]
    assert len(metrics) == 1 and metrics[0]["quarantined"] == 2

    expected = {f"{s}_{k}" for s in SPLITS for k in ("pixels.json", "labels.npy", "index.csv")}
    expected |= {"classes.json", "summary.json", "quarantine.csv", "pixels"}
    assert {p.name for p in out.iterdir()} == expected  # no temp files left behind
    # one segment per split, named by the sha256 of its bytes
    segments = sorted((out / "pixels").iterdir())
    assert len(segments) == 3 and all(p.name == hashlib.sha256(p.read_bytes()).hexdigest() + ".npy" for p in segments)
    assert json.loads((out / "classes.json").read_text()) == list(CLASSES)

    quarantine = pd.read_csv(out / "quarantine.csv")
    assert sorted(quarantine["image_id"]) == sorted(job_inputs["bad"])
    reasons = " ".join(quarantine["reason"])
    assert "sha256 does not match" in reasons and "truncated or corrupt" in reasons

    manifest = job_inputs["table"].set_index("image_id")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["image_size"] == 16
    seen: list[pd.DataFrame] = []
    for split in SPLITS:
        images = open_split_images(out, split)
        labels = np.load(out / f"{split}_labels.npy")
        index = pd.read_csv(out / f"{split}_index.csv", dtype={"label": int})
        assert isinstance(images, np.memmap)
        assert images.dtype == np.uint8 and images.shape == (len(index), 16, 16, 3)
        assert labels.dtype == np.int64 and labels.tolist() == index["label"].tolist()
        assert list(index.columns) == ["image_id", "lesion_id", "dx", "label", "sha256", "age", "sex", "localization"]
        for column in ("sex", "localization"):  # the clinical context travels with each image
            assert (index[column].fillna("") == manifest.loc[index["image_id"], column].fillna("").to_numpy()).all()
        assert [CLASSES[k] for k in labels] == index["dx"].tolist()
        assert (index["sha256"] == manifest.loc[index["image_id"], "sha256"].to_numpy()).all()
        assert summary["splits"][split] == {c: int((index["dx"] == c).sum()) for c in CLASSES}
        assert summary["lesions"][split] == index["lesion_id"].nunique()
        # pixels are the decoded, cropped, resized image of the row they are indexed with
        k = len(index) // 2
        raw = (job_inputs["images"] / manifest.loc[index["image_id"].iloc[k], "image_key"]).read_bytes()
        np.testing.assert_array_equal(images[k], load_image_square(raw, 16))
        seen.append(index.assign(split=split))
    everything = pd.concat(seen)
    assert check_no_leakage(everything) == []
    assert len(everything) == len(manifest) - 2
    assert set(everything["dx"]) == set(CLASSES)


def test_same_inputs_give_identical_outputs(job_inputs: dict, tmp_path: Path) -> None:
    hps = {"image_size": 12, "seed": 9}
    a, b = tmp_path / "a", tmp_path / "b"
    assert _run_job(job_inputs, a, hps).returncode == 0
    assert _run_job(job_inputs, b, hps).returncode == 0
    for name in ("train_pixels.json", "val_labels.npy", "test_index.csv", "summary.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert sorted(p.name for p in (a / "pixels").iterdir()) == sorted(p.name for p in (b / "pixels").iterdir())
    for split in SPLITS:  # each index is the text pandas writes for its rows (a reader's contract)
        text = (a / f"{split}_index.csv").read_text()
        rows = pd.read_csv(a / f"{split}_index.csv", dtype=str, keep_default_na=False)
        assert text == rows.to_csv(index=False, lineterminator="\n")
        assert list(rows.columns) == ["image_id", "lesion_id", "dx", "label", "sha256", "age", "sex", "localization"]
        assert rows["label"].map(int).map(CLASSES.__getitem__).tolist() == rows["dx"].tolist()


def test_missing_manifest_fails_with_reason_file(job_inputs: dict, tmp_path: Path) -> None:
    empty = tmp_path / "no-manifest"
    empty.mkdir()
    proc = _run_job({**job_inputs, "manifest": empty}, tmp_path / "out", {})
    assert proc.returncode != 0
    failure = (tmp_path / "out-sm-output" / "failure").read_text()
    assert "manifest.csv not found" in failure


def test_crop_keeps_aspect_instead_of_squashing() -> None:
    # left third red, middle third green, right third blue; a centre crop keeps only green
    img = np.zeros((30, 90, 3), dtype=np.uint8)
    img[:, :30, 0] = img[:, 30:60, 1] = img[:, 60:, 2] = 255
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "PNG")
    out = load_image_square(buf.getvalue(), 8)
    assert out.shape == (8, 8, 3)
    assert out[..., 1].min() > 200 and out[..., 0].max() < 60 and out[..., 2].max() < 60


@pytest.mark.parametrize("fault", ["decode of the last split", "background sync"])
def test_a_job_that_fails_publishes_no_split_pixels(job_inputs: dict, tmp_path: Path, monkeypatch, fault: str) -> None:
    """Split segments and pixel maps are published together at the end, each segment after its early
    background sync has returned: a job that fails on its last split, or whose sync fails, leaves no
    pixels (and no temporary file) behind, not a train split without its val and test."""
    from ml_code.data import preprocess

    if fault == "background sync":
        def failing_sync(path: Path) -> None:
            raise OSError(5, "Input/output error")
        monkeypatch.setattr(preprocess, "sync_file", failing_sync)
    else:
        real = preprocess._decode_into

        def failing_decode(out, split, *args, **kwargs):
            if split == "test":
                raise MemoryError("test split")
            return real(out, split, *args, **kwargs)
        monkeypatch.setattr(preprocess, "_decode_into", failing_decode)
    out = tmp_path / "splits"
    with pytest.raises(OSError if fault == "background sync" else MemoryError):
        preprocess.run(job_inputs["manifest"], job_inputs["images"], out, image_size=12, num_workers=1)
    assert not list(out.glob("*_pixels.json")), sorted(p.name for p in out.iterdir())
    assert not [p.name for p in out.rglob("*") if p.is_file() and (p.suffix in (".tmp", ".npy") and "pixels" in p.parts)]
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    assert not (out / "summary.json").exists()


TEXT_CSV_CASES = {
    "manifest-like": "image_id,age,phash\nISIC_1,,ab\nISIC_2,45.0,cd\n",
    "quoted comma": 'image_id,site\nISIC_1,"back, upper"\n',
    "line break in a quoted cell": 'image_id,site\nISIC_1,"back\nupper"\n',
    "short row": "a,b,c\n1,2\n",
    "long row": "a,b\n1,2,3\n",
    "byte order mark": "\ufeffa,b\n1,2\n",
    "blank line": "a,b\n1,2\n\n3,4\n",
    "spaces kept": "a,b\n 1 , 2\n",
    "repeated column": "a,a\n1,2\n",
    "header only": "a,b\n",
    "NA text stays text": "a,b\nNA,nan\n",
    "empty file": "",
    "CRLF": "a,b\r\n1,2\r\n",
}


@pytest.mark.parametrize("case", sorted(TEXT_CSV_CASES))
def test_the_fast_csv_reader_answers_as_pandas_own_parser(case: str, tmp_path: Path) -> None:
    """``read_text_csv`` parses with pyarrow for speed; whatever the file, its frame (or error) is
    the one ``pd.read_csv(dtype=str, keep_default_na=False)`` gives."""
    from ml_code.data.preprocess import read_text_csv

    path = tmp_path / "table.csv"
    path.write_text(TEXT_CSV_CASES[case], encoding="utf-8")
    usecols = ["image_id"] if case.startswith(("manifest", "quoted", "line break")) else None

    def answer(read) -> pd.DataFrame | str:
        try:
            return read()
        except Exception as exc:  # noqa: BLE001 - the error is part of the answer
            return f"{type(exc).__name__}: {exc}"

    expected = answer(lambda: pd.read_csv(path, dtype=str, keep_default_na=False, usecols=usecols))
    got = answer(lambda: read_text_csv(path, usecols=usecols))
    if isinstance(expected, str):
        assert got == expected
    else:
        assert isinstance(got, pd.DataFrame)
        pd.testing.assert_frame_equal(got, expected)
