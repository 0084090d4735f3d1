"""Helpers that turn job outputs into Dagster UI metadata (tables, small images)."""


import base64
import io
from collections.abc import Iterable, Mapping, Sequence

import dagster as dg

MAX_INLINE_IMAGE_BYTES = 400_000


def png_markdown(png: bytes, alt: str, max_bytes: int = MAX_INLINE_IMAGE_BYTES) -> dg.MetadataValue:
    """A PNG inline in the UI. One too large to inline (a Grad-CAM grid) is shown downscaled
    until it fits, saying so; the full-size image stays in the store beside the report."""
    note = ""
    if len(png) > max_bytes:
        from PIL import Image

        img = Image.open(io.BytesIO(png)).convert("RGB")
        full = img.size
        while len(png) > max_bytes and min(img.size) > 64:
            img = img.resize((max(1, img.width * 3 // 4), max(1, img.height * 3 // 4)), Image.Resampling.LANCZOS)
            buf = io.BytesIO()
            img.save(buf, format="PNG", optimize=True)
            png = buf.getvalue()
        note = f"\n\n_{alt}: downscaled from {full[0]}x{full[1]} to {img.width}x{img.height} px; full size in the store._"
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()}){note}")


def table_markdown(rows: Sequence[Mapping[str, object]], columns: Iterable[str] | None = None,
                   digits: int = 3) -> dg.MetadataValue:
    rows = list(rows)
    if not rows:
        return dg.MetadataValue.md("_(empty)_")
    cols = list(columns or rows[0].keys())

    def fmt(v: object) -> str:
        return f"{v:.{digits}f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return dg.MetadataValue.md("\n".join(lines))


def job_callbacks(context: dg.AssetExecutionContext, label: str):
    """(on_log, on_metric) that stream a job's output into the Dagster run log as it happens."""
    records: list[dict] = []

    def on_log(line: str) -> None:
        if line.strip():
            context.log.debug(f"[{label}] {line}")

    def on_metric(record: dict) -> None:
        records.append(record)
        shown = ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items())
        context.log.info(f"[{label}] {shown}")

    return on_log, on_metric, records
