"""Random ids for the emulator's objects and result lines, cut from a pool of random hex.

Every result line carries two or three ids (line, request, completion); ``secrets.token_hex`` for each was a
tenth of the emulator's time per request. The ids are as random (96 bits from ``os.urandom``), drawn a few
KiB at a time; a lock keeps two threads (batches run in worker threads) from being given the same slice.
"""

from __future__ import annotations

import binascii
import os
import threading

_POOL_BYTES = 4096


class _HexPool:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._hex = b""
        self._at = 0

    def take(self, chars: int) -> bytes:
        with self._lock:
            start = self._at
            end = start + chars
            if end > len(self._hex):
                self._hex = binascii.hexlify(os.urandom(max(_POOL_BYTES, chars)))
                start, end = 0, chars
            self._at = end
            return self._hex[start:end]


_pool = _HexPool()


def random_hex_bytes(nbytes: int = 12) -> bytes:
    """``2 * nbytes`` random hex digits, like ``secrets.token_hex(nbytes).encode()``."""
    return _pool.take(2 * nbytes)


def random_hex(nbytes: int = 12) -> str:
    """``2 * nbytes`` random hex digits, like ``secrets.token_hex(nbytes)``."""
    return _pool.take(2 * nbytes).decode()
