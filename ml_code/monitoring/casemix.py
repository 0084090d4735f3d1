"""Case mix: who the images come from (age, sex, body region), on one scale for training and traffic.

The descriptor model reads the clinical context a request may carry (``ml_code.package.descriptors``),
and the HAM10000 benchmark is ~0.01 balanced accuracy better with it than without. So the
monitors watch it like any other input: a clinic that starts sending mostly children, mostly
acral lesions or no context at all is a shift the image features may not show. This module
puts the training split's ``age``/``sex``/``localization`` and a captured request's ``age``/
``sex``/``anatom_site`` on one coarse scale that ``ml_code.monitoring.drift.case_mix_drift`` compares:

- ``age``: years as a float, NaN when unknown; ages above 89 become 90, the HIPAA Safe
  Harbor rule for ages (an exact age over 89 is an identifier), so neither the inference log
  nor a baseline holds one;
- ``sex``: ``male`` | ``female`` | ``unknown``;
- ``body_region``: one of :data:`BODY_REGIONS` (both archives' site vocabularies map onto
  them through ``descriptors.SITE_REGIONS``) or ``unknown``.

Only these coarse values are kept: no free text from a request reaches the inference log.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from ml_code.package.descriptors import SITE_REGIONS

AGE_CAP = 90.0
UNKNOWN = "unknown"
#: Mutually exclusive regions (``SITE_REGIONS`` also has the anterior/posterior torso halves,
#: which overlap ``torso``): each site maps to the first region that lists it.
BODY_REGIONS: tuple[str, ...] = ("head_neck", "torso", "upper_extremity", "lower_extremity", "palms_soles",
                                 "oral_genital")
CASE_MIX_COLUMNS: tuple[str, ...] = ("age", "sex", "body_region")


def body_region(site: Any) -> str:
    """The coarse region of a HAM10000 ``localization`` or ISIC ``anatom_site_general`` value."""
    name = str(site).strip().lower() if site is not None else ""
    return next((region for region in BODY_REGIONS if name in SITE_REGIONS[region]), UNKNOWN)


def _age(value: Any) -> float:
    try:
        age = float(value)
    except (TypeError, ValueError):
        return float("nan")
    if not np.isfinite(age) or not 0.0 <= age <= 120.0:
        return float("nan")
    return min(age, AGE_CAP)


def _sex(value: Any) -> str:
    name = str(value).strip().lower() if value is not None else ""
    return name if name in ("male", "female") else UNKNOWN


def case_mix_frame(age: Sequence[Any], sex: Sequence[Any], site: Sequence[Any]) -> pd.DataFrame:
    """One row per image: ``age`` (float, NaN unknown, capped at 90), ``sex`` and ``body_region``."""
    if not len(age) == len(sex) == len(site):
        raise ValueError(f"age, sex and site need one value per image; got {len(age)}, {len(sex)}, {len(site)}")
    return pd.DataFrame({"age": np.array([_age(v) for v in age], dtype=np.float64),
                         "sex": pd.Series([_sex(v) for v in sex], dtype="object"),
                         "body_region": pd.Series([body_region(v) for v in site], dtype="object")})


def with_context(frame: pd.DataFrame) -> np.ndarray:
    """Which rows carry any clinical context (a known age, sex or body region)."""
    return (frame["age"].notna() | (frame["sex"] != UNKNOWN) | (frame["body_region"] != UNKNOWN)).to_numpy()
