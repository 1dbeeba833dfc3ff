"""Safe binary codec for named numpy tensors.

Why not pickle/``np.save``: model updates come from devices we do not
control, and unpickling executes code. This format is data only: every
field is a fixed-width little-endian integer, a UTF-8 name or raw array
bytes of an allowlisted dtype, so decoding can never run anything.

Why this is defensive: a forged header could claim a shape of 2**60
elements. Every declared size is checked against the bytes that are left
*before* anything is allocated, and every failure becomes
:class:`~fedward.protocol.errors.DecodeError`.

Layout (all integers little-endian)::

    magic    4 bytes  b"FWTN"
    version  u8       FORMAT_VERSION
    flags    u8       must be 0 (reserved)
    count    u32      number of tensors
    count x:
      name_len u16, name (UTF-8, 1..MAX_NAME_BYTES bytes, unique)
      dtype    u8     code from DTYPE_CODES
      ndim     u8     0..MAX_NDIM
      shape    ndim x u64
      data     prod(shape) * itemsize bytes, C order, little-endian
    crc32    u32      zlib.crc32 of everything before it

CRC32 catches transport corruption (not tampering: authenticity is the
job of the signature/TLS layers above). Order of tensors is preserved.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Mapping

import numpy as np

from fedward.protocol.errors import DecodeError, EncodeError, MessageTooLarge, UnsupportedVersion

MAGIC = b"FWTN"
FORMAT_VERSION = 1
MAX_NAME_BYTES = 255
MAX_NDIM = 32
MAX_TENSORS = 65_536
MAX_DIM = 2**32 - 1
# Product of the non-zero dimensions; keeps numpy far from overflow even
# for zero-sized arrays such as shape (0, 2**32 - 1, 2**32 - 1).
MAX_ELEMENTS = 2**48

# Stable wire codes: never renumber, only append.
DTYPE_CODES: dict[np.dtype, int] = {
    np.dtype("<f4"): 1,
    np.dtype("<f2"): 2,
    np.dtype("<f8"): 3,
    np.dtype("i1"): 4,
    np.dtype("<i2"): 5,
    np.dtype("<i4"): 6,
    np.dtype("<i8"): 7,
    np.dtype("u1"): 8,
    np.dtype("<u4"): 9,
    np.dtype("<u8"): 10,
    np.dtype("bool"): 11,
}
CODE_DTYPES: dict[int, np.dtype] = {code: dt for dt, code in DTYPE_CODES.items()}

_HEADER = struct.Struct("<4sBBI")
_NAME_LEN = struct.Struct("<H")
_DTYPE_NDIM = struct.Struct("<BB")
_DIM = struct.Struct("<Q")
_CRC = struct.Struct("<I")
_PREFIX_SIZE = _HEADER.size
_TRAILER_SIZE = _CRC.size
# name_len + >=1 name byte + dtype + ndim: the smallest possible entry.
_MIN_ENTRY_SIZE = _NAME_LEN.size + 1 + _DTYPE_NDIM.size


def _wire_dtype(dtype: np.dtype) -> np.dtype:
    """The little-endian dtype used on the wire, or raise EncodeError."""
    wire = dtype.newbyteorder("<")
    if wire not in DTYPE_CODES:
        raise EncodeError(f"dtype {dtype} is not allowed on the wire")
    return wire


def _encode_name(name: object) -> bytes:
    if not isinstance(name, str):
        raise EncodeError(f"tensor name must be str, got {type(name).__name__}")
    try:
        raw = name.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise EncodeError(f"tensor name {name!r} is not valid UTF-8") from exc
    if not 1 <= len(raw) <= MAX_NAME_BYTES:
        raise EncodeError(f"tensor name must be 1..{MAX_NAME_BYTES} UTF-8 bytes, got {len(raw)}")
    return raw


def _check_shape(shape: tuple[int, ...]) -> None:
    if len(shape) > MAX_NDIM:
        raise EncodeError(f"ndim {len(shape)} > {MAX_NDIM}")
    if any(d > MAX_DIM for d in shape) or math.prod(d for d in shape if d) > MAX_ELEMENTS:
        raise EncodeError(f"shape {shape} is too large")


def _as_array(name: str, value: object) -> np.ndarray:
    if isinstance(value, np.generic):
        value = np.asarray(value)
    if not isinstance(value, np.ndarray):
        raise EncodeError(f"tensor {name!r} must be a numpy array, got {type(value).__name__}")
    return value


def _plan(tensors: Mapping[str, np.ndarray]) -> list[tuple[bytes, np.dtype, np.ndarray]]:
    """Validate everything that could fail before any bytes are produced."""
    if len(tensors) > MAX_TENSORS:
        raise EncodeError(f"{len(tensors)} tensors > {MAX_TENSORS}")
    plan = []
    for name, value in tensors.items():
        raw_name = _encode_name(name)
        array = _as_array(name, value)
        wire = _wire_dtype(array.dtype)
        _check_shape(array.shape)
        plan.append((raw_name, wire, array))
    return plan


def _entry_size(raw_name: bytes, wire: np.dtype, array: np.ndarray) -> int:
    return (
        _NAME_LEN.size
        + len(raw_name)
        + _DTYPE_NDIM.size
        + _DIM.size * array.ndim
        + array.size * wire.itemsize
    )


def tensor_bytes(tensors: Mapping[str, np.ndarray]) -> int:
    """Exact ``len(encode_tensors(tensors))`` without building the bytes.

    The simulator charges transfer time per encoded byte, so this must be
    exact and cheap (O(number of tensors), no copies).
    """
    body = sum(_entry_size(*entry) for entry in _plan(tensors))
    return _PREFIX_SIZE + body + _TRAILER_SIZE


def encode_tensors(tensors: Mapping[str, np.ndarray]) -> bytes:
    """Encode named arrays (order preserved) into the wire format.

    Arrays must be numpy arrays or scalars of an allowlisted dtype; any byte
    order and memory layout is accepted and normalised to C-order
    little-endian. Raises :class:`EncodeError` otherwise.
    """
    plan = _plan(tensors)
    parts: list[bytes] = [_HEADER.pack(MAGIC, FORMAT_VERSION, 0, len(plan))]
    for raw_name, wire, array in plan:
        parts.append(_NAME_LEN.pack(len(raw_name)))
        parts.append(raw_name)
        parts.append(_DTYPE_NDIM.pack(DTYPE_CODES[wire], array.ndim))
        parts.extend(_DIM.pack(d) for d in array.shape)
        parts.append(np.ascontiguousarray(array, dtype=wire).tobytes())
    body = b"".join(parts)
    return body + _CRC.pack(zlib.crc32(body))


class _Reader:
    """Bounds-checked cursor: every read checks the remaining length first."""

    def __init__(self, view: memoryview, end: int) -> None:
        self.view = view
        self.pos = 0
        self.end = end

    def remaining(self) -> int:
        return self.end - self.pos

    def take(self, n: int) -> memoryview:
        if n < 0 or n > self.remaining():
            raise DecodeError(f"truncated: need {n} bytes, {self.remaining()} left")
        chunk = self.view[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def unpack(self, fmt: struct.Struct) -> tuple[int, ...]:
        return fmt.unpack(self.take(fmt.size))


def _read_header(
    data: bytes | bytearray | memoryview, max_bytes: int | None
) -> tuple[_Reader, int]:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DecodeError(f"expected bytes, got {type(data).__name__}")
    view = memoryview(data).cast("B")
    if max_bytes is not None and len(view) > max_bytes:
        raise MessageTooLarge(f"tensor payload of {len(view)} bytes > limit {max_bytes}")
    if len(view) < _PREFIX_SIZE + _TRAILER_SIZE:
        raise DecodeError("tensor payload too short")
    if bytes(view[:4]) != MAGIC:
        raise DecodeError("bad tensor payload magic")
    end = len(view) - _TRAILER_SIZE
    (crc,) = _CRC.unpack(view[end:])
    if zlib.crc32(view[:end]) != crc:
        raise DecodeError("tensor payload CRC mismatch")
    reader = _Reader(view, end)
    _, version, flags, count = reader.unpack(_HEADER)
    if version != FORMAT_VERSION:
        raise UnsupportedVersion(f"tensor format version {version} (supported: {FORMAT_VERSION})")
    if flags != 0:
        raise DecodeError(f"unknown tensor payload flags {flags:#x}")
    return reader, count


def _read_entry(reader: _Reader) -> tuple[str, np.ndarray]:
    (name_len,) = reader.unpack(_NAME_LEN)
    if not 1 <= name_len <= MAX_NAME_BYTES:
        raise DecodeError(f"bad tensor name length {name_len}")
    try:
        name = bytes(reader.take(name_len)).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError("tensor name is not UTF-8") from exc
    code, ndim = reader.unpack(_DTYPE_NDIM)
    dtype = CODE_DTYPES.get(code)
    if dtype is None:
        raise DecodeError(f"unknown dtype code {code}")
    if ndim > MAX_NDIM:
        raise DecodeError(f"ndim {ndim} > {MAX_NDIM}")
    shape = tuple(reader.unpack(_DIM)[0] for _ in range(ndim))
    if any(d > MAX_DIM for d in shape) or math.prod(d for d in shape if d) > MAX_ELEMENTS:
        raise DecodeError(f"shape {shape} is too large")
    nbytes = math.prod(shape) * dtype.itemsize
    # take() checks nbytes against what is left before numpy allocates anything.
    raw = reader.take(nbytes)
    array = np.frombuffer(raw, dtype=dtype).reshape(shape).copy()
    if dtype == np.bool_ and nbytes and bytes(raw).translate(None, b"\x00\x01"):
        raise DecodeError(f"tensor {name!r}: bool bytes must be 0 or 1")
    return name, array


def decode_tensors(
    data: bytes | bytearray | memoryview, *, max_bytes: int | None = None
) -> dict[str, np.ndarray]:
    """Decode :func:`encode_tensors` output; order preserved.

    Returns fresh, writable, little-endian arrays that do not alias ``data``.
    Raises :class:`DecodeError` for any malformed input,
    :class:`UnsupportedVersion` for another format version and
    :class:`MessageTooLarge` if ``len(data) > max_bytes``.
    """
    reader, count = _read_header(data, max_bytes)
    if count > MAX_TENSORS or count * _MIN_ENTRY_SIZE > reader.remaining():
        raise DecodeError(f"tensor count {count} impossible for payload size")
    out: dict[str, np.ndarray] = {}
    for _ in range(count):
        name, array = _read_entry(reader)
        if name in out:
            raise DecodeError(f"duplicate tensor name {name!r}")
        out[name] = array
    if reader.remaining():
        raise DecodeError(f"{reader.remaining()} trailing bytes after tensors")
    return out
