"""The one image policy: which files are read, and how, at ingestion, preprocessing, serving and monitoring.

Why one module: each stage used to decide for itself. Ingestion quarantined a CMYK JPEG
that the endpoint scored; both refused a camera JPEG that Pillow reports as ``MPO``
(a JPEG with a second, preview frame); none applied the EXIF orientation, so a photo
taken in portrait was trained sideways. A model is only as good as the agreement
between the pixels it was trained on and the pixels it is served, so every stage now
calls this module and gets the same decision, the same reason and the same pixels.

It ships inside the model package (``model.tar.gz``), where ``ml_code`` is not
installed: it imports only the standard library, NumPy and Pillow.

The policy, in the order it is applied:

1. **Container.** JPEG and PNG only (``ACCEPTED_FORMATS``). A JPEG that Pillow reports
   as ``MPO`` is a JPEG: its first frame is read and its format is reported as ``JPEG``.
   Any multi-frame file (MPO, animated PNG) is read by its first frame. Other containers
   (GIF, TIFF, WebP, BMP, ...) are refused: they are not what dermatoscopes export, the
   raw store and the endpoint contract name JPEG and PNG, and refusing keeps the
   decoder surface small.
2. **Pixel depth.** Modes that cannot be read faithfully are refused, before any other
   check so the reason names the real problem: 16-bit greyscale (``I;16*``), 32-bit
   integer (``I``) and floating point (``F``). Pillow's conversion to RGB clips these
   instead of scaling them (the network would see a white square and answer
   confidently), and their intensity range is not known (12-bit sensors store 0-4095).
   16-bit *colour* PNGs are accepted: Pillow reads them as 8-bit RGB(A) by keeping the
   high byte of each sample, which is the correct 8-bit quantisation.
3. **Size.** More than ``MAX_PIXELS`` (36 MP, the largest ISIC originals are 24 MP)
   is refused before decoding: a 50 KB PNG can declare 13000 x 13000 pixels and cost
   about 1 GB to decode. Pillow's own decompression-bomb errors are refused the same way.
4. **Decode.** The first frame is decoded completely; a truncated or corrupt file is
   refused (never padded with grey).
5. **Orientation.** The EXIF orientation tag is applied (``ImageOps.exif_transpose``)
   before any crop, so training and serving crop the same part of the lesion.
6. **Colour.** An embedded ICC profile (RGB, greyscale or CMYK) is converted to sRGB
   with littleCMS (``PIL.ImageCms``, perceptual intent). Untagged images are taken to
   be sRGB already; a profile that is unreadable, or whose colour space does not match
   the pixels, is ignored as web browsers ignore it (the image is read as untagged).
   Untagged CMYK, YCbCr, palette, greyscale and bilevel images are converted to RGB
   with Pillow's standard conversions.
7. **Transparency.** Alpha (RGBA, LA, PA, palette or RGB/L ``tRNS`` transparency) is
   composited on ``ALPHA_BACKGROUND``, opaque black, never on whatever colour is stored
   under the transparent pixels (a palette's transparent entry is often white or
   magenta). Black because the dermatoscope's own field-of-view vignette is black: a
   transparent margin then looks like the image borders the model has seen in training.

What is refused raises :class:`ImageRefused` (a ``ValueError``: the endpoint's 400) whose
``reason`` says what is wrong and how to fix it, identically at every stage.

Public API: :func:`probe` (header facts, no pixel decode), :func:`open_image` (the decoded
8-bit sRGB image), :func:`inspect` (facts after a full decode), :func:`decode_square`
(the centre crop + resize every pipeline stage feeds the network).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

ACCEPTED_FORMATS: tuple[str, ...] = ("JPEG", "PNG")
"""Containers read (as reported after MPO is folded into JPEG)."""

FORMAT_ALIASES: dict[str, str] = {"MPO": "JPEG"}
"""Pillow format names that are one of ``ACCEPTED_FORMATS`` with extra frames: read the first frame."""

ACCEPTED_MODES: tuple[str, ...] = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr")
"""Pixel modes with a faithful conversion to 8-bit RGB."""

UNFAITHFUL_MODES: dict[str, str] = {
    "I;16": "16-bit greyscale", "I;16B": "16-bit greyscale", "I;16L": "16-bit greyscale",
    "I;16N": "16-bit greyscale", "I": "32-bit integer greyscale", "F": "32-bit floating-point greyscale",
}
"""Modes refused with a named reason: Pillow clips them to 8 bits instead of scaling them."""

MAX_PIXELS: int = 36_000_000
"""Largest width x height decoded (oriented or not, the product is the same)."""

ALPHA_BACKGROUND: tuple[int, int, int] = (0, 0, 0)
"""Opaque sRGB colour that transparent pixels are composited on (see the module docstring)."""

RENDERING_INTENT = ImageCms.Intent.PERCEPTUAL
"""ICC rendering intent for the conversion to sRGB (for matrix/TRC profiles, which cameras
and phones embed, it is the same as relative colorimetric)."""

_ALPHA_MODES = frozenset({"LA", "PA", "RGBA"})
_ICC_SPACES = {"RGB": "RGB", "GRAY": "L", "CMYK": "CMYK"}  # ICC colour space -> Pillow mode of the pixels
_SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


class ImageRefused(ValueError):
    """The policy refuses this file; ``reason`` says what is wrong and how to fix it.

    A ``ValueError`` so the endpoint answers 400 with it; ingestion quarantines the file
    with it; preprocessing quarantines the image with it."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ImageFacts:
    """What the policy knows about a file.

    ``format`` is the accepted container (``JPEG`` for an MPO); ``container`` what Pillow
    reported (``MPO``); ``mode`` the stored pixel mode; ``width``/``height`` in pixels
    *after* the EXIF orientation is applied; ``frames`` how many frames the file holds
    (only the first is read); ``orientation`` the EXIF tag (1 when absent); ``has_icc``
    whether an ICC profile is embedded; ``has_alpha`` whether transparency is composited.
    """

    format: str
    container: str
    mode: str
    width: int
    height: int
    frames: int
    orientation: int
    has_icc: bool
    has_alpha: bool


# ----------------------------------------------------------------------------------------------
# Opening and checking
# ----------------------------------------------------------------------------------------------


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """Open (header only) and apply every check that needs no pixel decode; the caller closes it."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"image data must be bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise ImageRefused("file is empty (0 bytes); re-export or re-upload the image")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(bytes(data)))
        except UnidentifiedImageError:
            raise ImageRefused(
                "not a recognisable image (its first bytes are no JPEG or PNG signature); send a JPEG or PNG file"
            ) from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageRefused(f"image is too large to decode safely ({exc}); downscale it") from None
        except Exception as exc:  # noqa: BLE001 - any header error is a property of the file
            raise ImageRefused(
                f"image header is unreadable ({type(exc).__name__}: {exc}); the file is probably truncated "
                "or corrupt, re-copy it from the source"
            ) from None
    try:
        _check_header(img, max_pixels)
    except BaseException:
        img.close()
        raise
    return img


def _check_header(img: Image.Image, max_pixels: int) -> None:
    container = img.format or "unknown"
    if img.mode in UNFAITHFUL_MODES or img.mode not in ACCEPTED_MODES:
        what = UNFAITHFUL_MODES.get(img.mode, "a pixel mode with no faithful 8-bit RGB conversion")
        raise ImageRefused(
            f"colour mode {img.mode} ({what}) cannot be read faithfully: converting it to 8-bit would clip "
            "it, not scale it; re-export the image as an 8-bit-per-channel sRGB JPEG or PNG"
        )
    fmt = FORMAT_ALIASES.get(container, container)
    if fmt not in ACCEPTED_FORMATS:
        raise ImageRefused(
            f"format is {container}; accepted formats are JPEG (camera MPO JPEGs included) and PNG: "
            "convert it to PNG (lossless) before sending it"
        )
    w, h = img.size
    if w * h > max_pixels:
        raise ImageRefused(
            f"image is {w} x {h} pixels, more than {max_pixels:,}: too large to decode safely; downscale it "
            "(the model reads it at under 300 px)"
        )


def _orientation(img: Image.Image) -> int:
    try:
        value = int(img.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001 - a broken EXIF block means no usable orientation
        return 1
    return value if 1 <= value <= 8 else 1


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in _ALPHA_MODES or (img.mode in ("P", "L", "RGB", "1") and "transparency" in img.info)


def _facts(img: Image.Image, orientation: int) -> ImageFacts:
    container = img.format or "unknown"
    w, h = img.size
    if orientation in (5, 6, 7, 8):  # transposing orientations swap width and height
        w, h = h, w
    return ImageFacts(
        format=FORMAT_ALIASES.get(container, container), container=container, mode=img.mode,
        width=int(w), height=int(h), frames=int(getattr(img, "n_frames", 1) or 1), orientation=orientation,
        has_icc=bool(img.info.get("icc_profile")), has_alpha=_has_alpha(img),
    )


def _decode(img: Image.Image) -> None:
    """Decode the first frame fully, turning decoder errors into refusals."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageRefused(f"image is too large to decode safely ({exc}); downscale it") from None
        except Exception as exc:  # noqa: BLE001 - truncated/corrupt data raise many types
            raise ImageRefused(
                f"image data does not decode fully ({type(exc).__name__}: {exc}); the file is probably "
                "truncated or corrupt, re-copy it from the source"
            ) from None


# ----------------------------------------------------------------------------------------------
# Colour
# ----------------------------------------------------------------------------------------------


@lru_cache(maxsize=16)
def _srgb_transform(icc: bytes, in_mode: str) -> ImageCms.ImageCmsTransform | None:
    """littleCMS transform from the embedded profile to sRGB, or None when the profile is unusable."""
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        space = profile.profile.xcolor_space.strip()
        if _ICC_SPACES.get(space) != in_mode:
            return None  # the profile describes other pixels than these: ignore it, as browsers do
        # NOCACHE: littleCMS's one-pixel cache makes a shared transform unsafe across threads
        # (the preprocess job decodes in a thread pool)
        return ImageCms.buildTransform(profile, _SRGB, in_mode, "RGB", renderingIntent=RENDERING_INTENT,
                                       flags=ImageCms.Flags.NOCACHE)
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError, AttributeError):
        return None


def _colour_mode(mode: str) -> str:
    """Mode of the colour (non-alpha) channels: what an ICC profile of this image describes."""
    if mode in ("1", "L", "LA"):
        return "L"
    if mode == "CMYK":
        return "CMYK"
    return "RGB"  # P, PA, RGB, RGBA, RGBX, YCbCr


def _to_srgb(img: Image.Image, icc: bytes | None) -> Image.Image:
    """8-bit sRGB ``RGB`` image: ICC converted where present, alpha composited on the background."""
    alpha = img.convert("RGBA").getchannel("A") if _has_alpha(img) else None
    in_mode = _colour_mode(img.mode)
    colour = img if img.mode == in_mode else img.convert(in_mode)
    transform = _srgb_transform(bytes(icc), in_mode) if icc else None
    if transform is not None:
        rgb = ImageCms.applyTransform(colour, transform)
    else:
        rgb = colour if colour.mode == "RGB" else colour.convert("RGB")
    if alpha is not None:
        background = Image.new("RGB", rgb.size, ALPHA_BACKGROUND)
        rgb = Image.composite(rgb, background, alpha)
    return rgb


# ----------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------


def probe(data: bytes, *, max_pixels: int = MAX_PIXELS) -> ImageFacts:
    """Header-only facts, or ``ImageRefused``: cheap checks before paying for a decode.

    Does not catch truncated pixel data (:func:`inspect` and :func:`open_image` do)."""
    with _open(data, max_pixels) as img:
        return _facts(img, _orientation(img))


def open_with_facts(data: bytes, *, max_pixels: int = MAX_PIXELS,
                    draft_size: tuple[int, int] | None = None) -> tuple[Image.Image, ImageFacts]:
    """Decode ``data`` by the policy: ``(RGB 8-bit sRGB image, facts)``, or ``ImageRefused``.

    ``draft_size`` lets a JPEG decode at a reduced DCT scale no smaller than that
    ``(width, height)`` (in the file's stored orientation), as :func:`decode_square` does;
    None decodes at full resolution. The image is first frame, orientation applied, ICC
    converted, alpha composited on ``ALPHA_BACKGROUND``; it is not tied to ``data``.
    """
    with _open(data, max_pixels) as img:
        orientation = _orientation(img)
        facts = _facts(img, orientation)
        return _decoded(img, facts, orientation, draft_size), facts


def _decoded(img: Image.Image, facts: ImageFacts, orientation: int,
             draft_size: tuple[int, int] | None) -> Image.Image:
    """The opened ``img`` decoded by the policy (see :func:`open_with_facts`), detached from its file."""
    icc = img.info.get("icc_profile") or None
    if draft_size is not None and facts.format == "JPEG":
        img.draft("RGB", draft_size)
    _decode(img)
    oriented = ImageOps.exif_transpose(img) if orientation != 1 else img
    rgb = _to_srgb(oriented, icc)
    if rgb is img:
        rgb = img.copy()  # detach from the file object before it closes
    return rgb


def open_image(data: bytes, *, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """The decoded image as the model's pipeline sees it before cropping: mode ``RGB``,
    8-bit sRGB, first frame, orientation applied, alpha composited. ``ImageRefused`` otherwise."""
    return open_with_facts(data, max_pixels=max_pixels)[0]


def inspect(data: bytes, *, max_pixels: int = MAX_PIXELS) -> ImageFacts:
    """Facts about an accepted file after a full decode (so truncation is caught), or ``ImageRefused``."""
    return open_with_facts(data, max_pixels=max_pixels)[1]


def decode_square(data: bytes, size: int, *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """uint8 ``(size, size, 3)`` sRGB: the policy's decode, centre crop of the shorter side,
    Lanczos resize. What the preprocess job stores, the endpoint scores and the drift monitor
    reads. ``ImageRefused`` for a refused file; ``ValueError`` for ``size < 1``.

    The geometry is that of the former ``load_image_square`` (``ml_code.inference``): a JPEG is
    draft-decoded at the smallest DCT scale that still covers ``size`` after the crop, the
    crop box is centred in floating point and resampled directly to ``size``. A plain RGB
    JPEG or PNG therefore gives the same pixels as before.
    """
    return decode_square_with_facts(data, size, max_pixels=max_pixels)[0]


def decode_square_with_facts(data: bytes, size: int, *,
                             max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray, ImageFacts]:
    """``(decode_square(data, size), probe(data))`` from one parse of the file's header.

    The monitor needs both for every captured request (the model view and the size as sent);
    opening the file once instead of twice is a fifth of its decode cost at 128 x 96 px
    (benchmarks/monitoring_volume.py). Same errors as :func:`decode_square`."""
    if int(size) < 1:
        raise ValueError(f"size must be a positive number of pixels, got {size}")
    size = int(size)
    with _open(data, max_pixels) as img:
        orientation = _orientation(img)
        facts = _facts(img, orientation)
        # the draft request is in stored orientation; the formula is symmetric, so orientation cannot change it
        w, h = img.size
        side = min(w, h)
        draft = (max(size, -(-size * w // side)), max(size, -(-size * h // side)))
        rgb = _decoded(img, facts, orientation, draft)
    w, h = rgb.size
    side = min(w, h)
    left, top = (w - side) / 2, (h - side) / 2
    out = rgb.resize((size, size), Image.Resampling.LANCZOS, box=(left, top, left + side, top + side))
    return np.asarray(out, dtype=np.uint8), facts
