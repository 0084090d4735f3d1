"""Share of recent requests the endpoint flagged as out of distribution.

The endpoint's answer carries ``in_distribution`` (``ml_code/package/ood.py``); the inference log
keeps it as 1.0 / 0.0, NaN where the serving package has no OOD statistics. A rising share
means traffic the model was not trained for (other devices, clinical photos, non-skin images)
is arriving, which the per-feature drift statistics may not show.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def flagged_share(rows: pd.DataFrame) -> dict[str, float | int | None]:
    """``{"assessed", "flagged", "share"}`` over inference-log rows: requests with an OOD
    verdict, how many were flagged (``in_distribution`` 0), and flagged / assessed (None when
    none was assessed, e.g. a package without OOD statistics or log parts from before)."""
    flags = rows["in_distribution"].to_numpy(dtype=float) if "in_distribution" in rows.columns else np.zeros(0)
    assessed = flags[~np.isnan(flags)]
    flagged = int((assessed == 0.0).sum())
    return {"assessed": int(len(assessed)), "flagged": flagged,
            "share": flagged / len(assessed) if len(assessed) else None}
