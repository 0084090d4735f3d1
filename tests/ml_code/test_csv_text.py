"""``csv_text`` writes the text pandas' ``to_csv`` writes, quoting included."""

from __future__ import annotations

import pandas as pd
import pytest

from ml_code.data.csv_text import csv_text

FRAMES = {
    "ids and digests": {"image_id": ["ISIC_1", "ISIC_2"], "sha256": ["ab" * 32, "cd" * 32], "label": ["0", "6"]},
    "empty cells": {"image_id": ["ISIC_1", ""], "age": ["", "45.0"], "sex": ["male", ""]},
    "a comma, quotes and line breaks": {"image_id": ["ISIC_1", "ISIC_2", "ISIC_3"],
                                        "localization": ['scalp, "left"', "back\nupper", "face\r"]},
    "a quote alone": {"image_id": ["ISIC_1"], "localization": ['the "left" side']},
    "a line break alone": {"image_id": ["ISIC_1"], "localization": ["back\nupper"]},
    "a carriage return alone": {"image_id": ["ISIC_1"], "localization": ["face\r"]},
    "spaces and non-ASCII kept as they are": {"lesion_id": [" HAM_é ü ", "HAM_2"], "dx": ["nv", "mel"]},
    "a header to quote": {"image,id": ["ISIC_1"], "dx": ["nv"]},
    "no rows": {"image_id": [], "dx": []},
    "one column with an empty cell": {"image_id": ["ISIC_1", ""]},
}


@pytest.mark.parametrize("case", sorted(FRAMES))
def test_the_text_is_pandas_to_csv(case: str) -> None:
    frame = pd.DataFrame(FRAMES[case], dtype=str)
    expected = frame.to_csv(index=False, lineterminator="\n")
    assert csv_text(list(frame.columns), [frame[c].tolist() for c in frame.columns]) == expected


def test_mismatched_columns_are_refused() -> None:
    with pytest.raises(ValueError, match="2 header names but 1 columns"):
        csv_text(["a", "b"], [["1"]])
    with pytest.raises(ValueError, match=r"columns differ in length: \[1, 2\]"):
        csv_text(["a", "b"], [["1"], ["2", "3"]])
