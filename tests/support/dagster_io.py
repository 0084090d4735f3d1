"""An IO manager for tests that materialize single assets: handles as JSON in the store, in the
layout of dermaops_resources.io_manager.HandleIOManager (models/handles/<key>.json)."""

from __future__ import annotations

import importlib
import json

import dagster as dg

from dermaops_resources.object_store import LocalObjectStore


class HandleIO(dg.IOManager):
    """Same JSON layout as dermaops_resources.io_manager.HandleIOManager (models/handles/<key>.json).

    Kept local because HandleIOManager(store=...) currently rejects a store instance
    (its ``store`` field is typed ResourceDependency); swap back once that is fixed.
    """

    def __init__(self, store: LocalObjectStore) -> None:
        self.store = store

    def _key(self, key: dg.AssetKey) -> str:
        return "handles/" + "/".join(key.path) + ".json"

    def handle_output(self, context, obj) -> None:
        cls = type(obj)
        self.store.put_json("models", self._key(context.asset_key), {
            "type": f"{cls.__module__}:{cls.__qualname__}", "handle": json.loads(obj.model_dump_json())})

    def load_input(self, context):
        payload = self.store.get_json(self.store.uri("models", self._key(context.asset_key)))
        module, _, name = payload["type"].partition(":")
        return getattr(importlib.import_module(module), name).model_validate(payload["handle"])
