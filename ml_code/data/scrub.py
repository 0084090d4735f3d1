"""Metadata removal for stored images: the pixels are kept, the identifiers are not.

A camera JPEG carries far more than its pixels: EXIF dates and times, GPS position, the
body's and lens's serial numbers, maker notes, the owner's name, XMP edit histories,
IPTC captions, comments, thumbnails and, in an MPO, further frames. Dates and device
serials are identifiers under HIPAA's safe harbour, so ingestion stores an image only
after :func:`scrub` has removed them. The sha256 and the content-addressed key of an
image are those of the scrubbed bytes.

The removal is lossless at the byte level: the compressed image data is copied
unchanged, so every stage decodes exactly the pixels it decoded from the original.

**JPEG** (a small marker walker). Kept: SOI; APP0 ``JFIF`` (it tells the decoder the colour
space; its optional thumbnail is dropped); APP2 ``ICC_PROFILE`` (the colours); APP14
``Adobe`` (the colour transform of CMYK/YCCK and RGB JPEGs); every non-APP segment the
decoder reads (DQT, SOFn, DHT, DAC, DRI, DNL, SOS with its entropy-coded data, ...); EOI.
Dropped: APP1 (EXIF, XMP, extended XMP), APP2 that is not an ICC profile (the MPO index,
FlashPix), APP3-APP13 (APP12 "Ducky"/picture info, APP13 IPTC/Photoshop) and APP15, any
APP0 that is not JFIF, COM comments, and everything after the first EOI (an MPO's other
frames, trailing vendor data).

**PNG** (a chunk walker). Kept: IHDR, PLTE, IDAT, IEND, tRNS, gAMA, cHRM, sRGB and iCCP (its
free-text profile name is replaced by ``ICC profile``). Dropped: every other chunk (tEXt, zTXt,
iTXt, eXIf, tIME, pHYs, bKGD, APNG frames, private chunks) and bytes after IEND. An unknown
*critical* chunk is an error (it might be needed to decode).

**Orientation.** The EXIF orientation tag (or an XMP ``tiff:Orientation``) is the one piece of
metadata the pipeline needs: the image policy applies it before cropping. When it is not 1,
the scrubbed file carries a new, minimal EXIF block holding only that tag (an APP1 right
after SOI/JFIF, or an ``eXIf`` chunk before the first IDAT), so the stored file decodes,
orientation applied, to the same pixels, and the JPEG's DCT data stays untouched (so a
reduced-scale ``draft`` decode is unchanged too).

Standard library and Pillow only. Anything that does not parse raises :class:`ScrubError`;
the caller decides what to store instead (ingestion re-encodes the decoded pixels as PNG).
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass

from PIL import Image

JPEG_SOI = b"\xff\xd8"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ORIENTATION_TAG = 0x0112

PNG_KEEP = frozenset({b"IHDR", b"PLTE", b"IDAT", b"IEND", b"tRNS", b"gAMA", b"cHRM", b"sRGB", b"iCCP"})
"""PNG chunks copied to the stored file; all others are dropped."""

ICC_PROFILE_NAME = b"ICC profile"


class ScrubError(ValueError):
    """The file's structure could not be walked; nothing was scrubbed."""


@dataclass(frozen=True)
class Scrubbed:
    """The bytes to store, their container (``JPEG`` or ``PNG``) and what was removed (for logs:
    block names and sizes, never their contents)."""

    data: bytes
    format: str
    removed: tuple[str, ...]

    @property
    def changed(self) -> bool:
        return bool(self.removed)


def scrub(data: bytes, orientation: int | None = None) -> Scrubbed:
    """``data`` without its metadata blocks (see the module docstring), or ``ScrubError``.

    ``orientation`` is the EXIF orientation the image policy reads from ``data`` (1-8); None
    reads it here the same way (Pillow's ``getexif``, which also looks at XMP)."""
    data = bytes(data)
    if orientation is None:
        orientation = read_orientation(data)
    if not 1 <= int(orientation) <= 8:
        raise ScrubError(f"orientation {orientation} is not an EXIF orientation (1-8)")
    if data.startswith(JPEG_SOI):
        return _scrub_jpeg(data, int(orientation))
    if data.startswith(PNG_SIGNATURE):
        return _scrub_png(data, int(orientation))
    raise ScrubError("neither a JPEG nor a PNG file (no SOI marker or PNG signature)")


def read_orientation(data: bytes) -> int:
    """The EXIF orientation as the image policy reads it (1 when absent or unreadable)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            value = int(img.getexif().get(ORIENTATION_TAG, 1))
    except Exception:  # noqa: BLE001 - a broken EXIF block means no usable orientation, as in the policy
        return 1
    return value if 1 <= value <= 8 else 1


def minimal_exif(orientation: int) -> bytes:
    """A big-endian TIFF structure holding one IFD with only the orientation tag (26 bytes)."""
    return (b"MM\x00\x2a" + struct.pack(">I", 8) + struct.pack(">H", 1)
            + struct.pack(">HHIHH", ORIENTATION_TAG, 3, 1, orientation, 0) + struct.pack(">I", 0))


# ----------------------------------------------------------------------------------------------
# JPEG
# ----------------------------------------------------------------------------------------------
def _app_name(marker: int, payload: bytes) -> str:
    ident = payload.split(b"\x00", 1)[0][:16]
    label = ident.decode("ascii", "replace") if ident.isascii() and ident.strip() else ""
    return f"APP{marker - 0xE0}" + (f" {label}" if label and label.isprintable() else "")


def _jpeg_keep(marker: int, payload: bytes) -> tuple[bytes | None, str]:
    """(payload to keep or None, block name)."""
    if marker == 0xFE:
        return None, "COM"
    if not 0xE0 <= marker <= 0xEF:
        return payload, ""  # a segment the decoder reads
    name = _app_name(marker, payload)
    if marker == 0xE0 and payload.startswith(b"JFIF\x00") and len(payload) >= 14:
        return payload[:12] + b"\x00\x00", name  # version, units, density; no thumbnail
    if marker == 0xE2 and payload.startswith(b"ICC_PROFILE\x00"):
        return payload, name
    if marker == 0xEE and payload.startswith(b"Adobe"):
        return payload, name
    return None, name


def _scan_end(data: bytes, pos: int) -> int:
    """Index of the marker that ends the entropy-coded data starting at ``pos``."""
    n = len(data)
    while True:
        j = data.find(b"\xff", pos)
        if j < 0 or j + 1 >= n:
            raise ScrubError("the JPEG scan data runs to the end of the file (no end-of-image marker)")
        following = data[j + 1]
        if following == 0x00 or 0xD0 <= following <= 0xD7:  # stuffed byte or restart marker
            pos = j + 2
            continue
        return j


def _segment(marker: int, payload: bytes) -> bytes:
    if len(payload) + 2 > 0xFFFF:
        raise ScrubError("JPEG segment too long")
    return bytes((0xFF, marker)) + struct.pack(">H", len(payload) + 2) + payload


def _scrub_jpeg(data: bytes, orientation: int) -> Scrubbed:
    n = len(data)
    out: list[bytes] = [JPEG_SOI]
    removed: list[str] = []
    insert_at = 1  # where a minimal EXIF block goes: after SOI, or after a leading JFIF APP0
    pos = 2
    while True:
        if pos >= n:
            raise ScrubError("the JPEG ends without an end-of-image marker")
        if data[pos] != 0xFF:
            raise ScrubError(f"expected a JPEG marker at byte {pos}")
        while pos < n and data[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos >= n:
            raise ScrubError("the JPEG ends inside a marker")
        marker = data[pos]
        pos += 1
        if marker == 0xD9:  # EOI: whatever follows (MPO frames, trailers) is not kept
            out.append(b"\xff\xd9")
            break
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # TEM, RSTn: no length
            out.append(bytes((0xFF, marker)))
            continue
        if marker in (0x00, 0xD8):
            raise ScrubError(f"unexpected JPEG marker 0xFF{marker:02X} at byte {pos - 1}")
        if pos + 2 > n:
            raise ScrubError("the JPEG ends inside a segment header")
        length = struct.unpack(">H", data[pos:pos + 2])[0]
        if length < 2 or pos + length > n:
            raise ScrubError(f"JPEG segment 0xFF{marker:02X} at byte {pos - 2} runs past the end of the file")
        payload = data[pos + 2:pos + length]
        pos += length
        if marker == 0xDA:  # SOS: header, then entropy-coded data up to the next marker
            end = _scan_end(data, pos)
            out.append(_segment(marker, payload) + data[pos:end])
            pos = end
            continue
        kept, name = _jpeg_keep(marker, payload)
        if kept is None:
            removed.append(f"{name} ({len(payload)} bytes)")
            continue
        if kept != payload:
            removed.append(f"{name} thumbnail ({len(payload) - len(kept)} bytes)")
        out.append(_segment(marker, kept))
        if marker == 0xE0 and len(out) == 2:
            insert_at = 2
    if pos < n:
        removed.append(f"{n - pos} bytes after the end-of-image marker")
    if orientation != 1:
        out.insert(insert_at, _segment(0xE1, b"Exif\x00\x00" + minimal_exif(orientation)))
    return Scrubbed(b"".join(out), "JPEG", tuple(removed))


# ----------------------------------------------------------------------------------------------
# PNG
# ----------------------------------------------------------------------------------------------
def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _scrub_png(data: bytes, orientation: int) -> Scrubbed:
    n = len(data)
    out: list[bytes] = [PNG_SIGNATURE]
    removed: list[str] = []
    pos = len(PNG_SIGNATURE)
    exif_written = orientation == 1
    ended = False
    while pos < n:
        if pos + 8 > n:
            raise ScrubError("the PNG ends inside a chunk header")
        length = struct.unpack(">I", data[pos:pos + 4])[0]
        kind = data[pos + 4:pos + 8]
        end = pos + 12 + length
        if end > n or not kind.isalpha():
            raise ScrubError(f"PNG chunk at byte {pos} is malformed or runs past the end of the file")
        payload = data[pos + 8:pos + 8 + length]
        if kind in PNG_KEEP:
            if kind == b"IDAT" and not exif_written:
                out.append(_chunk(b"eXIf", minimal_exif(orientation)))
                exif_written = True
            if kind == b"iCCP" and b"\x00" in payload and payload.split(b"\x00", 1)[0] != ICC_PROFILE_NAME:
                out.append(_chunk(kind, ICC_PROFILE_NAME + b"\x00" + payload.split(b"\x00", 1)[1]))
                removed.append("iCCP profile name")
            else:
                out.append(data[pos:end])
        elif kind[:1].isupper():
            raise ScrubError(f"PNG has an unknown critical chunk {kind.decode('ascii')!r}")
        else:
            removed.append(f"{kind.decode('ascii')} ({length} bytes)")
        pos = end
        if kind == b"IEND":
            ended = True
            break
    if not ended:
        raise ScrubError("the PNG ends without an IEND chunk")
    if not exif_written:
        raise ScrubError("the PNG has no IDAT chunk")
    if pos < n:
        removed.append(f"{n - pos} bytes after IEND")
    return Scrubbed(b"".join(out), "PNG", tuple(removed))
