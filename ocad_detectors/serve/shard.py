"""Which instance owns an endpoint: a consistent-hash ring over ``count`` shards.

Each shard places ``VNODES`` points on a 64-bit ring (blake2b of ``"shard-<i>#<v>"``); an
endpoint belongs to the first point at or after the hash of its id. Growing from N to N+1
shards moves only about 1/(N+1) of the endpoints, so most per-endpoint state (and each
shard's snapshot) stays valid. The hash is stable across processes and Python versions
(no ``hash()`` randomisation).
"""

from __future__ import annotations

import bisect
import hashlib
from functools import lru_cache

__all__ = ["ShardRing"]

VNODES = 64


def _h(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big")


class ShardRing:
    """``owner(endpoint_id) -> shard index`` for a fixed number of shards."""

    def __init__(self, count: int, index: int = 0) -> None:
        if count < 1 or not 0 <= index < count:
            raise ValueError(f"shard index {index} outside [0, {count})")
        self.count = count
        self.index = index
        pts = sorted((_h(f"shard-{i}#{v}"), i) for i in range(count) for v in range(VNODES))
        self._keys = [p for p, _ in pts]
        self._owners = [i for _, i in pts]
        self.owner = lru_cache(maxsize=65_536)(self._owner)

    def _owner(self, endpoint_id: str) -> int:
        if self.count == 1:
            return 0
        j = bisect.bisect_left(self._keys, _h(endpoint_id))
        return self._owners[j % len(self._keys)]

    def mine(self, endpoint_id: str) -> bool:
        return self.count == 1 or self.owner(endpoint_id) == self.index
