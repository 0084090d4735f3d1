"""Request-image limits and the one decode + centre crop every stage shares.

Ships inside ``model.tar.gz``: Pillow and NumPy only. The preprocess job, the drift monitor and
the endpoint all decode through :func:`load_image_square`, so training arrays, served requests
and monitored traffic see the same geometry.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

#: Decoded-size cap of a request image: a 500 KB PNG of one colour can declare 13000 x 13000
#: pixels (well under Pillow's decompression-bomb limit) and cost a second and ~1 GB to decode.
#: 36 MP covers the largest ISIC Archive originals (6000 x 4000).
MAX_IMAGE_PIXELS = 36_000_000
#: Image files and pixel modes a request may carry. 16-bit and floating-point greyscale (I;16,
#: I, F) are refused: Pillow's RGB conversion clips them instead of scaling, so the network
#: would see a white square and answer confidently.
ACCEPTED_IMAGE_FORMATS = ("JPEG", "PNG")
ACCEPTED_IMAGE_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr")


def load_image_square(data: bytes, size: int) -> np.ndarray:
    """Decode image bytes to uint8 ``(size, size, 3)`` RGB: JPEG draft decoding, centre crop of
    the shorter side, Lanczos resize. The one definition: the preprocess job and the drift
    monitor import it from here, so training arrays, served requests and monitored traffic
    all see the same geometry (this file ships alone, so it cannot import theirs).
    """
    with Image.open(io.BytesIO(data)) as img:
        if img.format == "JPEG":
            w, h = img.size
            side = min(w, h)
            img.draft("RGB", (max(size, -(-size * w // side)), max(size, -(-size * h // side))))
        img.load()
        w, h = img.size
        side = min(w, h)
        rgb = img.convert("RGB") if img.mode != "RGB" else img
        left, top = (w - side) / 2, (h - side) / 2
        out = rgb.resize((size, size), Image.Resampling.LANCZOS, box=(left, top, left + side, top + side))
        return np.asarray(out, dtype=np.uint8)



def check_request_image(img: Image.Image) -> None:
    """Refuse, before decoding pixels, what the model cannot read faithfully or cheaply."""
    if img.format not in ACCEPTED_IMAGE_FORMATS:
        raise ValueError(f"The request image is {img.format or 'of an unknown format'}; send a JPEG or PNG file.")
    w, h = img.size
    if w * h > MAX_IMAGE_PIXELS:
        raise ValueError(f"The request image is {w} x {h} pixels, more than {MAX_IMAGE_PIXELS:,}; downscale it "
                         "(the model reads it at under 100 px) and send it again.")
    if img.mode not in ACCEPTED_IMAGE_MODES:
        raise ValueError(f"The request image has pixel mode {img.mode} (e.g. 16-bit or floating-point greyscale), "
                         "which would be clipped, not scaled; send an 8-bit-per-channel JPEG or PNG.")



def undecodable(ctype: str, body: bytes, exc: BaseException) -> ValueError:
    # Pillow's "cannot identify image file <_io.BytesIO object at 0x...>" says nothing useful.
    detail = "not a JPEG or PNG file" if isinstance(exc, UnidentifiedImageError) else str(exc)
    return ValueError(f"Could not decode the {ctype} request body ({len(body)} bytes) as an image: {detail}. "
                      "Send the raw bytes of a JPEG or PNG file.")

