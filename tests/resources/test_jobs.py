from __future__ import annotations

import subprocess
import tarfile
from pathlib import Path

import pytest

from dermaops_resources.jobs import JobFailed, JobSpec, LocalJobRunner, read_split_index, read_training_record
from dermaops_resources.object_store import LocalObjectStore

ENTRY = "tests.support.contract_probe"


@pytest.fixture
def store(tmp_path: Path) -> LocalObjectStore:
    return LocalObjectStore(root=str(tmp_path / "store"))


def test_training_job_follows_the_sagemaker_contract(store: LocalObjectStore, tmp_path: Path) -> None:
    store.put_bytes("processed", "splits/1/data.txt", b"lesions")
    runner = LocalJobRunner(work_root=str(tmp_path / "jobs"))
    logs, metrics = [], []
    spec = JobSpec(job_type="training", name="train-1", entry_point=ENTRY,
                   inputs={"splits": store.uri("processed", "splits/1")}, hyperparameters={"lr": 0.01},
                   output_uri=store.uri("models", "jobs/train/train-1"), checkpoint_uri=store.uri("models", "ckpt/a"))
    result = runner.run(spec, store, on_log=logs.append, on_metric=metrics.append)
    assert result.status == "Completed"
    assert metrics == [{"epoch": 1, "lr": 0.01, "val_balanced_accuracy": 0.5}]
    tar_path = store.download_file(result.model_uri, tmp_path / "model.tar.gz")
    with tarfile.open(tar_path) as tar:
        assert tar.extractfile("weights.txt").read() == b"LESIONS"
    # stored, not deflated (float32 weights barely shrink), but still a gzip'd tar: what a
    # SageMaker container's `tar -xzf` reads
    assert tar_path.read_bytes()[:2] == b"\x1f\x8b"
    unpacked = tmp_path / "unpacked"
    unpacked.mkdir()
    subprocess.run(["tar", "-xzf", str(tar_path), "-C", str(unpacked)], check=True)
    assert (unpacked / "weights.txt").read_bytes() == b"LESIONS"
    assert store.get_json(result.output_uris["output"] + "/history.json") == [{"epoch": 1}]
    assert store.exists(store.uri("models", "ckpt/a/checkpoint-epoch-0001.pt"))


def test_processing_job_outputs_are_published(store: LocalObjectStore, tmp_path: Path) -> None:
    store.put_bytes("raw", "manifests/h/manifest.csv", b"a\nb\nc\n")
    spec = JobSpec(job_type="processing", name="prep-1", entry_point=ENTRY,
                   inputs={"manifest": store.uri("raw", "manifests/h")}, outputs=["splits"],
                   output_uri=store.uri("processed", "jobs/prep-1"))
    result = LocalJobRunner(work_root=str(tmp_path / "jobs")).run(spec, store)
    assert store.get_json(result.output_uris["splits"] + "/summary.json") == {"rows": 3}


def test_a_processing_input_with_listed_files_stages_those_alone(store: LocalObjectStore, tmp_path: Path) -> None:
    """``input_files``: the job's input folder holds the listed files (sub-folders kept) and
    nothing else under the prefix, as SageMaker stages a manifest input; the store keeps them all."""
    store.put_bytes("raw", "manifests/h/manifest.csv", b"a\nb\nc\n")
    store.put_bytes("raw", "manifests/h/maps/train_pixels.json", b"{}")
    store.put_bytes("raw", "manifests/h/pixels/segment.npy", b"\0" * 4096)
    spec = JobSpec(job_type="processing", name="prep-2", entry_point=ENTRY,
                   inputs={"manifest": store.uri("raw", "manifests/h")}, outputs=["splits"],
                   input_files={"manifest": ["manifest.csv", "maps/train_pixels.json"]},
                   output_uri=store.uri("processed", "jobs/prep-2"))
    result = LocalJobRunner(work_root=str(tmp_path / "jobs")).run(spec, store)
    assert store.get_json(result.output_uris["splits"] + "/summary.json") == {"rows": 3}
    assert store.get_json(result.output_uris["splits"] + "/staged.json") == ["manifest.csv", "maps/train_pixels.json"]
    assert store.exists(store.uri("raw", "manifests/h/pixels/segment.npy"))


def test_listed_input_files_are_checked_before_a_job_starts(store: LocalObjectStore, tmp_path: Path) -> None:
    store.put_bytes("raw", "manifests/h/manifest.csv", b"a\n")
    base = dict(job_type="processing", name="prep-3", entry_point=ENTRY, outputs=["splits"],
                inputs={"manifest": store.uri("raw", "manifests/h")}, output_uri=store.uri("processed", "jobs/prep-3"))
    with pytest.raises(ValueError, match="'splits', which is not an input"):
        JobSpec(**base, input_files={"splits": ["manifest.csv"]})
    for bad in ("../secrets.json", "/etc/passwd", "maps//x.json", ""):
        with pytest.raises(ValueError, match="relative to the input's prefix"):
            JobSpec(**base, input_files={"manifest": [bad]})
    logs: list[str] = []
    spec = JobSpec(**base, input_files={"manifest": ["manifest.csv", "summary.json"]})
    with pytest.raises(FileNotFoundError, match="manifests/h/summary.json"):
        LocalJobRunner(work_root=str(tmp_path / "jobs")).run(spec, store, on_log=logs.append)
    assert not any("starting" in line for line in logs)


def test_failure_reason_comes_from_the_job(store: LocalObjectStore, tmp_path: Path) -> None:
    store.put_bytes("processed", "splits/1/data.txt", b"x")
    spec = JobSpec(job_type="training", name="train-bad", entry_point=ENTRY,
                   inputs={"splits": store.uri("processed", "splits/1")}, hyperparameters={"mode": "fail"},
                   output_uri=store.uri("models", "jobs/train/bad"))
    with pytest.raises(JobFailed) as info:
        LocalJobRunner(work_root=str(tmp_path / "jobs")).run(spec, store)
    assert "no train_images.npy" in info.value.reason
    assert info.value.status == "Failed"
    assert not store.exists(store.uri("models", "jobs/train/bad/model.tar.gz"))


def test_training_record_is_read_from_the_job_output(store: LocalObjectStore) -> None:
    output = store.uri("models", "jobs/train/run-1/output")
    assert read_training_record(store, None) == {}
    assert read_training_record(store, output) == {}  # a job that died before writing history.json
    store.put_json("models", "jobs/train/run-1/output/history.json", [{"epoch": 1, "val_loss": 1.2}])
    assert read_training_record(store, output) == {"history": [{"epoch": 1, "val_loss": 1.2}]}  # older layout
    record = {"history": [{"epoch": 1}], "best": {"epoch": 1}, "stop_reason": "epochs"}
    store.put_json("models", "jobs/train/run-1/output/history.json", record)
    assert read_training_record(store, output) == record


def test_split_index_is_read_as_text_with_its_split(store: LocalObjectStore) -> None:
    for split, rows in (("train", "HAM_0000001,nv,0001"), ("val", "HAM_0000002,mel,0002"), ("test", "HAM_0000003,df,")):
        store.put_bytes("processed", f"splits/h/splits/{split}_index.csv", f"lesion_id,dx,image_id\n{rows}\n".encode())
    index = read_split_index(store, store.uri("processed", "splits/h/splits"))
    assert index["split"].tolist() == ["train", "val", "test"]
    assert index["image_id"].tolist()[:2] == ["0001", "0002"]  # text: ids keep their leading zeros
    with pytest.raises(FileNotFoundError):
        read_split_index(store, store.uri("processed", "splits/missing"))

