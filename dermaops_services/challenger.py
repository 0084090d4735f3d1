"""Reading the champion/challenger comparison's inputs from the object store.

Why not the inference log: the log keeps the rows the drift and quality monitors need (the
answer the client got); the comparison also needs the variant and, in shadow mode, the answer
nobody got. Both layouts are read here: the local endpoint's one path per endpoint (the
variant is in each record) and SageMaker's path per variant (``{capture_uri}/{endpoint}/
{variant}/yyyy/mm/dd/hh/*.jsonl``, the variant is the folder). Only the hour folders of the
last ``window_hours`` are listed (``start_after`` on the key), so the cost follows the window,
not the endpoint's age.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pandas as pd

from dermaops_resources.object_store import ObjectStore, join_uri
from ml_code.monitoring.challenger import ROW_COLUMNS, variant_rows


def read_variant_rows(store: ObjectStore, capture_uri: str, endpoint_name: str, window_hours: float,
                      shadow_variants: frozenset[str] = frozenset()) -> pd.DataFrame:
    """Every answer captured for ``endpoint_name`` in the last ``window_hours`` (columns
    ``ml_code.monitoring.challenger.ROW_COLUMNS``), all variants; a variant folder named in
    ``shadow_variants`` (SageMaker's shadow variant) holds answers no client received."""
    since = datetime.now(timezone.utc) - timedelta(hours=window_hours)
    folders, _ = store.list_level(join_uri(capture_uri, endpoint_name))
    frames = []
    for variant in folders:
        prefix = join_uri(capture_uri, endpoint_name, variant)
        _, base_key = store.split_uri(prefix)
        start_after = f"{base_key.rstrip('/')}/{since.strftime('%Y/%m/%d/%H')}"  # this hour's folder sorts after it
        for obj in store.list(prefix, start_after=start_after):
            if obj.key.endswith(".jsonl") and not obj.key.rsplit("/", 1)[-1].startswith("."):
                frames.append(variant_rows(store.get_bytes(obj.uri).splitlines(), variant, variant in shadow_variants))
    rows = pd.concat(frames, ignore_index=True) if frames else variant_rows([])
    return rows[rows["inference_time"] >= since].reset_index(drop=True)[list(ROW_COLUMNS)]
