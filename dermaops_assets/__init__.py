"""DermaOps Dagster definitions: ``dagster ... -m dermaops_assets`` finds ``defs`` here."""

from .definitions import defs

__all__ = ["defs"]
