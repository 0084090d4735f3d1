"""Stored images lose their metadata (EXIF dates, GPS, maker notes, serials, XMP, comments, PNG text),
keep their pixels, and are hashed and keyed as stored. Through ``ingest_dataset`` into a local store."""

from __future__ import annotations

import hashlib
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageCms, PngImagePlugin

from dermaops_services.ingestion import ingest_dataset
from dermaops_resources.object_store import LocalObjectStore
from ml_code.data import ingest, scrub
from ml_code.package.image_policy import decode_square, open_image

DATE = "2023:07:14 09:26:53"
SERIAL = "SN-4711-0815-XYZ"
MAKER_NOTE = b"MAKERNOTE-Canon-owner-J.Smith-\x01\x02\x03"
GPS_DATUM = "WGS-84-GPSDATUM"
XMP = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
       b'<rdf:Description xmlns:dc="http://purl.org/dc/elements/1.1/" dc:creator="Dr XMP Creator"/>'
       b'</rdf:RDF></x:xmpmeta>')
COMMENT = b"patient Jane Roe, MRN 12345"
SECRETS = (DATE.encode(), SERIAL.encode(), MAKER_NOTE, GPS_DATUM.encode(), b"Dr XMP Creator", COMMENT)


def lesion(size=(96, 64), mode="RGB") -> Image.Image:
    w, h = size
    img = Image.new("RGB", size)
    img.putdata([((x * 7) % 256, (y * 11) % 256, (x * y) % 256) for y in range(h) for x in range(w)])
    return img.convert(mode)


def camera_exif(orientation: int = 1) -> Image.Exif:
    exif = Image.Exif()
    exif[0x010F] = "Canon"  # Make
    exif[0x0132] = DATE  # DateTime
    if orientation != 1:
        exif[0x0112] = orientation
    sub = exif.get_ifd(0x8769)  # Exif IFD
    sub[0x9003] = DATE  # DateTimeOriginal
    sub[0x927C] = MAKER_NOTE  # MakerNote
    sub[0xA431] = SERIAL  # BodySerialNumber
    gps = exif.get_ifd(0x8825)  # GPS IFD
    gps[1] = "N"
    gps[2] = (52.0, 31.0, 12.5)
    gps[3] = "E"
    gps[4] = (13.0, 24.0, 3.25)
    gps[0x12] = GPS_DATUM  # GPSMapDatum
    return exif


def camera_jpeg(orientation: int = 1, **save) -> bytes:
    buf = io.BytesIO()
    lesion().save(buf, format="JPEG", quality=92, exif=camera_exif(orientation), comment=COMMENT, xmp=XMP, **save)
    return buf.getvalue()


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(open_image(data))


def ingest_files(tmp_path: Path, files: dict[str, bytes]) -> tuple[pd.DataFrame, dict[str, bytes], pd.DataFrame]:
    """Ingest ``{image file name: bytes}``; (manifest, image_id -> stored bytes, quarantine)."""
    dataset = tmp_path / "dataset"
    (dataset / "images").mkdir(parents=True)
    rows = []
    for i, (name, data) in enumerate(files.items()):
        (dataset / "images" / name).write_bytes(data)
        rows.append({"lesion_id": f"L{i}", "image_id": Path(name).stem, "dx": "nv", "dx_type": "histo",
                     "age": "50", "sex": "female", "localization": "back"})
    pd.DataFrame(rows).to_csv(dataset / "HAM10000_metadata.csv", index=False)
    store = LocalObjectStore(root=str(tmp_path / "store"))
    handle, _ = ingest_dataset(str(dataset), store, salt="s" * 32, max_workers=2)
    manifest = pd.read_csv(store.local_path(handle.manifest_uri), dtype=str)
    quarantine = pd.read_csv(store.local_path(handle.quarantine_uri), dtype=str)
    stored = {}
    for row in manifest.itertuples():
        data = store.get_bytes(store.uri("raw", f"images/{row.image_key}"))
        # the hash and the content-addressed key are those of the stored (scrubbed) bytes
        assert hashlib.sha256(data).hexdigest() == row.sha256
        assert row.image_key == ingest.image_key(row.sha256, ".png" if row.format == "PNG" else ".jpg")
        stored[row.image_id] = data
    return manifest, stored, quarantine


# ------------------------------------------------------------------------------------------
# Through ingestion
# ------------------------------------------------------------------------------------------
def test_a_camera_jpeg_is_stored_without_exif_gps_maker_notes_serial_xmp_or_comment(tmp_path):
    original = camera_jpeg()
    with Image.open(io.BytesIO(original)) as img:  # the fixture really carries them
        assert img.getexif().get_ifd(0x8769)[0xA431] == SERIAL and img.getexif().get_ifd(0x8825)
    assert all(secret in original for secret in SECRETS)
    manifest, stored, _ = ingest_files(tmp_path, {"ISIC_0000001.jpg": original})
    data = stored["ISIC_0000001"]
    for secret in SECRETS:
        assert secret not in data, secret
    assert b"Exif" not in data and b"http://ns.adobe.com/xap" not in data and b"\xff\xfe" not in data.split(b"\xff\xda")[0]
    with Image.open(io.BytesIO(data)) as img:
        assert img.format == "JPEG" and not img.getexif() and "comment" not in img.info and "xmp" not in img.info
    assert np.array_equal(pixels(data), pixels(original))
    assert np.array_equal(decode_square(data, 32), decode_square(original, 32))
    row = manifest.iloc[0]
    assert row.format == "JPEG" and row.sha256 != hashlib.sha256(original).hexdigest()


def test_an_orientation_6_jpeg_keeps_only_its_orientation_and_decodes_to_the_same_pixels(tmp_path):
    original = camera_jpeg(orientation=6)
    manifest, stored, _ = ingest_files(tmp_path, {"ISIC_0000002.jpg": original})
    data = stored["ISIC_0000002"]
    for secret in SECRETS:
        assert secret not in data, secret
    with Image.open(io.BytesIO(data)) as img:
        exif = img.getexif()
        assert dict(exif) == {0x0112: 6}  # the one tag the pipeline needs, nothing else
        assert not exif.get_ifd(0x8769) and not exif.get_ifd(0x8825)
    decoded = pixels(data)
    assert decoded.shape == (96, 64, 3)  # portrait: the rotation is applied when decoded
    assert np.array_equal(decoded, pixels(original))
    # the DCT data is untouched, so even the reduced-scale decode preprocessing uses agrees
    assert np.array_equal(decode_square(data, 24), decode_square(original, 24))
    row = manifest.iloc[0]
    assert row.format == "JPEG" and (row.width, row.height) == ("64", "96")


def test_a_png_loses_its_text_exif_and_time_chunks(tmp_path):
    info = PngImagePlugin.PngInfo()
    info.add_text("Author", "Smith")
    info.add_text("Comment", "Patient Jane Roe", zip=True)  # zTXt
    info.add_itxt("Description", "Taken at Clinic Nord", lang="en")
    buf = io.BytesIO()
    lesion().save(buf, format="PNG", pnginfo=info, exif=camera_exif())
    original = buf.getvalue()
    idat = original.index(b"IDAT")
    original = original[:idat - 4] + _png_chunk(b"tIME", struct.pack(">HBBBBB", 2023, 7, 14, 9, 26, 53)) \
        + original[idat - 4:]
    assert b"Smith" in original and b"tIME" in original and b"eXIf" in original
    manifest, stored, _ = ingest_files(tmp_path, {"ISIC_0000003.png": original})
    data = stored["ISIC_0000003"]
    for needle in (b"Smith", b"Author", b"tEXt", b"zTXt", b"iTXt", b"eXIf", b"tIME", b"Clinic Nord", *SECRETS):
        assert needle not in data, needle
    with Image.open(io.BytesIO(data)) as img:
        assert img.format == "PNG" and not img.text and not img.getexif()
    assert np.array_equal(pixels(data), pixels(original))
    assert manifest.iloc[0].format == "PNG"


def test_an_icc_profile_is_kept_and_decodes_the_same(tmp_path):
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    jpeg, png = io.BytesIO(), io.BytesIO()
    lesion().save(jpeg, format="JPEG", quality=92, icc_profile=profile, exif=camera_exif())
    info = PngImagePlugin.PngInfo()
    info.add_text("Author", "Smith")
    lesion().save(png, format="PNG", icc_profile=profile, pnginfo=info)
    originals = {"ISIC_0000004.jpg": jpeg.getvalue(), "ISIC_0000005.png": png.getvalue()}
    _, stored, _ = ingest_files(tmp_path, originals)
    for name, original in originals.items():
        data = stored[Path(name).stem]
        with Image.open(io.BytesIO(data)) as img:
            assert img.info.get("icc_profile") == profile, name
        assert SERIAL.encode() not in data and b"Smith" not in data
        assert np.array_equal(pixels(data), pixels(original)), name


def test_a_png_icc_profile_keeps_its_profile_but_not_its_free_text_name():
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    buf = io.BytesIO()
    lesion().save(buf, format="PNG", icc_profile=profile)
    data = buf.getvalue()
    start = data.index(b"iCCP") - 4
    length = struct.unpack(">I", data[start:start + 4])[0]
    payload = data[start + 8:start + 8 + length]
    named = b"Scanner of Dr Jane Roe" + b"\x00" + payload.split(b"\x00", 1)[1]
    original = data[:start] + _png_chunk(b"iCCP", named) + data[start + 12 + length:]
    result = scrub.scrub(original)
    assert b"Jane Roe" not in result.data
    with Image.open(io.BytesIO(result.data)) as img:
        assert img.info["icc_profile"] == profile
    assert np.array_equal(pixels(result.data), pixels(original))


def test_an_mpo_keeps_only_its_first_frame(tmp_path):
    buf = io.BytesIO()
    lesion().save(buf, format="MPO", save_all=True, append_images=[lesion((96, 64), "L").convert("RGB")],
                  exif=camera_exif())
    original = buf.getvalue()
    with Image.open(io.BytesIO(original)) as img:
        assert img.format == "MPO" and img.n_frames == 2
    manifest, stored, _ = ingest_files(tmp_path, {"ISIC_0000006.jpg": original})
    data = stored["ISIC_0000006"]
    with Image.open(io.BytesIO(data)) as img:
        assert img.format == "JPEG" and getattr(img, "n_frames", 1) == 1 and not img.getexif()
    assert data.count(b"\xff\xd9") == 1 and data.endswith(b"\xff\xd9") and b"MPF" not in data
    assert len(data) < len(original) // 2 + 200
    assert np.array_equal(pixels(data), pixels(original))
    assert manifest.iloc[0].format == "JPEG"


def test_two_files_that_differ_only_in_metadata_are_one_picture(tmp_path):
    plain = io.BytesIO()
    lesion().save(plain, format="JPEG", quality=92)
    manifest, _, quarantine = ingest_files(tmp_path, {"ISIC_0000007.jpg": plain.getvalue(),
                                                      "ISIC_0000008.jpg": camera_jpeg()})
    assert len(manifest) == 1
    assert "same bytes" in quarantine.set_index("image_id").loc["ISIC_0000008", "reason"]


# ------------------------------------------------------------------------------------------
# The scrubber on its own
# ------------------------------------------------------------------------------------------
def test_trailing_bytes_after_the_end_of_image_are_dropped():
    original = camera_jpeg() + b"TRAILER owner=J.Smith"
    result = scrub.scrub(original)
    assert b"J.Smith" not in result.data and result.data.endswith(b"\xff\xd9")
    assert any("after the end-of-image" in r for r in result.removed)
    assert np.array_equal(pixels(result.data), pixels(original))


def test_adobe_cmyk_jpeg_keeps_its_colour_transform():
    buf = io.BytesIO()
    lesion(mode="CMYK").save(buf, format="JPEG", quality=92, exif=camera_exif())
    original = buf.getvalue()
    assert b"Adobe" in original
    result = scrub.scrub(original)
    assert b"Adobe" in result.data and SERIAL.encode() not in result.data
    assert np.array_equal(pixels(result.data), pixels(original))


@pytest.mark.parametrize("save", [{"progressive": True}, {"restart_marker_blocks": 1}, {"subsampling": 0}])
def test_progressive_and_restart_marker_jpegs_are_walked_losslessly(save):
    original = camera_jpeg(**save)
    result = scrub.scrub(original)
    assert SERIAL.encode() not in result.data
    assert np.array_equal(pixels(result.data), pixels(original))


def test_an_xmp_only_orientation_is_carried_as_minimal_exif():
    xmp = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
           b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="8"/></rdf:RDF></x:xmpmeta>')
    buf = io.BytesIO()
    lesion().save(buf, format="JPEG", quality=92, xmp=xmp)
    original = buf.getvalue()
    assert scrub.read_orientation(original) == 8
    result = scrub.scrub(original)
    assert b"xmpmeta" not in result.data
    with Image.open(io.BytesIO(result.data)) as img:
        assert dict(img.getexif()) == {0x0112: 8}
    assert np.array_equal(pixels(result.data), pixels(original))


def test_a_png_orientation_is_carried_in_a_minimal_exif_chunk():
    buf = io.BytesIO()
    lesion().save(buf, format="PNG", exif=camera_exif(orientation=6))
    original = buf.getvalue()
    result = scrub.scrub(original)
    assert SERIAL.encode() not in result.data
    with Image.open(io.BytesIO(result.data)) as img:
        assert dict(img.getexif()) == {0x0112: 6}
    assert np.array_equal(pixels(result.data), pixels(original))


def test_what_cannot_be_walked_is_a_scrub_error():
    with pytest.raises(scrub.ScrubError):
        scrub.scrub(b"GIF89a....")
    with pytest.raises(scrub.ScrubError, match="end-of-image"):
        scrub.scrub(camera_jpeg()[:-2])


# ------------------------------------------------------------------------------------------
# The fallback: store the policy's pixels as PNG
# ------------------------------------------------------------------------------------------
def test_a_file_the_walker_refuses_is_stored_as_the_decoded_pixels_in_png(monkeypatch):
    original = camera_jpeg(orientation=6)
    info = ingest.inspect_image(original, "x.jpg")

    def refuse(data, orientation=None):
        raise scrub.ScrubError("test")

    monkeypatch.setattr(scrub, "scrub", refuse)
    data, new = ingest.scrub_image(original, info)
    assert new.format == "PNG" and new.extension == ".png" and new.sha256 == hashlib.sha256(data).hexdigest()
    assert (new.width, new.height, new.phash) == (info.width, info.height, info.phash)
    with Image.open(io.BytesIO(data)) as img:
        assert img.format == "PNG" and not img.getexif() and not img.text
    assert np.array_equal(pixels(data), pixels(original))


def test_a_scrubbed_file_that_decodes_differently_is_not_stored(monkeypatch):
    original = camera_jpeg()
    info = ingest.inspect_image(original, "x.jpg")
    other = io.BytesIO()
    lesion().transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(other, format="JPEG")
    monkeypatch.setattr(scrub, "scrub", lambda data, orientation=None: scrub.Scrubbed(other.getvalue(), "JPEG", ("x",)))
    data, new = ingest.scrub_image(original, info)
    assert new.format == "PNG" and np.array_equal(pixels(data), pixels(original))


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
