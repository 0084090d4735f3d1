"""IO manager for asset handles: small pydantic records stored as JSON in the object store.

Models, images and shards never pass through here; only the handle pointing at them.
JSON (not pickle) keeps handles readable by people and safe to load.
"""

from __future__ import annotations

import importlib
import json

import dagster as dg
from pydantic import BaseModel

from .object_store import ObjectStore


def handle_key(asset_key: dg.AssetKey) -> str:
    """Models-bucket key of an asset's stored handle: ``handles/<asset path>.json``."""
    return "handles/" + "/".join(asset_key.path) + ".json"


def store_handle(store: ObjectStore, asset_key: dg.AssetKey, handle: BaseModel) -> str:
    """Store ``handle`` as the asset's current one (what downstream assets load); returns its URI.
    Also used outside a run by ``dermaops endpoint promote``, which changes what ``live_endpoint`` serves."""
    cls = type(handle)
    payload = {"type": f"{cls.__module__}:{cls.__qualname__}", "handle": json.loads(handle.model_dump_json())}
    return store.put_json("models", handle_key(asset_key), payload)


class HandleIOManager(dg.ConfigurableIOManager):
    store: ObjectStore

    def _key(self, asset_key: dg.AssetKey) -> str:
        return handle_key(asset_key)

    def handle_output(self, context: dg.OutputContext, obj: BaseModel | None) -> None:
        if obj is None:
            return
        if not isinstance(obj, BaseModel):
            raise TypeError(
                f"Asset {context.asset_key.to_user_string()} returned {type(obj).__name__}; DermaOps assets "
                "return a pydantic handle (dermaops_resources.handles) and keep bytes in the object store."
            )
        store_handle(self.store, context.asset_key, obj)

    def load_input(self, context: dg.InputContext) -> BaseModel:
        key = context.upstream_output.asset_key if context.upstream_output else context.asset_key
        uri = self.store.uri("models", self._key(key))
        try:
            payload = self.store.get_json(uri)
        except FileNotFoundError as exc:
            raise dg.Failure(
                f"Upstream asset {key.to_user_string()} has no stored handle at {uri}; materialize it first "
                f"(dagster asset materialize -m dermaops_assets --select {key.to_user_string()})."
            ) from exc
        module, _, qualname = payload["type"].partition(":")
        cls = getattr(importlib.import_module(module), qualname)
        return cls.model_validate(payload["handle"])
