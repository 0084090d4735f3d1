"""Endpoint deployer: puts an Approved model package behind a live HTTP endpoint.

``LocalEndpointDeployer`` runs ``ml_code.serve`` as a detached server process on
127.0.0.1 that outlives the Dagster run; ``SageMakerEndpointDeployer``
(``dermaops_resources.aws.endpoint``) creates a SageMaker endpoint with auto-scaling.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import dagster as dg

from .handles import EndpointHandle
from .object_store import ObjectStore
from .registry import ModelPackage


class DeploymentFailed(RuntimeError):
    """The new package did not pass its health check; the previous one keeps serving."""


class EndpointDeployer(dg.ConfigurableResource, ABC):
    @abstractmethod
    def deploy(self, package: ModelPackage, store: ObjectStore,
               on_log: Callable[[str], None] | None = None) -> EndpointHandle:
        """Serve ``package``; swap without failing requests in flight; raise DeploymentFailed
        (leaving the old model serving) when the new one is unhealthy."""

    @abstractmethod
    def status(self) -> dict[str, Any] | None:
        """JSON-able status (at least url, package_version, healthy) or None when not deployed."""

    @abstractmethod
    def stop(self) -> bool:
        """Stop the endpoint; True if one was running."""
