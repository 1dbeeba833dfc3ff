"""Splitting large messages into chunks and reassembling them safely.

Why: brokers and constrained devices cap the packet size (Mosquitto's
``message_size_limit``, MQTT v5 Maximum Packet Size, small MCU buffers),
while a model or an update frame can be megabytes. Chunking lets the
transport keep every MQTT packet under the limit.

Why the reassembler is paranoid: chunks come from the network, so a
sender could announce a 4 GiB message, open thousands of messages, never
finish them, or send two different versions of chunk 3. Memory is bounded
by the bytes actually held, per sender and in total, and by an in-flight
count (per sender and in total). An announced length is only checked against
the per-message limit, never reserved: four 100-byte chunks announcing 16 MiB
each once blocked every chunked uplink for two minutes. When a bound is hit
the *stalest* partial message (least recent chunk) goes first, so a sender
that stalls loses to one that is still sending, and a sender over its own
limits only evicts its own messages. Incomplete messages expire after
``ttl_s`` without a new chunk, measured with an injected clock. State is
keyed by sender (the topic: with the broker ACL of :mod:`fedward.protocol.topics`
only the authenticated client may publish on it), so one sender can neither
complete nor poison another's message.

Chunk layout (little-endian, :data:`CHUNK_HEADER_SIZE` bytes + data)::

    magic      4 bytes  b"FWCK"
    version    u8       CHUNK_VERSION
    flags      u8       must be 0
    message_id 16 bytes random per message
    index      u32      0-based
    count      u32      number of chunks (>= 1)
    total_len  u64      length of the whole message
    sha256     32 bytes digest of the whole message
    crc32      u32      zlib.crc32 of the header fields above + data
    data       the slice [index * chunk_len, ...)

The per-chunk CRC rejects a corrupted chunk at once; the SHA-256 of the
whole catches any inconsistency among individually valid chunks.
"""

from __future__ import annotations

import hashlib
import os
import struct
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from fedward.protocol.errors import ChunkError, EncodeError, UnsupportedVersion

CHUNK_MAGIC = b"FWCK"
CHUNK_VERSION = 1
_FIELDS = struct.Struct("<4sBB16sIIQ32s")
_CRC = struct.Struct("<I")
CHUNK_HEADER_SIZE = _FIELDS.size + _CRC.size
MIN_CHUNK_BYTES = CHUNK_HEADER_SIZE + 1


@dataclass(frozen=True, slots=True)
class Chunk:
    message_id: bytes
    index: int
    count: int
    total_len: int
    digest: bytes
    data: bytes


def is_chunk(payload: bytes | bytearray | memoryview) -> bool:
    """True if ``payload`` starts like a chunk (transports use this to route)."""
    return bytes(payload[:4]) == CHUNK_MAGIC


def split_message(
    payload: bytes, *, max_chunk_bytes: int, message_id: bytes | None = None
) -> list[bytes]:
    """Split ``payload`` into chunks of at most ``max_chunk_bytes`` each.

    ``max_chunk_bytes`` includes the chunk header. Always returns at least
    one chunk (an empty payload gives one empty chunk).
    """
    if type(max_chunk_bytes) is not int or max_chunk_bytes < MIN_CHUNK_BYTES:
        raise EncodeError(f"max_chunk_bytes must be an int >= {MIN_CHUNK_BYTES}")
    message_id = os.urandom(16) if message_id is None else message_id
    if len(message_id) != 16:
        raise EncodeError("message_id must be 16 bytes")
    step = max_chunk_bytes - CHUNK_HEADER_SIZE
    count = max(1, -(-len(payload) // step))
    if count > 2**32 - 1:
        raise EncodeError("payload needs too many chunks")
    digest = hashlib.sha256(payload).digest()
    chunks = []
    for index in range(count):
        data = payload[index * step : (index + 1) * step]
        fields = _FIELDS.pack(
            CHUNK_MAGIC, CHUNK_VERSION, 0, message_id, index, count, len(payload), digest
        )
        crc = zlib.crc32(data, zlib.crc32(fields))
        chunks.append(fields + _CRC.pack(crc) + data)
    return chunks


def parse_chunk(raw: bytes | bytearray | memoryview) -> Chunk:
    """Parse and integrity-check one chunk; raise :class:`ChunkError`."""
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise ChunkError(f"expected bytes, got {type(raw).__name__}")
    raw = bytes(raw)
    if len(raw) < CHUNK_HEADER_SIZE:
        raise ChunkError("chunk shorter than its header")
    fields = raw[: _FIELDS.size]
    magic, version, flags, message_id, index, count, total, digest = _FIELDS.unpack(fields)
    if magic != CHUNK_MAGIC:
        raise ChunkError("bad chunk magic")
    (crc,) = _CRC.unpack(raw[_FIELDS.size : CHUNK_HEADER_SIZE])
    data = raw[CHUNK_HEADER_SIZE:]
    if zlib.crc32(data, zlib.crc32(fields)) != crc:
        raise ChunkError("chunk CRC mismatch")
    if version != CHUNK_VERSION:
        raise UnsupportedVersion(f"chunk version {version} (supported: {CHUNK_VERSION})")
    if flags != 0:
        raise ChunkError(f"unknown chunk flags {flags:#x}")
    if not 1 <= count <= max(1, total) or index >= count or len(data) > total:
        raise ChunkError(f"inconsistent chunk index={index} count={count} total={total}")
    if index < count - 1 and not data:
        raise ChunkError("empty non-final chunk")
    return Chunk(message_id, index, count, total, digest, data)


@dataclass(slots=True)
class _Partial:
    count: int
    total_len: int
    digest: bytes
    expires_at: float
    last_seen: float = 0.0
    parts: dict[int, bytes] = field(default_factory=dict)
    received: int = 0


class Reassembler:
    """Bounded, per-sender reassembly of chunked messages (not thread-safe)."""

    def __init__(
        self,
        *,
        max_message_bytes: int = 16 * 1024 * 1024,
        max_total_bytes: int = 64 * 1024 * 1024,
        max_in_flight: int = 256,
        max_in_flight_per_sender: int = 4,
        max_sender_bytes: int | None = None,
        ttl_s: float = 60.0,
        max_recent: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if min(max_message_bytes, max_total_bytes, max_in_flight, max_in_flight_per_sender) < 1:
            raise ValueError("reassembler limits must be positive")
        if not ttl_s > 0:
            raise ValueError("ttl_s must be positive")
        self.max_message_bytes = max_message_bytes
        self.max_total_bytes = max_total_bytes
        self.max_in_flight = max_in_flight
        self.max_in_flight_per_sender = max_in_flight_per_sender
        self.max_sender_bytes = max_message_bytes if max_sender_bytes is None else max_sender_bytes
        if self.max_sender_bytes < 1:
            raise ValueError("reassembler limits must be positive")
        self.ttl_s = ttl_s
        self.max_recent = max_recent
        self._clock = clock
        self._partials: OrderedDict[tuple[str, bytes], _Partial] = OrderedDict()
        self._recent: OrderedDict[tuple[str, bytes], float] = OrderedDict()
        self._reserved = 0

    @property
    def in_flight(self) -> int:
        return len(self._partials)

    @property
    def reserved_bytes(self) -> int:
        """Bytes held for incomplete messages (received so far, not announced)."""
        return self._reserved

    def sender_bytes(self, sender: str) -> int:
        return sum(p.received for k, p in self._partials.items() if k[0] == sender)

    def _drop(self, key: tuple[str, bytes]) -> None:
        partial = self._partials.pop(key, None)
        if partial is not None:
            self._reserved -= partial.received

    def _stalest(self, keys: list[tuple[str, bytes]]) -> tuple[str, bytes]:
        return min(keys, key=lambda k: self._partials[k].last_seen)

    def evict_expired(self) -> int:
        """Drop incomplete messages past their TTL; return how many."""
        now = self._clock()
        expired = [k for k, p in self._partials.items() if p.expires_at <= now]
        for key in expired:
            self._drop(key)
        while self._recent and next(iter(self._recent.values())) <= now:
            self._recent.popitem(last=False)
        return len(expired)

    def _open(self, key: tuple[str, bytes], chunk: Chunk) -> _Partial:
        if chunk.total_len > self.max_message_bytes:
            raise ChunkError(f"announced {chunk.total_len} bytes > {self.max_message_bytes}")
        mine = [k for k in self._partials if k[0] == key[0]]
        if len(mine) >= self.max_in_flight_per_sender:
            self._drop(self._stalest(mine))  # a sender over its limit only hurts itself
        if len(self._partials) >= self.max_in_flight:
            self._drop(self._stalest(list(self._partials)))
        now = self._clock()
        partial = _Partial(chunk.count, chunk.total_len, chunk.digest, now + self.ttl_s, now)
        self._partials[key] = partial
        return partial

    def _make_room(self, key: tuple[str, bytes], size: int) -> None:
        """Evict stale partials until ``size`` more bytes fit the sender's and the total budget."""
        sender = key[0]
        while self.sender_bytes(sender) + size > self.max_sender_bytes:
            others = [k for k in self._partials if k[0] == sender and k != key]
            if not others:
                self._drop(key)
                raise ChunkError(
                    f"sender over its reassembly budget of {self.max_sender_bytes} bytes"
                )
            self._drop(self._stalest(others))
        while self._reserved + size > self.max_total_bytes:
            others = [k for k in self._partials if k != key]
            if not others:
                self._drop(key)
                raise ChunkError("reassembly capacity exhausted")
            self._drop(self._stalest(others))

    def feed(self, sender: str, raw: bytes | bytearray | memoryview) -> bytes | None:
        """Add one chunk from ``sender``; return the whole message when complete.

        Returns ``None`` while incomplete and for duplicates (including chunks
        of a message completed recently). Raises :class:`ChunkError` for a bad
        or inconsistent chunk; the affected message is dropped.
        """
        chunk = parse_chunk(raw)
        self.evict_expired()
        key = (sender, chunk.message_id)
        if key in self._recent:
            return None
        partial = self._partials.get(key)
        if partial is None:
            partial = self._open(key, chunk)
        if (chunk.count, chunk.total_len, chunk.digest) != (
            partial.count,
            partial.total_len,
            partial.digest,
        ):
            self._drop(key)
            raise ChunkError("chunk disagrees with earlier chunks of its message")
        previous = partial.parts.get(chunk.index)
        if previous is not None:
            if previous != chunk.data:
                self._drop(key)
                raise ChunkError(f"conflicting duplicate of chunk {chunk.index}")
            return None
        if partial.received + len(chunk.data) > partial.total_len:
            self._drop(key)
            raise ChunkError("chunks exceed the announced length")
        self._make_room(key, len(chunk.data))
        now = self._clock()
        partial.last_seen, partial.expires_at = now, now + self.ttl_s
        partial.parts[chunk.index] = chunk.data
        partial.received += len(chunk.data)
        self._reserved += len(chunk.data)
        if len(partial.parts) < partial.count:
            return None
        return self._complete(key, partial)

    def _complete(self, key: tuple[str, bytes], partial: _Partial) -> bytes:
        self._drop(key)
        parts = [partial.parts[i] for i in range(partial.count)]
        step = len(parts[0])
        if any(len(p) != step for p in parts[:-1]) or len(parts[-1]) > step:
            raise ChunkError("chunks have inconsistent sizes")
        message = b"".join(parts)
        if len(message) != partial.total_len:
            raise ChunkError("reassembled length differs from the announced length")
        if hashlib.sha256(message).digest() != partial.digest:
            raise ChunkError("reassembled message fails its SHA-256 check")
        self._recent[key] = self._clock() + self.ttl_s
        while len(self._recent) > self.max_recent:
            self._recent.popitem(last=False)
        return message
