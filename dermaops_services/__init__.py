"""Plain-Python services the assets call that are not resources: ingestion of raw data (with its
raw sources), reads of the monitoring log and baselines, and alarm evaluation. They use the
resources of ``dermaops_resources`` and are used by ``dermaops_assets``; nothing here is Dagster
configuration."""
