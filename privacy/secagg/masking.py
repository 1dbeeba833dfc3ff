"""Input encoding, mask streams and the checks shared by client and server.

A device's plain input is ``encode(clip(w_i * Delta_i)) || encode(w_i) || c_i``
(``session.total_words(config)`` = vector_length + 1 + count_words words of
Z_{2^k}; ``c_i`` the device's count words, each in [0, max_count]). Its masked
input adds

* its self mask ``PRG(KDF(b_i))``, and
* for every other device j of U2, ``+PRG(KDF(s_ij))`` if i < j in canonical
  order, ``-PRG(KDF(s_ij))`` otherwise (s_ij the X25519 secret of the pair),

so pairwise masks cancel in the sum over U2 and the server removes the rest
with the secrets it reconstructs.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .config import SecAggConfig, SecAggSession, canonical_order
from .crypto import advertisement_payload, verify
from .errors import OverflowRisk, ProtocolViolation, RangeViolation, TooFewSurvivors
from .messages import KeyAdvertisement, UnmaskRequest
from .prg import BLOCK_BYTES, chacha20_stream, keystream_word_bytes, word_mask
from .quantize import (
    decode_fixed_point,
    encode_fixed_point,
    stochastic_encode,
    to_signed,
    words_to_bytes,
)

# Every mask key is used for exactly one stream, so a fixed nonce is safe.
MASK_NONCE = bytes(12)
# The rounding key is fresh per masked input and used for this one stream only.
ROUNDING_NONCE = b"fedward-rnd\x00"
SECRET_BYTES = 32
#: Words masked per step: a multiple of the words per ChaCha20 block (16 up to 32 bits,
#: 8 above), so chunk k's keystream starts at block counter k * CHUNK_WORDS / per-block
#: and the chunks join into exactly the full stream the server regenerates; and a
#: multiple of 8, so chunk k's packed bytes start at byte k * CHUNK_WORDS * b / 8.
CHUNK_WORDS = 1 << 11  # 2,048: the wearable masks its subset with half its budget free


def encode_contribution(
    update: np.ndarray,
    *,
    weight: float,
    counts: Sequence[int],
    config: SecAggConfig,
    session: SecAggSession,
) -> np.ndarray:
    """Reference words of ``clip(weight * update) || weight || counts``, rounded to nearest.

    Devices use :func:`masked_contribution` (stochastic rounding, streamed);
    this deterministic form is what the round trip and bound tests compare to.
    """
    arr, checked = _checked_update(
        update, weight=weight, counts=counts, config=config, session=session
    )
    bits = config.modulus_bits
    words = np.empty(session.total_words(config), dtype=config.dtype)
    words[: session.vector_length] = encode_fixed_point(
        arr * float(weight), scale=config.scale, clip=config.clip, modulus_bits=bits
    )
    words[session.vector_length] = encode_fixed_point(
        np.array([float(weight)]),
        scale=config.effective_weight_scale,
        clip=config.max_weight,
        modulus_bits=bits,
    )[0]
    words[session.vector_length + 1 :] = checked
    return words


def check_counts(counts: object, *, config: SecAggConfig) -> tuple[int, ...]:
    """``counts`` as a tuple of exactly ``config.count_words`` ints in [0, max_count]."""
    if isinstance(counts, str | bytes) or not isinstance(counts, Sequence | np.ndarray):
        raise ProtocolViolation(f"counts must be a sequence of ints, got {counts!r}")
    values = list(counts)
    if len(values) != config.count_words:
        raise ProtocolViolation(
            f"counts must hold exactly count_words = {config.count_words} ints, got {len(values)}"
        )
    if any(isinstance(c, bool | np.bool_) or not isinstance(c, int | np.integer) for c in values):
        raise ProtocolViolation("every count word must be an int")
    checked = tuple(int(c) for c in values)
    if any(not 0 <= c <= config.max_count for c in checked):
        raise OverflowRisk(f"a count word lies outside [0, max_count={config.max_count}]")
    return checked


def _checked_update(
    update: np.ndarray,
    *,
    weight: float,
    counts: Sequence[int],
    config: SecAggConfig,
    session: SecAggSession,
) -> tuple[np.ndarray, tuple[int, ...]]:
    arr = np.asarray(update, dtype=np.float64)
    if arr.ndim != 1 or arr.shape[0] != session.vector_length:
        raise ProtocolViolation(
            f"update must be a vector of length {session.vector_length} (the shared index "
            f"set), got shape {arr.shape}"
        )
    if not np.all(np.isfinite(arr)):
        raise ProtocolViolation("update contains non-finite values")
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not np.isfinite(weight):
        raise ProtocolViolation(f"weight must be a finite number, got {weight!r}")
    if weight < 0 or weight > config.max_weight:
        raise OverflowRisk(f"weight {weight} outside [0, max_weight={config.max_weight}]")
    return arr, check_counts(counts, config=config)


def masked_contribution(
    update: np.ndarray,
    *,
    weight: float,
    counts: Sequence[int],
    self_key: bytes,
    pair_keys: Sequence[tuple[bytes, bool]],
    rounding_key: bytes,
    config: SecAggConfig,
    session: SecAggSession,
) -> bytes:
    """A device's masked input, built CHUNK_WORDS at a time; returns the wire bytes.

    Coordinates are ``clip(weight * update)`` stochastically rounded with
    uniforms from ChaCha20(``rounding_key``) (fresh per input, device-local);
    the weight word is rounded to nearest (public metadata, not DP-protected);
    then the self mask and every pairwise mask ((key, adds) in ``pair_keys``)
    are added chunk by chunk (mod 2^b), and each chunk is packed into its place
    in the output (b bits per word), so masking holds the packed output plus
    O(CHUNK_WORDS) words whatever the number of peers, never one full stream per peer.
    """
    arr, checked = _checked_update(
        update, weight=weight, counts=counts, config=config, session=session
    )
    bits, d, total = config.modulus_bits, session.vector_length, session.total_words(config)
    per_block = BLOCK_BYTES // keystream_word_bytes(bits)
    reduce = word_mask(bits)
    extras = np.empty(config.extra_words, dtype=config.dtype)
    extras[0] = encode_fixed_point(
        np.array([float(weight)]),
        scale=config.effective_weight_scale,
        clip=config.max_weight,
        modulus_bits=bits,
    )[0]
    extras[1:] = checked
    out = bytearray(config.packed_bytes(total))
    for start in range(0, total, CHUNK_WORDS):
        stop = min(start + CHUNK_WORDS, total)
        chunk = np.empty(stop - start, dtype=config.dtype)
        coords = max(0, min(stop, d) - start)
        if coords:
            uniforms = chacha20_stream(
                rounding_key, ROUNDING_NONCE, coords, modulus_bits=32, counter=start // 16
            )
            chunk[:coords] = stochastic_encode(
                arr[start : start + coords] * float(weight),
                uniforms=uniforms,
                scale=config.scale,
                clip=config.clip,
                modulus_bits=bits,
            )
        if stop > d:
            chunk[coords:] = extras[max(0, start - d) : stop - d]
        counter = start // per_block
        chunk += chacha20_stream(
            self_key, MASK_NONCE, stop - start, modulus_bits=bits, counter=counter
        )
        for key, adds in pair_keys:
            stream = chacha20_stream(
                key, MASK_NONCE, stop - start, modulus_bits=bits, counter=counter
            )
            if adds:
                chunk += stream
            else:
                chunk -= stream
        chunk &= reduce
        out[start * bits // 8 : config.packed_bytes(stop)] = words_to_bytes(
            chunk, modulus_bits=bits
        )
    return bytes(out)


def decode_sum(
    words: np.ndarray, *, config: SecAggConfig, session: SecAggSession
) -> tuple[np.ndarray, float, tuple[int, ...]]:
    """(sum of w_i * Delta_i, sum of w_i, sum of each count word) from the unmasked sum."""
    bits = config.modulus_bits
    d = session.vector_length
    weighted = decode_fixed_point(words[:d], scale=config.scale, modulus_bits=bits)
    weight = float(
        decode_fixed_point(
            words[d : d + 1], scale=config.effective_weight_scale, modulus_bits=bits
        )[0]
    )
    counts = tuple(int(c) for c in to_signed(words[d + 1 :], modulus_bits=bits))
    return weighted, weight, counts


def check_sum_range(
    words: np.ndarray, *, config: SecAggConfig, session: SecAggSession, n_summands: int
) -> None:
    """Refuse a decoded sum that no ``n_summands`` well-formed inputs can produce.

    An honest input has every coordinate in [-value_bound, value_bound] (a sum
    of them within ``config.coordinate_sum_bound``), its
    weight word in [0, weight_bound] and every count word in [0, max_count];
    a device that masks any other word (e.g. a huge negative weight) is not
    stopped by the masking, so the server checks the sum. Within the range a
    device can still bias the sum (no per-device range proofs): documented.
    Raises RangeViolation, naming which part is out of range, never values.
    """
    d = session.vector_length
    if len(words) != session.total_words(config):
        raise ProtocolViolation("decoded sum has the wrong number of words")
    signed = to_signed(words, modulus_bits=config.modulus_bits)
    coordinates = config.coordinate_sum_bound(n_summands)
    checks = (
        ("model coordinates", signed[:d], -coordinates),
        ("weight sum", signed[d : d + 1], 0),
        ("count word sum", signed[d + 1 :], 0),
    )
    highs = (
        coordinates,
        n_summands * config.weight_bound,
        n_summands * config.max_count,
    )
    for (what, part, low), high in zip(checks, highs, strict=True):
        bad = int(np.count_nonzero((part < low) | (part > high)))
        if bad:
            raise RangeViolation(
                f"decoded {what}: {bad} value(s) outside [{low}, {high}] (encoded), the range "
                f"{n_summands} clipped inputs can reach; a device masked a malformed input; "
                "nothing is released"
            )


def mask_stream(key: bytes, *, config: SecAggConfig, session: SecAggSession) -> np.ndarray:
    return chacha20_stream(
        key, MASK_NONCE, session.total_words(config), modulus_bits=config.modulus_bits
    )


def adds_pairwise_mask(me: str, peer: str) -> bool:
    """True if ``me`` adds (rather than subtracts) the mask it shares with ``peer``."""
    return canonical_order((me, peer))[0] == me


def check_header(msg: object, session: SecAggSession, what: str) -> None:
    if getattr(msg, "session_id", None) != session.session_id:
        raise ProtocolViolation(f"{what} belongs to another session")
    if getattr(msg, "round_index", None) != session.round_index:
        raise ProtocolViolation(f"{what} belongs to another round")


def check_member(device_id: object, session: SecAggSession, what: str) -> str:
    if not isinstance(device_id, str) or device_id not in session.cohort:
        raise ProtocolViolation(f"{what}: {device_id!r} is not in the cohort")
    return device_id


def check_advertisement(
    adv: KeyAdvertisement,
    *,
    session: SecAggSession,
    context: bytes,
    identity_keys: Mapping[str, Ed25519PublicKey] | None,
) -> None:
    """Header, membership, key sizes and (if identities are configured) the signature."""
    if not isinstance(adv, KeyAdvertisement):
        raise ProtocolViolation("expected a KeyAdvertisement")
    check_header(adv, session, "advertisement")
    device = check_member(adv.device_id, session, "advertisement")
    for key in (adv.enc_public_key, adv.mask_public_key):
        if not isinstance(key, bytes) or len(key) != SECRET_BYTES:
            raise ProtocolViolation(f"advertisement of {device!r}: public keys must be 32 bytes")
    if adv.enc_public_key == adv.mask_public_key:
        raise ProtocolViolation(f"advertisement of {device!r} reuses one key for both roles")
    if identity_keys is not None:
        identity = identity_keys.get(device)
        if identity is None:
            raise ProtocolViolation(f"no identity key known for {device!r}")
        payload = advertisement_payload(context, device, adv.enc_public_key, adv.mask_public_key)
        verify(identity, adv.signature, payload, device_id=device)


def check_roster_keys_unique(advertisements: Collection[KeyAdvertisement]) -> None:
    keys = [a.enc_public_key for a in advertisements] + [a.mask_public_key for a in advertisements]
    if len(set(keys)) != len(keys):
        raise ProtocolViolation("two advertisements share a public key")
    devices = [a.device_id for a in advertisements]
    if len(set(devices)) != len(devices):
        raise ProtocolViolation("a device advertised twice")


def _id_tuple(value: object, what: str) -> tuple[str, ...]:
    if not isinstance(value, tuple | list) or not all(isinstance(v, str) for v in value):
        raise ProtocolViolation(f"{what} must be a sequence of device ids")
    if len(set(value)) != len(value):
        raise ProtocolViolation(f"{what} lists a device twice")
    return canonical_order(value)


def check_unmask_request(
    request: UnmaskRequest, *, session: SecAggSession, shared: Collection[str], threshold: int
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Validate an unmask request against U2 (``shared``); returns (survivors, dropped).

    Refuses (ProtocolViolation) a request naming any device both as survivor
    (asking for its self-mask seed) and as dropped (asking for its mask key):
    both together would unmask that device's individual input.
    """
    if not isinstance(request, UnmaskRequest):
        raise ProtocolViolation("expected an UnmaskRequest")
    check_header(request, session, "unmask request")
    survivors = _id_tuple(request.survivors, "survivors")
    dropped = _id_tuple(request.dropped, "dropped")
    both = set(survivors) & set(dropped)
    if both:
        raise ProtocolViolation(
            f"unmask request asks for both the self-mask seed and the mask key of {sorted(both)}"
        )
    if set(survivors) | set(dropped) != set(shared):
        raise ProtocolViolation("unmask request does not partition the devices that shared keys")
    if len(survivors) < threshold:
        raise TooFewSurvivors(
            f"{len(survivors)} survivors < threshold {threshold}: refusing to unmask"
        )
    return survivors, dropped
