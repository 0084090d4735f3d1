"""The per-run training curves image shown on the trained_model asset."""

from __future__ import annotations

import io

from PIL import Image

from ml_code.evaluation.curves import curves_png


def test_curves_image_from_history() -> None:
    history = [{"epoch": e, "train_loss": 2.0 / e, "val_loss": 2.2 / e, "val_balanced_accuracy": 0.2 * e,
                "val_macro_auc": 0.5 + 0.1 * e} for e in (1, 2, 3)]
    png = curves_png(history)
    with Image.open(io.BytesIO(png)) as img:
        assert img.format == "PNG" and img.size == (560, 208)  # 7 x 2.6 in at 80 dpi
        colours = len(img.convert("RGB").getcolors(maxcolors=1 << 16) or [])
    assert colours > 10  # lines and legends were drawn, not a blank canvas


def test_no_history_no_image() -> None:
    assert curves_png([]) is None
