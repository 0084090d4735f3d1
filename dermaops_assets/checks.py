"""Asset checks: properties a reviewer must be able to trust without reading code."""

from __future__ import annotations

import dagster as dg

from dermaops_resources.handles import ProcessedSplitsHandle, RawImagesHandle
from dermaops_resources.jobs import read_split_index
from dermaops_resources.object_store import ObjectStore
from ml_code.data.splits import SPLITS, check_no_leakage

from .ui import table_markdown


@dg.asset_check(asset="processed_splits", blocking=True,
                description="No lesion_id appears in two splits (images of one lesion would leak into test).")
def no_lesion_leakage(processed_splits: ProcessedSplitsHandle, store: ObjectStore) -> dg.AssetCheckResult:
    index = read_split_index(store, processed_splits.splits_uri)
    problems = check_no_leakage(index)
    per_lesion = index.groupby("lesion_id")["split"].nunique()
    return dg.AssetCheckResult(
        passed=not problems and int((per_lesion > 1).sum()) == 0,
        metadata={"lesions": int(per_lesion.size), "lesions_in_several_splits": int((per_lesion > 1).sum()),
                  "problems": dg.MetadataValue.json(problems[:20])},
    )


@dg.asset_check(asset="processed_splits",
                description="Every diagnosis is in every split wherever the class has at least 3 lesions.")
def class_coverage(processed_splits: ProcessedSplitsHandle, store: ObjectStore) -> dg.AssetCheckResult:
    index = read_split_index(store, processed_splits.splits_uri)
    lesions_per_class = index.groupby("dx")["lesion_id"].nunique()
    missing = []
    for dx, n_lesions in lesions_per_class.items():
        present = set(index.loc[index["dx"] == dx, "split"])
        if n_lesions >= 3 and present != set(SPLITS):
            missing.append({"dx": dx, "lesions": int(n_lesions), "missing_from": ",".join(sorted(set(SPLITS) - present))})
    return dg.AssetCheckResult(passed=not missing, severity=dg.AssetCheckSeverity.WARN,
                               metadata={"uncovered": table_markdown(missing) if missing else "none"})


@dg.asset_check(asset="raw_images",
                description="Quarantine stays a minority: most of a dataset failing validation means a wrong source.")
def quarantine_rate(raw_images: RawImagesHandle) -> dg.AssetCheckResult:
    total = raw_images.num_images + raw_images.num_quarantined
    rate = raw_images.num_quarantined / total if total else 1.0
    return dg.AssetCheckResult(passed=rate <= 0.2 and raw_images.num_images > 0,
                               severity=dg.AssetCheckSeverity.WARN,
                               metadata={"quarantine_rate": float(rate), "num_images": raw_images.num_images})


all_checks = [no_lesion_leakage, class_coverage, quarantine_rate]
