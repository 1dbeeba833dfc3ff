"""Quantisation fit for DP: stochastic rounding from ChaCha20, masks streamed in chunks.

Round-to-nearest has the same bias on every device, so it adds up over a
cohort (and DP noise calibrated on the sum assumes unbiased rounding); the
device now rounds up with probability the fractional part, with uniforms from
a fresh ChaCha20 keystream. Masking used to hold full-length streams and
float temporaries (4.7x the update's bytes at d = 100k, n = 10); it now works
CHUNK_WORDS at a time, so its peak is the output plus a few chunks, whatever
the number of peers (a structural bound, measured with tracemalloc).
"""

from __future__ import annotations

import os
import tracemalloc

import numpy as np
import pytest

from fedward.privacy.secagg import (
    ClientInput,
    LocalRunner,
    SecAggConfig,
    SecAggSession,
    chacha20_stream,
    digest_index_set,
    run_local_round,
)
from fedward.privacy.secagg.masking import CHUNK_WORDS, ROUNDING_NONCE
from fedward.privacy.secagg.quantize import (
    decode_fixed_point,
    encode_fixed_point,
    stochastic_encode,
)

SCALE = 2.0**10


def uniforms(n: int) -> np.ndarray:
    return chacha20_stream(os.urandom(32), ROUNDING_NONCE, n, modulus_bits=32)


def test_stochastic_rounding_picks_floor_or_ceil_and_is_unbiased() -> None:
    # Prepare: values between grid points, rounded under 400 independent keys
    rng = np.random.default_rng(4)  # test data only
    x = rng.uniform(-0.9, 0.9, 2000)
    draws = 400

    # Execute
    decoded = np.stack(
        [
            decode_fixed_point(
                stochastic_encode(
                    x, uniforms=uniforms(x.size), scale=SCALE, clip=1.0, modulus_bits=32
                ),
                scale=SCALE,
                modulus_bits=32,
            )
            for _ in range(draws)
        ]
    )

    # Assert: always a neighbouring grid point; the mean error ~ 0 (6 sigma of the mean)
    steps = decoded * SCALE
    assert np.all((steps == np.floor(x * SCALE)) | (steps == np.ceil(x * SCALE)))
    err = decoded - x
    sigma = err.std() / np.sqrt(err.size)
    assert abs(err.mean()) < 6 * sigma
    assert np.max(np.abs(err)) < 1.0 / SCALE


def test_round_to_nearest_bias_adds_up_over_a_cohort_and_stochastic_rounding_does_not() -> None:
    # Prepare: 200 devices, each with a coordinate 0.3 steps above a grid point
    value = np.full(1, 0.3 / SCALE)

    # Execute
    nearest = sum(
        decode_fixed_point(
            encode_fixed_point(value, scale=SCALE, clip=1.0, modulus_bits=32),
            scale=SCALE,
            modulus_bits=32,
        )[0]
        for _ in range(200)
    )
    stochastic = sum(
        decode_fixed_point(
            stochastic_encode(value, uniforms=uniforms(1), scale=SCALE, clip=1.0, modulus_bits=32),
            scale=SCALE,
            modulus_bits=32,
        )[0]
        for _ in range(200)
    )

    # Assert: the true sum is 60 steps; nearest loses all of it, stochastic is within 5 sigma
    truth = 200 * 0.3 / SCALE
    assert nearest == 0.0
    assert abs(stochastic - truth) < 5 * np.sqrt(200 * 0.3 * 0.7) / SCALE


def test_stochastic_rounding_stays_within_the_encoded_clip_bound() -> None:
    # Prepare: clip * scale not an integer (rounding up at the edge would exceed the bound)
    x = np.array([5.0, -5.0, 0.99999, -0.99999])
    u = np.array([0, 0, 0, 0], dtype=np.uint32)  # u = 0: always round up where possible

    # Execute
    words = stochastic_encode(x, uniforms=u, scale=10.3, clip=1.0, modulus_bits=32)

    # Assert: within [-round(10.3), round(10.3)] = [-10, 10]
    assert decode_fixed_point(words, scale=1.0, modulus_bits=32).tolist() == [10, -10, 10, -10]


@pytest.mark.parametrize("bits", [32, 64])
def test_chunked_masks_cancel_exactly_across_several_chunks(bits: int) -> None:
    # Prepare: a vector spanning three chunks and a bit
    d = 3 * CHUNK_WORDS + 5
    config = SecAggConfig(threshold=4, scale=SCALE, clip=1.0, modulus_bits=bits)
    session = cohort_session(5, d)
    rng = np.random.default_rng(8)  # test data only
    inputs = {
        dev: ClientInput(update=rng.uniform(-1, 1, d), weight=0.5, counts=(1,))
        for dev in session.cohort
    }

    # Execute
    out = run_local_round(config=config, session=session, inputs={**inputs})

    # Assert: the streamed masks equal the server's whole streams (else the sum is noise)
    truth = sum(0.5 * inputs[dev].update for dev in session.cohort)
    assert np.max(np.abs(out.result.weighted_sum - truth)) <= 5 / SCALE
    assert out.result.count_sums == (5,)


def cohort_session(n: int, d: int) -> SecAggSession:
    return SecAggSession(
        session_id=b"streaming-session-1",
        round_index=0,
        cohort=tuple(f"d{i:02d}" for i in range(n)),
        vector_length=d,
        index_set_digest=digest_index_set(range(d), model_size=d),
    )


def masking_peak(n: int, d: int) -> tuple[int, int]:
    """(peak bytes allocated while one device masks, the update's bytes)."""
    t = (n + 1) // 2 + 1
    config = SecAggConfig(threshold=t, scale=SCALE, clip=1.0)
    session = cohort_session(n, d)
    runner = LocalRunner(config=config, session=session)
    deliveries = runner.share_keys(session.cohort, runner.advertise(session.cohort))
    update = np.random.default_rng(0).uniform(-1, 1, d)  # test data only
    client = runner.clients[session.cohort[0]]
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        client.mask_input(deliveries[session.cohort[0]], update=update, weight=0.5, counts=(1,))
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    return peak, update.nbytes


def test_masking_memory_stays_near_the_update_size_whatever_the_cohort() -> None:
    # Prepare / Execute: d = 100k float64 (800 kB), cohorts of 10 and 30
    peak_10, update_bytes = masking_peak(10, 100_000)
    peak_30, _ = masking_peak(30, 100_000)

    # Assert: below 3x the update's bytes (the output words and their wire bytes are 1x),
    # and not growing with the number of peers (a full stream per peer would add 0.5x each)
    assert peak_10 < 3 * update_bytes
    assert peak_30 < 3 * update_bytes
    assert peak_30 < peak_10 + 0.25 * update_bytes
