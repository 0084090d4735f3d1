"""Synthetic lesion metadata at any size, with HAM10000's class mix: for split tests and the
split-scale benchmark (``benchmarks/split_scale.py``), where a million rows must be made in
seconds and no images are needed."""

from __future__ import annotations

import numpy as np
import pandas as pd

HAM10000_MIX: dict[str, float] = {"nv": 0.67, "mel": 0.11, "bkl": 0.11, "bcc": 0.05, "akiec": 0.03,
                                  "vasc": 0.014, "df": 0.011}
"""Share of images per diagnosis in HAM10000 (6,705 nv, 1,113 mel, 1,099 bkl, 514 bcc, 327 akiec,
142 vasc, 115 df of 10,015), rounded; renormalised where used."""


def synthetic_metadata(n_rows: int, images_per_lesion: float = 1.4, patient_share: float = 0.5,
                       lesions_per_patient: float = 2.0, seed: int = 0, prefix: str = "SYN") -> pd.DataFrame:
    """``n_rows`` metadata rows: ``image_id, lesion_id, patient_ref, dx`` (strings).

    Lesions draw their diagnosis from :data:`HAM10000_MIX` and have ``1 + Poisson(images_per_lesion
    - 1)`` images (mean ``images_per_lesion``; the last lesion is cut at ``n_rows``). A share
    ``patient_share`` of lesions belong to a patient (16 hex digits, like ingestion's
    ``patient_ref``), ``lesions_per_patient`` of them on average (Poisson); the rest have none.
    Ids are ``{prefix}_L<n>`` / ``{prefix}_I<n>``, so two calls with different prefixes give
    disjoint lesions. Vectorised: about a second per million rows."""
    if n_rows < 0 or images_per_lesion < 1:
        raise ValueError(f"need n_rows >= 0 and images_per_lesion >= 1, got {n_rows}, {images_per_lesion}")
    rng = np.random.default_rng(seed)
    n_lesions = max(1, int(np.ceil(n_rows / images_per_lesion * 1.1)) + 10)
    per_lesion = 1 + rng.poisson(images_per_lesion - 1, n_lesions)
    lesion_of_row = np.repeat(np.arange(n_lesions), per_lesion)[:n_rows]
    n_lesions = int(lesion_of_row[-1]) + 1 if n_rows else 0
    classes = np.array(list(HAM10000_MIX), dtype=object)
    p = np.array(list(HAM10000_MIX.values()))
    lesion_dx = rng.choice(classes, size=n_lesions, p=p / p.sum())
    has_patient = rng.random(n_lesions) < patient_share
    n_patients = max(1, int(has_patient.sum() / lesions_per_patient))
    patient_number = rng.integers(0, n_patients, n_lesions)
    salt = rng.integers(0, 2**62)
    patient_hex = np.char.mod("%016x", (patient_number.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
                                        + np.uint64(salt)) & np.uint64(0xFFFFFFFFFFFFFFFF))
    patient_ref = np.where(has_patient, patient_hex.astype(object), "")
    lesion_ids = pd.Series(np.arange(n_lesions)).astype(str).str.zfill(8).radd(f"{prefix}_L").to_numpy(dtype=object)
    image_ids = pd.Series(np.arange(n_rows)).astype(str).str.zfill(8).radd(f"{prefix}_I").to_numpy(dtype=object)
    return pd.DataFrame({"image_id": image_ids, "lesion_id": lesion_ids[lesion_of_row],
                         "patient_ref": patient_ref[lesion_of_row], "dx": lesion_dx[lesion_of_row]})
