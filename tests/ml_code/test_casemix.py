"""The case-mix scale shared by the training split and captured requests."""

from __future__ import annotations

import numpy as np
import pytest

from ml_code.monitoring.casemix import BODY_REGIONS, body_region, case_mix_frame, with_context
from ml_code.package.descriptors import SITE_REGIONS


def test_ages_are_capped_at_90_and_nonsense_is_unknown() -> None:
    frame = case_mix_frame(["95", 42, "35.0", "", None, "abc", -3, 130], ["male"] * 8, ["back"] * 8)
    assert frame["age"].tolist()[:3] == [90.0, 42.0, 35.0]
    assert frame["age"].iloc[3:].isna().all()


def test_sex_and_both_archives_sites_map_to_one_scale() -> None:
    sex = ["Male ", "female", "unknown", None, "other"]
    sites = ["back", "anterior torso", "acral", "foot", "scalp"]  # HAM10000 and ISIC vocabularies mixed
    frame = case_mix_frame([50] * 5, sex, sites)
    assert frame["sex"].tolist() == ["male", "female", "unknown", "unknown", "unknown"]
    assert frame["body_region"].tolist() == ["torso", "torso", "palms_soles", "lower_extremity", "head_neck"]
    assert body_region("nowhere") == body_region(None) == "unknown"


def test_every_listed_site_has_exactly_one_region() -> None:
    sites = {s for members in SITE_REGIONS.values() for s in members}
    assert all(body_region(s) in BODY_REGIONS for s in sites)


def test_context_is_any_known_field_and_lengths_must_agree() -> None:
    frame = case_mix_frame([None, 60, None, None], ["unknown", None, "female", None], [None, None, None, "hand"])
    assert with_context(frame).tolist() == [False, True, True, True]
    with pytest.raises(ValueError, match="one value per image"):
        case_mix_frame([1, 2], ["male"], ["back", "back"])
    assert np.isnan(case_mix_frame([None], [None], [None])["age"][0])
