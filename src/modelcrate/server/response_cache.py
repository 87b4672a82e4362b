"""An optional per-version response cache (``serve --cache-size N``), like Triton's.

A request's key is a BLAKE2b digest of its input tensors (names, dtypes, shapes and bytes);
the cache belongs to one loaded version, so a hot swap starts a new, empty one and an answer
never outlives the version (digest) that computed it. Least recently used entries are
dropped past ``size``. Cached outputs are read-only arrays shared by every hit. It lives
on the event loop: no locks.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import numpy as np

Feeds = dict[str, np.ndarray]


class ResponseCache:
    def __init__(self, size: int) -> None:
        self.size = size
        self.entries: OrderedDict[bytes, Feeds] = OrderedDict()

    def key(self, feeds: Feeds) -> bytes | None:
        """The key of a request; None for inputs that cannot be hashed as bytes (strings)."""
        digest = hashlib.blake2b(digest_size=16)
        for name in sorted(feeds):
            array = feeds[name]
            if array.dtype.kind == "O":
                return None
            digest.update(f"{name}\0{array.dtype.str}\0{array.shape}\0".encode())
            digest.update(np.ascontiguousarray(array).data)
        return digest.digest()

    def get(self, key: bytes) -> Feeds | None:
        found = self.entries.get(key)
        if found is not None:
            self.entries.move_to_end(key)
        return found

    def put(self, key: bytes, outputs: Feeds) -> Feeds:
        """Keep ``outputs`` (made read-only) and return them."""
        for array in outputs.values():
            array.flags.writeable = False
        self.entries[key] = outputs
        self.entries.move_to_end(key)
        while len(self.entries) > self.size:
            self.entries.popitem(last=False)
        return outputs
