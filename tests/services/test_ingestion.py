"""Ingestion over a dataset with every kind of bad input a clinical drop can contain."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from dermaops_services.ingestion import ingest_dataset
from dermaops_resources.object_store import LocalObjectStore
from dermaops_services.raw_source import landed_batches
from ml_code.data import ingest
from ml_code.tools.demo_data import generate_demo_dataset
from tests.conftest import HAM10000, requires_ham10000
from tests.support.batches import draw_batch, land_batch


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return generate_demo_dataset(tmp_path_factory.mktemp("demo"), n_lesions_per_class=3, seed=1)


def _damage(dataset: Path) -> dict[str, str]:
    """Break a copy of the dataset in the ways the issue lists; returns image_id -> expected reason word."""
    meta = pd.read_csv(dataset / "HAM10000_metadata.csv", dtype=str)
    ids = list(meta["image_id"])
    images = dataset / "images"
    data = (images / f"{ids[0]}.jpg").read_bytes()
    (images / f"{ids[0]}.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00garbage" * 50)  # corrupt JPEG
    (images / f"{ids[1]}.jpg").write_bytes(data[: len(data) // 2])  # truncated
    (images / f"{ids[2]}.jpg").unlink()
    (images / f"{ids[2]}.txt").write_text("not an image at all")  # non-image
    big = Image.new("RGB", (9000, 40), (200, 120, 100))
    buf = io.BytesIO()
    big.save(buf, format="PNG")
    (images / f"{ids[3]}.jpg").unlink()
    (images / f"{ids[3]}.png").write_bytes(buf.getvalue())  # too large a side
    bad_rows = pd.DataFrame([
        {"lesion_id": "SYNL_X1", "image_id": "SYN_BAD1", "dx": "carcinoid", "dx_type": "histo", "age": "50",
         "sex": "male", "localization": "back"},
        {"lesion_id": "SYNL_X2", "image_id": "SYN_BAD2", "dx": "mel", "dx_type": "histo", "age": "-4",
         "sex": "female", "localization": "back"},
        {"lesion_id": "SYNL_X3", "image_id": "SYN_MISSING", "dx": "nv", "dx_type": "histo", "age": "40",
         "sex": "female", "localization": "back"},
    ])
    pd.concat([meta, bad_rows]).to_csv(dataset / "HAM10000_metadata.csv", index=False)
    return {ids[0]: "", ids[1]: "", ids[2]: "", ids[3]: "", "SYN_BAD1": "carcinoid", "SYN_BAD2": "age",
            "SYN_MISSING": "no image file"}


def test_bad_rows_and_files_are_quarantined_and_the_rest_ingested(demo: Path, tmp_path: Path) -> None:
    dataset = tmp_path / "drop"
    shutil.copytree(demo, dataset)
    total = len(pd.read_csv(dataset / "HAM10000_metadata.csv"))
    expected = _damage(dataset)
    store = LocalObjectStore(root=str(tmp_path / "store"))
    handle, stats = ingest_dataset(str(dataset), store, salt="s")
    quarantine = pd.read_csv(store.local_path(handle.quarantine_uri), dtype=str)
    reasons = dict(zip(quarantine["image_id"], quarantine["reason"]))
    assert set(expected) <= set(reasons), reasons
    for image_id, word in expected.items():
        assert reasons[image_id].strip(), image_id
        assert word.lower() in reasons[image_id].lower(), (image_id, reasons[image_id])
    assert handle.num_images == total - 4
    assert handle.num_quarantined == len(expected)
    assert stats.copied == handle.num_images
    manifest = pd.read_csv(store.local_path(handle.manifest_uri), dtype=str)
    for row in manifest.itertuples():  # every manifest row points at stored, content-addressed bytes
        stored = store.get_bytes(store.uri("raw", f"images/{row.image_key}"))
        assert ingest.inspect_image(stored, row.image_key).sha256 == row.sha256


def test_reingesting_unchanged_data_copies_nothing_and_keeps_the_version(demo: Path, tmp_path: Path) -> None:
    store = LocalObjectStore(root=str(tmp_path / "store"))
    first, stats1 = ingest_dataset(str(demo), store, salt="s")
    second, stats2 = ingest_dataset(str(demo), store, salt="s")
    assert stats1.copied == first.num_images > 0
    assert stats2.copied == 0 and stats2.already_stored == second.num_images
    assert first.manifest_hash == second.manifest_hash
    assert store.get_bytes(first.manifest_uri) == store.get_bytes(second.manifest_uri)




def test_landed_batches_join_the_dataset_in_one_manifest(demo: Path, tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    new_rows = land_batch(landing / "2026-11-27-clinic-a", demo)
    (landing / "stray.jpg").write_bytes(b"not in a batch folder")
    (landing / "still-uploading" / "images").mkdir(parents=True)  # no metadata yet: not a batch
    assert landed_batches(str(landing)) == [str(landing / "2026-11-27-clinic-a")]
    assert landed_batches(str(tmp_path / "no-landing-yet")) == []

    store = LocalObjectStore(root=str(tmp_path / "store"))
    base, _ = ingest_dataset(str(demo), store, salt="s")
    both, stats = ingest_dataset([str(demo), *landed_batches(str(landing))], store, salt="s")
    assert both.num_images == base.num_images + len(new_rows)
    assert stats.copied == len(new_rows) and stats.already_stored == base.num_images
    assert both.manifest_hash != base.manifest_hash  # a new data version, so retraining sees the batch
    manifest = _published_manifest(store, both.manifest_uri)
    assert set(new_rows["image_id"]) <= set(manifest["image_id"])
    quarantine = pd.read_csv(store.local_path(both.quarantine_uri), dtype=str)
    clash = quarantine[quarantine["reason"].str.contains("already ingested")]
    assert len(clash) == 1 and f"from '{demo.name}'" in clash["reason"].iloc[0]
    assert both.source_uri == f"{demo.name} + 2026-11-27-clinic-a" and both.source_layout == "ham10000"


def _published_manifest(store: LocalObjectStore, manifest_uri: str) -> pd.DataFrame:
    """The published manifest.csv with the manifest schema's column types."""
    manifest = pd.read_csv(store.local_path(manifest_uri), dtype=str, keep_default_na=False)
    manifest["age"] = pd.to_numeric(manifest["age"], errors="coerce").astype(float)
    for c in ("width", "height"):
        manifest[c] = manifest[c].astype("int64")
    return ingest.MANIFEST_SCHEMA.validate(manifest)


def test_bad_files_and_duplicate_bytes_are_quarantined_and_hash_is_order_independent(tmp_path: Path) -> None:
    root = generate_demo_dataset(tmp_path / "demo", n_lesions_per_class=2, images_per_lesion=(1, 2),
                                 image_size=(64, 48), seed=1)
    meta = pd.read_csv(root / "HAM10000_metadata.csv", dtype=str)
    truncated, missing, garbage, dup = meta["image_id"].iloc[:4]
    path = root / "images" / f"{truncated}.jpg"
    path.write_bytes(path.read_bytes()[:300])
    (root / "images" / f"{missing}.jpg").unlink()
    (root / "images" / f"{garbage}.jpg").write_bytes(b"\x89PNG not really")
    shutil.copy(root / "images" / f"{meta['image_id'].iloc[5]}.jpg", root / "images" / f"{dup}.jpg")

    store = LocalObjectStore(root=str(tmp_path / "store"))
    handle, _ = ingest_dataset(str(root), store, salt="test-salt")
    assert handle.source_layout == "ham10000"
    manifest = _published_manifest(store, handle.manifest_uri)
    assert len(manifest) == handle.num_images == len(meta) - 4
    q = pd.read_csv(store.local_path(handle.quarantine_uri), dtype=str)
    reasons = {i: " | ".join(q.loc[q["image_id"] == i, "reason"]) for i in q["image_id"]}
    assert "truncated or corrupt" in reasons[truncated]
    assert "no image file" in reasons[missing]
    assert "not a recognisable image" in reasons[garbage]
    # the first row with those bytes is kept, the later one quarantined
    assert f"same bytes as image {dup!r}" in reasons[meta["image_id"].iloc[5]]
    assert set(q["stage"]) == {"image"}
    assert all(store.exists(store.uri("raw", f"images/{key}")) for key in manifest["image_key"])

    h = ingest.manifest_hash(manifest)
    assert h == handle.manifest_hash == ingest.manifest_hash(manifest.sample(frac=1, random_state=0))
    changed = manifest.copy()
    changed.loc[0, "dx"] = "nv" if changed.loc[0, "dx"] != "nv" else "mel"
    assert ingest.manifest_hash(changed) != h


def test_missing_metadata_is_a_clear_error(tmp_path: Path) -> None:
    from dermaops_services.raw_source import RawSourceError

    (tmp_path / "empty").mkdir()
    with pytest.raises(RawSourceError, match="No metadata CSV"):
        ingest_dataset(str(tmp_path / "empty"), LocalObjectStore(root=str(tmp_path / "s")), salt="s")
    with pytest.raises(RawSourceError, match="does not exist"):
        ingest_dataset(str(tmp_path / "nowhere"), LocalObjectStore(root=str(tmp_path / "s")), salt="s")


@pytest.mark.realdata
@requires_ham10000
def test_real_ham10000_ingests(tmp_path: Path) -> None:
    store = LocalObjectStore(root=str(tmp_path / "store"))
    handle, _ = ingest_dataset(str(HAM10000), store, salt="s")
    assert handle.num_images + handle.num_quarantined == 10015
    assert handle.num_images >= 10000
    assert handle.class_counts["nv"] > 6600 and set(handle.class_counts) == set(ingest.CLASSES)


# -- a bad batch fails alone (case C08 kind), symbolic links ---------------------------------



def test_european_spreadsheet_batch_ingests_with_the_right_ages(demo: Path, tmp_path: Path) -> None:
    batch = tmp_path / "landing" / "2026-11-30-clinic-eu"
    rows = [("EU_0001", "bkl", "80,0"), ("EU_0002", "mel", "42,5"), ("EU_0003", "nv", "")]
    text = "lesion_id;image_id;dx;dx_type;age;sex;localization\r\n" + "".join(
        f"L_{i};{i};{dx};histo;{age};male;upper extremity\r\n" for i, dx, age in rows)
    draw_batch(batch, rows, metadata=b"\xef\xbb\xbf" + text.encode())  # BOM + ';' + decimal commas + CRLF
    store = LocalObjectStore(root=str(tmp_path / "store"))
    handle, stats = ingest_dataset([str(demo), str(batch)], store, salt="s")
    assert stats.quarantined_batches == []
    manifest = _published_manifest(store, handle.manifest_uri)
    ages = manifest.set_index("image_id")["age"]
    assert ages["EU_0001"] == 80.0 and ages["EU_0002"] == 42.5 and pd.isna(ages["EU_0003"])
    assert set(manifest.set_index("image_id").loc[["EU_0001", "EU_0002"], "localization"]) == {"upper extremity"}
    # read_metadata names what it found, so a refusal can say it too
    df = ingest.read_metadata("m.csv", b"\xef\xbb\xbf" + text.encode())
    assert list(df.columns)[0] == "lesion_id" and ingest.describe_dialect(df) == "semicolon (;) separators, decimal commas"
    tabbed = ingest.read_metadata("m.csv", b"isic_id\tdiagnosis\tage_approx\nISIC_1\tnevus\t35,0\n")
    assert ingest.detect_layout(tabbed) == "isic" and tabbed["age_approx"].iloc[0] == "35.0"


def test_unreadable_batch_is_quarantined_whole_and_everything_else_ingests(demo: Path, tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    draw_batch(landing / "a-good", [("GOOD_0001", "nv", "50"), ("GOOD_0002", "bcc", "61")])
    draw_batch(landing / "b-binary", [("BIN_0001", "nv", "50")], metadata=b"PK\x03\x04\x00\x00" + bytes(range(256)))
    draw_batch(landing / "c-no-columns", [("COL_0001", "nv", "50")], metadata=b"foo;bar\r\n1;2\r\n")
    store = LocalObjectStore(root=str(tmp_path / "store"))
    batches = landed_batches(str(landing))
    assert len(batches) == 3
    handle, stats = ingest_dataset([str(demo), *batches], store, salt="s")
    reference, _ = ingest_dataset([str(demo), str(landing / "a-good")], LocalObjectStore(root=str(tmp_path / "s2")),
                                  salt="s")
    # the dataset and the good batch ingest exactly as if the bad batches were not there
    assert handle.manifest_hash == reference.manifest_hash
    assert {"GOOD_0001", "GOOD_0002"} <= set(_published_manifest(store, handle.manifest_uri)["image_id"])
    reasons = dict(stats.quarantined_batches)
    assert len(reasons) == 2
    from dermaops_services.raw_source import batch_ref

    assert "NUL bytes" in reasons[batch_ref("b-binary", "s")]
    no_columns = reasons[batch_ref("c-no-columns", "s")]
    assert "layout not recognised" in no_columns and "semicolon (;) separators" in no_columns
    assert not any("b-binary" in r or "c-no-columns" in r for r in reasons.values())  # no folder names
    quarantine = pd.read_csv(store.local_path(handle.quarantine_uri), dtype=str, keep_default_na=False)
    assert (quarantine["stage"] == "batch").sum() == 2
    assert "b-binary" not in handle.source_uri and "a-good" in handle.source_uri


def test_unreadable_dataset_itself_is_a_clear_error(tmp_path: Path) -> None:
    draw_batch(tmp_path / "ds", [("X_1", "nv", "50")], metadata=b"foo;bar\r\n1;2\r\n")
    with pytest.raises(ingest.MetadataError, match=r"layout not recognised.*semicolon \(;\) separators"):
        ingest_dataset(str(tmp_path / "ds"), LocalObjectStore(root=str(tmp_path / "s")), salt="s")


def test_symbolic_links_are_never_followed(demo: Path, tmp_path: Path) -> None:
    from dermaops_services.raw_source import SYMLINK_REASON, batch_ref

    outside = tmp_path / "elsewhere"
    draw_batch(outside, [("OUT_0001", "nv", "50"), ("OUT_0002", "mel", "70")])
    landing = tmp_path / "landing"
    batch = landing / "a-batch"
    draw_batch(batch, [("IN_0001", "nv", "50")])
    (batch / "images" / "IN_0002.png").symlink_to(outside / "images" / "OUT_0001.png")  # a file outside the folder
    (batch / "HAM10000_metadata.csv").write_text("lesion_id,image_id,dx,dx_type,age,sex,localization\n"
                                                 "L1,IN_0001,nv,histo,50,male,back\nL2,IN_0002,mel,histo,60,male,back\n")
    (landing / "b-linked").symlink_to(outside, target_is_directory=True)  # a whole batch folder as a link
    store = LocalObjectStore(root=str(tmp_path / "store"))
    batches = landed_batches(str(landing))
    assert batches == [str(batch), str(landing / "b-linked")]
    handle, stats = ingest_dataset([str(demo), *batches], store, salt="s")
    manifest = _published_manifest(store, handle.manifest_uri)
    assert "IN_0001" in set(manifest["image_id"])
    assert not {"IN_0002", "OUT_0001", "OUT_0002"} & set(manifest["image_id"])
    quarantine = pd.read_csv(store.local_path(handle.quarantine_uri), dtype=str, keep_default_na=False)
    assert quarantine.loc[quarantine["image_id"] == "IN_0002", "reason"].tolist() == [SYMLINK_REASON]
    assert SYMLINK_REASON in dict(stats.quarantined_batches)[batch_ref("b-linked", "s")]


def test_a_linked_folder_inside_a_dataset_is_listed_as_a_link_not_walked(tmp_path: Path) -> None:
    from dermaops_services.raw_source import RawSource

    outside = tmp_path / "elsewhere"
    draw_batch(outside, [("OUT_0001", "nv", "50")])
    draw_batch(tmp_path / "ds", [("IN_0001", "nv", "50")])
    (tmp_path / "ds" / "ISIC-images").symlink_to(outside / "images", target_is_directory=True)
    source = RawSource(str(tmp_path / "ds"))
    assert "ISIC-images" in source.links
    assert not [k for k in source._keys if k.startswith("ISIC-images/")]
    assert "OUT_0001" not in source.image_index
