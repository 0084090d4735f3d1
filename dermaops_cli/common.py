"""Shared by the command modules: the configured resources and settings."""

from __future__ import annotations

from typing import Any

from dermaops_resources.settings import Settings


def resources() -> dict[str, Any]:
    """The resources of the configured backend (``DERMAOPS_BACKEND``), as the Dagster definitions build them."""
    from dermaops_resources.factory import build_resources

    return build_resources()


def settings() -> Settings:
    return Settings.from_env()
