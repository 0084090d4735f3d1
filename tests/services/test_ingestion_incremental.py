"""Ingestion at scale: images stream through validation (nothing holds every file's bytes) and
a rerun after new images arrive decodes only those, with the manifest a fresh run would write."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from dermaops_resources.object_store import LocalObjectStore
from dermaops_services import ingestion
from dermaops_services.ingestion import IngestStats, _ImageChecker, ingest_dataset
from dermaops_services.raw_source import RawSource
from ml_code.data import ingest
from ml_code.tools.demo_data import generate_demo_dataset

SALT = "s" * 32


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return generate_demo_dataset(tmp_path_factory.mktemp("demo"), n_lesions_per_class=10, images_per_lesion=(1, 2),
                                 image_size=(64, 48), seed=9)


@pytest.fixture
def count_decodes(monkeypatch) -> list[str]:
    """Names of the files ``inspect_image`` decodes (the threads run in this process)."""
    names: list[str] = []
    real = ingest.inspect_image

    def counting(data: bytes, name: str, limits: ingest.ImageLimits | None = None) -> ingest.ImageInfo:
        names.append(name)
        return real(data, name, limits or ingest.ImageLimits())

    monkeypatch.setattr(ingest, "inspect_image", counting)
    return names


def test_a_rerun_with_new_images_decodes_only_those(demo: Path, tmp_path: Path, count_decodes) -> None:
    dataset = tmp_path / "drop"
    shutil.copytree(demo, dataset)
    meta = pd.read_csv(dataset / "HAM10000_metadata.csv", dtype=str)
    new = meta.tail(2)  # about 2 % of the set arrives later
    meta.iloc[:-2].to_csv(dataset / "HAM10000_metadata.csv", index=False)
    store = LocalObjectStore(root=str(tmp_path / "store"))
    first, _ = ingest_dataset(str(dataset), store, SALT)
    assert len(count_decodes) == first.num_images == len(meta) - 2
    count_decodes.clear()
    meta.to_csv(dataset / "HAM10000_metadata.csv", index=False)
    again, stats = ingest_dataset(str(dataset), store, SALT)
    assert sorted(count_decodes) == sorted(f"{i}.jpg" for i in new["image_id"])
    assert stats.remembered == len(meta) - 2 and stats.copied == 2
    # the manifest is the one a run without any memory writes
    fresh, _ = ingest_dataset(str(dataset), LocalObjectStore(root=str(tmp_path / "fresh")), SALT)
    assert again.manifest_hash == fresh.manifest_hash and again.num_images == len(meta)


def test_a_remembered_image_missing_from_the_store_is_decoded_and_stored_again(demo: Path, tmp_path: Path,
                                                                                count_decodes) -> None:
    store = LocalObjectStore(root=str(tmp_path / "store"))
    handle, _ = ingest_dataset(str(demo), store, SALT)
    manifest = pd.read_csv(store.local_path(handle.manifest_uri), dtype=str)
    lost = store.local_path(handle.images_prefix_uri) / manifest["image_key"].iloc[0]
    lost.unlink()
    count_decodes.clear()
    again, stats = ingest_dataset(str(demo), store, SALT)
    assert count_decodes == [f"{manifest['image_id'].iloc[0]}.jpg"] and stats.copied == 1
    assert lost.is_file() and again.manifest_hash == handle.manifest_hash


def test_a_changed_validation_version_decodes_everything(demo: Path, tmp_path: Path, count_decodes,
                                                         monkeypatch) -> None:
    store = LocalObjectStore(root=str(tmp_path / "store"))
    handle, _ = ingest_dataset(str(demo), store, SALT)
    count_decodes.clear()
    stricter = ingest.ImageLimits(max_bytes=10**7)  # other limits: another verdict may follow
    _, stats = ingest_dataset(str(demo), store, SALT, stricter)
    assert len(count_decodes) == handle.num_images and stats.remembered == 0
    assert ingest.validation_version(stricter) != ingest.validation_version()


def test_the_version_follows_the_hash_function_not_the_pair_search(tmp_path: Path, monkeypatch) -> None:
    """An edit elsewhere in ``near_duplicates`` (the pair search works on stored hashes) keeps every
    remembered verdict; a change to the perceptual hash function itself does not."""
    from ml_code.data import near_duplicates

    before = ingest.validation_version()
    edited = tmp_path / "near_duplicates.py"
    edited.write_text(Path(near_duplicates.__file__).read_text() + "\n# an edit to the pair search\n")
    monkeypatch.setattr(near_duplicates, "__file__", str(edited))
    assert ingest.validation_version() == before

    def another_hash(img) -> str:
        return "0" * 64

    monkeypatch.setattr(ingest, "phash_hex", another_hash)
    assert ingest.validation_version() != before


def test_validation_streams_and_hands_back_no_bytes(demo: Path, tmp_path: Path, monkeypatch) -> None:
    """Records are drawn lazily, at most ``window`` are read ahead of the consumer, and no result
    carries an image's bytes: memory does not grow with the number of images."""
    source = RawSource(str(demo))
    reads: list[str] = []
    real_read = RawSource.read
    monkeypatch.setattr(RawSource, "read", lambda self, name: reads.append(name) or real_read(self, name))
    meta = pd.read_csv(demo / "HAM10000_metadata.csv", dtype=str)
    drawn: list[str] = []

    def records():
        for image_id in meta["image_id"]:
            drawn.append(image_id)
            yield {"image_id": image_id, "_source": 0}

    store = LocalObjectStore(root=str(tmp_path / "store"))
    checker = _ImageChecker([source], store, ingest.ImageLimits(), {}, IngestStats())
    window = 4
    results = checker.check(records(), max_workers=2, window=window)
    consumed = 0
    for meta_row, info, reason in results:
        consumed += 1
        assert len(drawn) <= consumed + window  # never more than the window ahead
        assert info is not None and not reason
        assert not any(isinstance(v, (bytes, bytearray, memoryview)) for v in (*meta_row.values(), info, reason))
        if consumed == 3:
            assert len(reads) < len(meta) and len(drawn) < len(meta)
    assert consumed == len(meta) == len(reads)
    # every accepted image is already in the store: nothing is kept back for a later upload
    assert all(store.exists(store.uri("raw", f"images/{i.image_key}")) for i in checker.seen.values())


def test_the_memo_is_only_a_cache(demo: Path, tmp_path: Path) -> None:
    store = LocalObjectStore(root=str(tmp_path / "store"))
    handle, _ = ingest_dataset(str(demo), store, SALT)
    memo_uri = store.uri("raw", f"{ingestion.MEMO_PREFIX}/{ingest.validation_version()}.json")
    assert store.exists(memo_uri)
    store.put_bytes("raw", f"{ingestion.MEMO_PREFIX}/{ingest.validation_version()}.json", b"\x00garbage,\n1")
    again, stats = ingest_dataset(str(demo), store, SALT)  # unreadable memo: decode everything, no error
    assert again.manifest_hash == handle.manifest_hash and stats.remembered == 0


def test_an_unchanged_file_is_not_read_again_and_a_changed_one_is(demo: Path, tmp_path: Path, monkeypatch) -> None:
    """A rerun reads and hashes only files whose size/mtime/inode (the file version) changed; a file
    rewritten with other bytes is read, decoded and stored again, and the manifest is the one a run
    without any memory writes."""
    dataset = tmp_path / "drop"
    shutil.copytree(demo, dataset)
    store = LocalObjectStore(root=str(tmp_path / "store"))
    first, _ = ingest_dataset(str(dataset), store, SALT)
    reads: list[str] = []
    real_read = RawSource.read
    monkeypatch.setattr(RawSource, "read", lambda self, name: reads.append(name) or real_read(self, name))
    again, stats = ingest_dataset(str(dataset), store, SALT)
    assert [r for r in reads if not r.endswith(".csv")] == [] and stats.unread == first.num_images
    assert again.manifest_hash == first.manifest_hash

    meta = pd.read_csv(dataset / "HAM10000_metadata.csv", dtype=str)
    changed = dataset / "images" / f"{meta['image_id'].iloc[0]}.jpg"
    other = dataset / "images" / f"{meta['image_id'].iloc[-1]}.jpg"
    shutil.copyfile(other, tmp_path / "other.jpg")
    from PIL import Image

    Image.open(tmp_path / "other.jpg").rotate(90).save(changed, quality=90)  # new bytes under the old name
    reads.clear()
    third, stats = ingest_dataset(str(dataset), store, SALT)
    assert [r for r in reads if not r.endswith(".csv")] == [f"images/{changed.name}"]
    assert stats.unread == first.num_images - 1
    fresh, _ = ingest_dataset(str(dataset), LocalObjectStore(root=str(tmp_path / "fresh")), SALT)
    assert third.manifest_hash == fresh.manifest_hash != first.manifest_hash

    changed.unlink()
    changed.symlink_to(other)  # a link where a remembered file was: refused as before, never followed
    fourth, _ = ingest_dataset(str(dataset), store, SALT)
    assert fourth.num_images == first.num_images - 1


def test_a_new_row_holding_a_remembered_rows_bytes_ahead_of_it_is_kept_as_a_fresh_run_keeps_it(
        demo: Path, tmp_path: Path) -> None:
    """Remembered rows are answered in one pass before new rows are read; which of two rows with the
    same bytes is kept still follows row order, as in a run without any memory."""
    dataset = tmp_path / "drop"
    shutil.copytree(demo, dataset)
    meta = pd.read_csv(dataset / "HAM10000_metadata.csv", dtype=str)
    store = LocalObjectStore(root=str(tmp_path / "store"))
    ingest_dataset(str(dataset), store, SALT)
    remembered = meta.iloc[3]
    twin = remembered.copy()
    twin["image_id"], twin["lesion_id"] = "ISIC_9999999", "HAM_9999999"
    shutil.copyfile(dataset / "images" / f"{remembered['image_id']}.jpg", dataset / "images" / "ISIC_9999999.jpg")
    pd.concat([meta.iloc[:3], twin.to_frame().T, meta.iloc[3:]]).to_csv(dataset / "HAM10000_metadata.csv", index=False)

    again, stats = ingest_dataset(str(dataset), store, SALT)
    fresh_store = LocalObjectStore(root=str(tmp_path / "fresh"))
    fresh, _ = ingest_dataset(str(dataset), fresh_store, SALT)
    # the twin's file is new, so it is read; its bytes are known, so it is not decoded
    assert stats.unread == len(meta) and stats.remembered == len(meta) + 1
    assert again.manifest_hash == fresh.manifest_hash
    quarantine = pd.read_csv(store.local_path(again.quarantine_uri), dtype=str)
    assert quarantine["image_id"].tolist() == [remembered["image_id"]]
    assert "same bytes as image 'ISIC_9999999'" in quarantine["reason"].iloc[0]
    assert store.get_bytes(again.quarantine_uri) == fresh_store.get_bytes(fresh.quarantine_uri)


def test_versions_in_one_pass_are_each_files_version(demo: Path, tmp_path: Path) -> None:
    """``RawSource.versions`` answers as ``version`` does, name by name: regular files get their
    identity; a missing file, a link to a file and a file under a linked folder get None."""
    dataset = tmp_path / "drop"
    shutil.copytree(demo, dataset)
    names = sorted(p.name for p in (dataset / "images").iterdir())
    (dataset / "images" / "linked.jpg").symlink_to(dataset / "images" / names[0])
    (dataset / "HAM10000_images_part_1").symlink_to(dataset / "images")
    source = RawSource(str(dataset))
    asked = [f"images/{n}" for n in names] + ["images/linked.jpg", "images/missing.jpg",
                                              f"HAM10000_images_part_1/{names[1]}", None]
    found = source.versions(asked)
    assert found == [source.version(n) if n else None for n in asked]
    assert all(v and v.startswith("file:") for v in found[:len(names)]) and found[len(names):] == [None] * 4
    (dataset / "images" / names[2]).write_bytes(b"changed")
    assert RawSource(str(dataset)).versions([f"images/{names[2]}"]) != [found[2]]


def _memo_files(store: LocalObjectStore) -> tuple[bytes, list[str]]:
    """The memo's base bytes and its delta keys, for this validation version."""
    version = ingest.validation_version()
    base = store.get_bytes(store.uri("raw", f"{ingestion.MEMO_PREFIX}/{version}.json"))
    return base, sorted(store.list_keys(store.uri("raw", f"{ingestion.MEMO_PREFIX}/{version}/")))


def _add_rows(dataset: Path, count: int, start: int) -> None:
    """``count`` new rows and files: copies of the first row's picture, each re-encoded differently."""
    from PIL import Image

    meta = pd.read_csv(dataset / "HAM10000_metadata.csv", dtype=str)
    picture = Image.open(dataset / "images" / f"{meta['image_id'].iloc[0]}.jpg").convert("RGB")
    rows = []
    for k in range(start, start + count):
        row = meta.iloc[0].copy()
        row["image_id"], row["lesion_id"] = f"ISIC_{9_000_000 + k}", f"HAM_{9_000_000 + k}"
        picture.rotate(k % 4 * 90).save(dataset / "images" / f"{row['image_id']}.jpg", quality=60 + k)
        rows.append(row)
    pd.concat([meta, pd.DataFrame(rows)]).to_csv(dataset / "HAM10000_metadata.csv", index=False)


def test_a_rerun_that_adds_files_writes_only_their_memo_entries(demo: Path, tmp_path: Path,
                                                                 count_decodes: list[str]) -> None:
    """The memo's base is written once; each rerun that adds files publishes a delta of just those;
    the merged memo answers every file, so nothing remembered is decoded again; a rerun that finds
    MAX_MEMO_DELTAS deltas writes one base again and removes them."""
    dataset = tmp_path / "drop"
    shutil.copytree(demo, dataset)
    store = LocalObjectStore(root=str(tmp_path / "store"))
    first, _ = ingest_dataset(str(dataset), store, SALT)
    base, deltas = _memo_files(store)
    assert deltas == []
    ingest_dataset(str(dataset), store, SALT)  # nothing new: nothing written
    assert _memo_files(store) == (base, [])

    for run in range(1, ingestion.MAX_MEMO_DELTAS + 2):
        _add_rows(dataset, 2, start=2 * run)
        count_decodes.clear()
        handle, stats = ingest_dataset(str(dataset), store, SALT)
        assert sorted(count_decodes) == [f"ISIC_{9_000_000 + k}.jpg" for k in (2 * run, 2 * run + 1)]
        assert handle.num_images == first.num_images + 2 * run and stats.unread == first.num_images + 2 * run - 2
        fresh, _ = ingest_dataset(str(dataset), LocalObjectStore(root=str(tmp_path / f"fresh{run}")), SALT)
        assert handle.manifest_hash == fresh.manifest_hash
        now_base, now_deltas = _memo_files(store)
        if run <= ingestion.MAX_MEMO_DELTAS:
            assert now_base == base and len(now_deltas) == run  # the base untouched; one small delta a run
            delta = store.get_json(store.uri("raw", now_deltas[-1]))
            assert len(delta["accepted"]["source_sha256"]) == 2
        else:  # a ninth delta would be one too many: one base again, and no delta
            assert now_base != base and now_deltas == []
    memo = ingestion._load_memo(store, ingest.validation_version())
    assert len(memo.accepted) == first.num_images + 2 * (ingestion.MAX_MEMO_DELTAS + 1) and memo.deltas == []


def test_a_memo_whose_files_have_mostly_gone_is_rewritten_and_a_broken_delta_only_costs_the_cache(
        demo: Path, tmp_path: Path) -> None:
    dataset = tmp_path / "drop"
    shutil.copytree(demo, dataset)
    store = LocalObjectStore(root=str(tmp_path / "store"))
    ingest_dataset(str(dataset), store, SALT)
    _add_rows(dataset, 1, start=0)
    ingest_dataset(str(dataset), store, SALT)
    base, deltas = _memo_files(store)
    assert len(deltas) == 1

    meta = pd.read_csv(dataset / "HAM10000_metadata.csv", dtype=str)
    meta.iloc[: len(meta) // 2].to_csv(dataset / "HAM10000_metadata.csv", index=False)  # half the rows go
    handle, _ = ingest_dataset(str(dataset), store, SALT)
    now_base, now_deltas = _memo_files(store)
    assert now_base != base and now_deltas == []
    assert len(ingestion._load_memo(store, ingest.validation_version()).accepted) == handle.num_images

    _add_rows(dataset, 1, start=1)
    ingest_dataset(str(dataset), store, SALT)
    (key,) = _memo_files(store)[1]
    store.put_bytes("raw", key, b"{not json")  # a delta that cannot be read: the memo is empty, no error
    again, stats = ingest_dataset(str(dataset), store, SALT)
    assert stats.remembered == 0 and again.num_images == handle.num_images + 1
    assert _memo_files(store)[1] == []  # the rewrite replaced the broken delta
    assert len(ingestion._load_memo(store, ingest.validation_version()).accepted) == again.num_images
