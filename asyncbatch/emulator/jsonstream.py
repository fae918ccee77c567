"""Reading the elements of one array inside a huge JSON object without holding the document in memory.

An Anthropic create body may be 256 MB; its ``requests`` array is yielded element by element (as raw bytes,
for msgspec to decode into Structs) from a file, holding one element and one read chunk at a time. Only
structural bytes are examined: strings are skipped with a regex, and UTF-8 continuation bytes never look
like ASCII, so the scan works on bytes.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import BinaryIO

import msgspec

CHUNK = 1 << 16
_STRUCTURE = re.compile(rb'["{}\[\]]')
_STRING_STOP = re.compile(rb'["\\]')
_SCALAR_END = re.compile(rb"[,\]}\s]")
_WHITESPACE = b" \t\r\n"


class JSONStreamError(ValueError):
    """The document is not JSON of the expected shape; the message says where, as the API would."""


class _Reader:
    def __init__(self, source: BinaryIO) -> None:
        self._source = source
        self.buf = b""
        self.pos = 0

    def _more(self, keep: int) -> bool:
        """Drop bytes before ``keep`` and read a chunk; positions shift down by ``keep``."""
        chunk = self._source.read(max(CHUNK, len(self.buf) - keep))  # doubling: big values stay linear
        if not chunk:
            return False
        self.buf = self.buf[keep:] + chunk
        self.pos -= keep
        return True

    def peek(self) -> int | None:
        """The next non-whitespace byte (not consumed), None at end of input."""
        while True:
            while self.pos < len(self.buf) and self.buf[self.pos] in _WHITESPACE:
                self.pos += 1
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self._more(self.pos):
                return None

    def take(self, allowed: bytes, where: str) -> int:
        byte = self.peek()
        if byte is None or byte not in allowed:
            found = "end of input" if byte is None else repr(chr(byte))
            raise JSONStreamError(f"{where}: invalid JSON: expected one of {allowed.decode()!r}, found {found}")
        self.pos += 1
        return byte

    def value(self, where: str) -> bytes:
        """The raw bytes of the next JSON value."""
        if self.peek() is None:
            raise JSONStreamError(f"{where}: invalid JSON: unexpected end of input")
        start = self.pos
        if self.buf[start] not in b'{["':
            while (match := _SCALAR_END.search(self.buf, start)) is None:
                if not self._more(start):
                    return self._cut(start, len(self.buf))
                start = 0
            return self._cut(start, match.start())
        i, depth, in_string = start, 0, False
        while True:
            match = (_STRING_STOP if in_string else _STRUCTURE).search(self.buf, i)
            if match is None or (match.group() == b"\\" and match.end() >= len(self.buf)):
                i = len(self.buf) if match is None else match.start()
                if not self._more(start):
                    raise JSONStreamError(f"{where}: invalid JSON: unexpected end of input")
                i, start = i - start, 0
                continue
            token, i = match.group(), match.end()
            if in_string:
                if token == b"\\":
                    i += 1
                    continue
                in_string = False
            elif token == b'"':
                in_string = True
                continue
            elif token in (b"{", b"["):
                depth += 1
                continue
            else:
                depth -= 1
            if depth == 0:
                return self._cut(start, i)

    def _cut(self, start: int, end: int) -> bytes:
        self.pos = end
        return self.buf[start:end]


def iter_array(source: BinaryIO, key: str) -> Iterator[bytes]:
    """Yield each element of the array at ``key`` of the top-level object in ``source``.

    Any other top-level key is an error (``"<key>: Extra inputs are not permitted"``), as is a missing one.
    """
    reader = _Reader(source)
    reader.take(b"{", "body")
    found = False
    if reader.peek() == ord("}"):
        reader.take(b"}", "body")
    else:
        while True:
            try:
                name = msgspec.json.decode(reader.value("body"))
            except msgspec.DecodeError:
                raise JSONStreamError("body: invalid JSON") from None
            if name != key:
                raise JSONStreamError(f"{name}: Extra inputs are not permitted")
            found = True
            reader.take(b":", "body")
            reader.take(b"[", key)
            if reader.peek() == ord("]"):
                reader.take(b"]", key)
            else:
                index = 0
                while True:
                    yield reader.value(f"{key}.{index}")
                    index += 1
                    if reader.take(b",]", key) == ord("]"):
                        break
            if reader.take(b",}", "body") == ord("}"):
                break
    if reader.peek() is not None:
        raise JSONStreamError("body: invalid JSON: trailing data after the object")
    if not found:
        raise JSONStreamError(f"{key}: Field required")
