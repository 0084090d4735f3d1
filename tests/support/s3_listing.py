"""Count what S3 listings cost a piece of code: ListObjectsV2 calls and the entries they return,
through botocore's ``after-call`` event on the client (the requests really made, not timings)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any


class ListingCounter:
    """Attach to a boto3 S3 client; ``calls`` and ``entries`` (keys + common prefixes) since ``reset``."""

    def __init__(self, client: Any) -> None:
        self.calls = 0
        self.entries = 0
        client.meta.events.register("after-call.s3.ListObjectsV2", self._count)

    def _count(self, parsed: dict, **_: Any) -> None:
        self.calls += 1
        self.entries += len(parsed.get("Contents", [])) + len(parsed.get("CommonPrefixes", []))

    def reset(self) -> None:
        self.calls = self.entries = 0


def put_many(client: Any, bucket: str, keys: list[str], threads: int = 32) -> None:
    """Upload a tiny body under every key, ``threads`` requests at a time (boto3 clients are thread-safe)."""
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda k: client.put_object(Bucket=bucket, Key=k, Body=b"x"), keys))
