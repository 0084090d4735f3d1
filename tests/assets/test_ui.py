"""UI metadata helpers: a Grad-CAM grid too large to inline is shown downscaled, not dropped."""

import base64
import io
import re

import numpy as np
from PIL import Image

from dermaops_assets.ui import png_markdown


def test_an_oversized_png_is_downscaled_to_fit_not_dropped():
    noise = np.random.default_rng(0).integers(0, 255, (900, 1200, 3), dtype=np.uint8)  # ~3 MB as PNG
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, format="PNG")
    assert len(buf.getvalue()) > 400_000
    md = png_markdown(buf.getvalue(), "Grad-CAM").value
    data = base64.b64decode(re.search(r"base64,([A-Za-z0-9+/=]+)\)", md).group(1))
    assert len(data) <= 400_000 and Image.open(io.BytesIO(data)).width < 1200
    assert "downscaled from 1200x900" in md and "full size in the store" in md
