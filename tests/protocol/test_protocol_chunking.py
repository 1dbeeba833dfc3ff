"""Chunking: round trips in any order, bounded reassembly, hostile chunks."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedward.protocol.chunking import (
    MIN_CHUNK_BYTES,
    Reassembler,
    parse_chunk,
    split_message,
)
from fedward.protocol.errors import ChunkError, EncodeError


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@settings(max_examples=150, deadline=None)
@given(
    payload=st.binary(max_size=3000),
    max_chunk=st.integers(MIN_CHUNK_BYTES, 600),
    order=st.randoms(use_true_random=False),
    dup=st.booleans(),
)
def test_round_trip_in_any_order_with_duplicates(payload, max_chunk, order, dup):
    # Prepare
    chunks = split_message(payload, max_chunk_bytes=max_chunk)
    if dup:
        chunks = chunks + chunks[: len(chunks) // 2 + 1]
    order.shuffle(chunks)
    r = Reassembler()
    # Execute
    results = [r.feed("dev", c) for c in chunks]
    # Assert: exactly one completion, equal to the payload; chunks are within budget
    done = [x for x in results if x is not None]
    assert done == [payload]
    assert all(len(c) <= max_chunk for c in chunks)
    assert r.in_flight == 0 and r.reserved_bytes == 0


@settings(max_examples=200, deadline=None)
@given(payload=st.binary(min_size=1, max_size=500), data=st.data())
def test_bit_flips_and_truncations_raise_chunk_error(payload, data):
    # Prepare
    chunk = split_message(payload, max_chunk_bytes=200)[0]
    flipped = bytearray(chunk)
    bit = data.draw(st.integers(0, len(chunk) * 8 - 1))
    flipped[bit // 8] ^= 1 << (bit % 8)
    cut = data.draw(st.integers(0, len(chunk) - 1))
    # Execute / Assert
    with pytest.raises(ChunkError):
        Reassembler().feed("dev", bytes(flipped))
    with pytest.raises(ChunkError):
        parse_chunk(chunk[:cut])  # short header, or data that fails the CRC


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_raise_chunk_error(blob):
    # Execute / Assert
    for candidate in (blob, b"FWCK" + blob):
        with pytest.raises(ChunkError):
            Reassembler().feed("dev", candidate)


def test_inconsistent_sibling_chunks_are_rejected():
    # Prepare: two different messages forced to share one message id
    mid = b"\x01" * 16
    a = split_message(b"a" * 300, max_chunk_bytes=200, message_id=mid)
    b = split_message(b"b" * 300, max_chunk_bytes=200, message_id=mid)
    r = Reassembler()
    # Execute / Assert: a conflicting chunk drops the message and raises
    assert r.feed("dev", a[0]) is None
    with pytest.raises(ChunkError):
        r.feed("dev", b[1])
    assert r.in_flight == 0


def test_conflicting_duplicate_is_rejected():
    # Prepare: same id, same length/digest fields differ -> digest mismatch first
    mid = b"\x02" * 16
    a = split_message(b"x" * 300, max_chunk_bytes=200, message_id=mid)
    r = Reassembler()
    r.feed("dev", a[0])
    forged = split_message(b"y" * 300, max_chunk_bytes=200, message_id=mid)[0]
    # Execute / Assert
    with pytest.raises(ChunkError):
        r.feed("dev", forged)


def test_state_is_per_sender():
    # Prepare
    mid = b"\x03" * 16
    chunks = split_message(b"z" * 500, max_chunk_bytes=200, message_id=mid)
    r = Reassembler()
    # Execute: the first chunk from sender A, the rest from sender B
    r.feed("A", chunks[0])
    results = [r.feed("B", c) for c in chunks[1:]]
    # Assert: B cannot complete A's message
    assert results == [None] * (len(chunks) - 1)
    assert r.in_flight == 2


def test_ttl_eviction_with_injected_clock():
    # Prepare
    clock = FakeClock()
    r = Reassembler(ttl_s=10.0, clock=clock)
    chunks = split_message(b"q" * 500, max_chunk_bytes=200)
    r.feed("dev", chunks[0])
    # Execute
    clock.now = 11.0
    evicted = r.evict_expired()
    # Assert: the rest of the message starts over and never completes alone
    assert evicted == 1 and r.in_flight == 0 and r.reserved_bytes == 0
    assert [r.feed("dev", c) for c in chunks[1:]] == [None] * (len(chunks) - 1)


def test_announced_size_and_capacity_limits():
    # Prepare
    big = split_message(b"b" * 5000, max_chunk_bytes=1000)
    r = Reassembler(max_message_bytes=4096)
    tight = Reassembler(max_total_bytes=1000, max_in_flight_per_sender=10)
    # Execute / Assert: over the per-message limit
    with pytest.raises(ChunkError, match="announced"):
        r.feed("dev", big[0])
    # over the global byte budget: the stalled message of "a" makes room for "b"
    stalled = split_message(b"1" * 1200, max_chunk_bytes=500)
    tight.feed("a", stalled[0])
    tight.feed("a", stalled[1])
    fresh = split_message(b"2" * 800, max_chunk_bytes=500)
    assert [tight.feed("b", c) for c in fresh][-1] == b"2" * 800
    assert tight.reserved_bytes == 0 and tight.in_flight == 0


def test_sender_over_its_limit_only_evicts_its_own_oldest():
    # Prepare
    r = Reassembler(max_in_flight_per_sender=2)
    first = split_message(b"1" * 500, max_chunk_bytes=200)
    r.feed("other", split_message(b"o" * 500, max_chunk_bytes=200)[0])
    r.feed("dev", first[0])
    r.feed("dev", split_message(b"2" * 500, max_chunk_bytes=200)[0])
    # Execute: a third message from dev evicts dev's oldest, not other's
    r.feed("dev", split_message(b"3" * 500, max_chunk_bytes=200)[0])
    # Assert
    assert r.in_flight == 3
    assert [r.feed("dev", c) for c in first[1:]] == [None] * (len(first) - 1)


def test_completed_messages_are_deduplicated():
    # Prepare
    chunks = split_message(b"m" * 500, max_chunk_bytes=200)
    r = Reassembler()
    # Execute
    first = [r.feed("dev", c) for c in chunks]
    again = [r.feed("dev", c) for c in chunks]
    # Assert
    assert first[-1] == b"m" * 500 and again == [None] * len(chunks)


def test_split_validates_its_options():
    # Execute / Assert
    with pytest.raises(EncodeError):
        split_message(b"x", max_chunk_bytes=MIN_CHUNK_BYTES - 1)
    with pytest.raises(EncodeError):
        split_message(b"x", max_chunk_bytes=100, message_id=b"short")
    assert len(split_message(b"", max_chunk_bytes=MIN_CHUNK_BYTES)) == 1
