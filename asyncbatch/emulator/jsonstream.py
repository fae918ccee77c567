"""Reading the elements of one array inside a huge JSON object without holding the document in memory.

An Anthropic create body may be 256 MB; its ``requests`` array is yielded element by element (as raw bytes,
for msgspec to decode into Structs) from a file, holding one element and one read chunk at a time. Only
structural bytes are examined: strings are skipped with a regex, and UTF-8 continuation bytes never look
like ASCII, so the scan works on bytes.

That scan costs some microseconds per string in Python, so elements that are objects whose first key is
known (``first_keys``) are taken a run at a time instead: the run ends where the buffer last shows ``}``, a
comma and ``{"<first key>"`` (which cannot occur inside a string, where the quote would be escaped), and
decoding the run as one JSON array (C code) checks that this was a boundary between elements. Where it was not
(an object nested in an element that starts with the same key), or where nothing looks like a boundary, the
elements are scanned one by one.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator
from typing import BinaryIO

import msgspec

CHUNK = 1 << 16
RUN_BYTES = 1 << 20  # what a run of elements is looked for in
RUN_TRIES = 3  # boundaries tried, from the last one back, before elements are scanned one by one
_STRUCTURE = re.compile(rb'["{}\[\]]')
_STRING_STOP = re.compile(rb'["\\]')
_SCALAR_END = re.compile(rb"[,\]}\s]")
_WHITESPACE = b" \t\r\n"
_raw_items = msgspec.json.Decoder(list[msgspec.Raw])


class JSONStreamError(ValueError):
    """The document is not JSON of the expected shape; the message says where, as the API would."""


class _Reader:
    def __init__(self, source: BinaryIO) -> None:
        self._source = source
        self.buf = b""
        self.pos = 0
        self.dropped = 0  # bytes dropped from the front of ``buf`` so far: ``dropped + pos`` is the offset read
        self._scan_until = 0  # offset up to which elements are scanned one by one (a run failed its check there)

    def _more(self, keep: int) -> bool:
        """Drop bytes before ``keep`` and read a chunk; positions shift down by ``keep``."""
        chunk = self._source.read(max(CHUNK, len(self.buf) - keep))  # doubling: big values stay linear
        if not chunk:
            return False
        self.buf = self.buf[keep:] + chunk
        self.pos -= keep
        self.dropped += keep
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

    def run(self, boundary: re.Pattern[bytes]) -> list[bytes]:
        """Whole elements from ``pos`` (where one starts) to one of the last ``RUN_TRIES`` boundaries in the next
        ``RUN_BYTES``, checked by decoding them as one array; empty when there is none that checks (the caller
        then scans one element, and the next ones up to the last place tried)."""
        if self.dropped + self.pos < self._scan_until:
            return []
        while len(self.buf) - self.pos < RUN_BYTES and self._more(self.pos):
            pass
        ends = [match.start() + 1 for match in boundary.finditer(self.buf, self.pos)][-RUN_TRIES:]
        for end in reversed(ends):  # each just after the `}` closing what would be the run's last element
            try:
                items = _raw_items.decode(b"[" + self.buf[self.pos:end] + b"]")
            except msgspec.DecodeError:
                continue
            self.pos = end
            return [bytes(item) for item in items]
        if ends:
            self._scan_until = self.dropped + ends[-1]
        return []


def iter_array(source: BinaryIO, key: str, *, first_keys: Collection[str] = ()) -> Iterator[bytes]:
    """Yield each element of the array at ``key`` of the top-level object in ``source``.

    Any other top-level key is an error (``"<key>: Extra inputs are not permitted"``), as is a missing one.
    ``first_keys``: keys an element (an object) may start with, to take elements a run at a time.
    """
    boundary = None
    if first_keys:
        names = b"|".join(re.escape(msgspec.json.encode(name)) for name in first_keys)
        boundary = re.compile(rb"\}\s*,\s*\{\s*(?:" + names + rb")")
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
                    run = reader.run(boundary) if boundary is not None else []
                    if run:
                        yield from run
                        index += len(run)
                    else:
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
