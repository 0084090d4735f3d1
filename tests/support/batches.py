"""Landed batches for ingestion tests: a folder in the HAM10000 layout, drawn or copied."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
from PIL import Image

from ml_code.tools.demo_data import generate_demo_dataset


def land_batch(batch: Path, base: Path) -> pd.DataFrame:
    """A clinic's export dropped as a landed batch: new lesions under ids of its own, plus one
    row re-sending an image id the base dataset already holds. Returns the new rows."""
    generate_demo_dataset(batch, n_lesions_per_class=1, image_size=(64, 48), seed=2)
    meta = pd.read_csv(batch / "HAM10000_metadata.csv", dtype=str)
    for image_id in meta["image_id"]:
        (batch / "images" / f"{image_id}.jpg").rename(batch / "images" / f"CLINIC_{image_id}.jpg")
    meta["image_id"], meta["lesion_id"] = "CLINIC_" + meta["image_id"], "CLINIC_" + meta["lesion_id"]
    clash = pd.read_csv(base / "HAM10000_metadata.csv", dtype=str).iloc[[0]]
    shutil.copy(base / "images" / f"{clash['image_id'].iloc[0]}.jpg", batch / "images")
    pd.concat([meta, clash]).to_csv(batch / "HAM10000_metadata.csv", index=False)
    return meta


def draw_batch(folder: Path, rows: list[tuple[str, str, str]], metadata: bytes | None = None,
                name: str = "HAM10000_metadata.csv", shade: int = 0) -> None:
    """A clinic batch: one PNG drawn per (image_id, dx, age) row; ``metadata`` overrides the CSV;
    folders meant to be ingested together need different ``shade``s (identical bytes are duplicates)."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for i, (image_id, _, _) in enumerate(rows):
        Image.new("RGB", (48, 40), (40 + 30 * i, 90 + shade, 200 - 20 * i)).save(folder / "images" / f"{image_id}.png")
    if metadata is None:
        lines = ["lesion_id,image_id,dx,dx_type,age,sex,localization"]
        lines += [f"L_{image_id},{image_id},{dx},histo,{age},female,back" for image_id, dx, age in rows]
        metadata = ("\n".join(lines) + "\n").encode()
    (folder / name).write_bytes(metadata)
