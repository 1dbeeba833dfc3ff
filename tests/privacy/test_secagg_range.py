"""Range checks on every decoded sum, and the mandatory index-set digest.

A hostile device controls its own masked words: adding a constant to them
shifts the unmasked sum by that constant, whatever clip the honest encoder
applies (measured on the old block: one device drove the weight sum to
-32765.8). The server refuses a decoded aggregate that the survivors' clipped
inputs cannot produce, and releases nothing.
"""

from __future__ import annotations

import numpy as np
import pytest

from fedward.privacy.secagg import (
    ClientInput,
    LocalRunner,
    MaskedInput,
    RangeViolation,
    SecAggConfig,
    SecAggSession,
    ServerStage,
    digest_index_set,
    run_local_round,
)
from fedward.privacy.secagg.quantize import mod_add, words_from_bytes, words_to_bytes

D = 16


def cohort():
    config = SecAggConfig(threshold=4, scale=2.0**12, clip=1.0, max_weight=1.0, count_words=2)
    session = SecAggSession(
        session_id=b"range-check-session",
        round_index=3,
        cohort=tuple(f"d{i}" for i in range(5)),
        vector_length=D,
        index_set_digest=digest_index_set(range(D), model_size=D),
    )
    rng = np.random.default_rng(2)  # test data only
    inputs = {
        d: ClientInput(update=rng.uniform(-1, 1, D), weight=0.8, counts=(1, 0))
        for d in session.cohort
    }
    return config, session, inputs


def tampered(msg: MaskedInput, *, config, session, word: int, delta: int) -> MaskedInput:
    """What a hostile device sends: its masked words plus ``delta`` at ``word`` (mod 2^k)."""
    bits = config.modulus_bits
    words = words_from_bytes(msg.data, modulus_bits=bits, n_words=session.total_words(config))
    shift = np.zeros_like(words)
    shift[word] = np.uint64(delta % (1 << bits)).astype(words.dtype)
    data = words_to_bytes(mod_add(words, shift, modulus_bits=bits), modulus_bits=bits)
    return MaskedInput(msg.session_id, msg.round_index, msg.device_id, data)


@pytest.mark.parametrize(
    ("what", "word", "delta"),
    [
        ("weight sum", D, -int(32765.8 * 2.0**12)),  # the measured attack
        ("model coordinates", 3, 10 * 2**12 * 5),  # one coordinate far beyond 5 clipped inputs
        ("model coordinates", 0, -(2**30)),
        ("count word sum", D + 1, -(5 + 1)),  # the honest 5 driven to -1
        ("count word sum", D + 2, 5 * 1 + 1),  # the honest 0 driven to 6 > 5 * max_count
    ],
)
def test_a_malformed_masked_input_is_refused_after_unmasking(what: str, word: int, delta) -> None:
    # Prepare: every device masks honestly, but d2 shifts its words before sending
    config, session, inputs = cohort()
    runner = LocalRunner(config=config, session=session)
    deliveries = runner.share_keys(session.cohort, runner.advertise(session.cohort))
    for dev in session.cohort:
        x = inputs[dev]
        msg = runner.clients[dev].mask_input(
            deliveries[dev], update=x.update, weight=x.weight, counts=x.counts
        )
        if dev == "d2":
            msg = tampered(msg, config=config, session=session, word=word, delta=delta)
        runner.server.receive_masked_input(msg)
    request = runner.server.close_masked_inputs()
    for dev in session.cohort:
        runner.server.receive_unmask_response(runner.clients[dev].unmask(request))

    # Execute / Assert: refused, naming the part; no result exists
    with pytest.raises(RangeViolation, match=f"decoded {what}"):
        runner.server.finalize()
    assert runner.server.stage is ServerStage.COLLECTING_UNMASK_RESPONSES


def test_inputs_at_the_clip_bound_pass_the_range_check() -> None:
    # Prepare: every device at the extremes it may legitimately reach
    config, session, _ = cohort()
    inputs = {
        d: ClientInput(update=np.full(D, 5.0), weight=1.0, counts=(1, 1)) for d in session.cohort
    }

    # Execute
    out = run_local_round(config=config, session=session, inputs=inputs)

    # Assert: clipped to +clip per device, the sums at their maximum, and accepted
    assert np.allclose(out.result.weighted_sum, 5 * config.clip)
    assert out.result.weight_sum == 5.0 and out.result.count_sums == (5, 5)


def test_a_saved_result_out_of_range_does_not_load() -> None:
    # Prepare: a finished round whose saved result was edited
    config, session, inputs = cohort()
    out = run_local_round(config=config, session=session, inputs=inputs)
    saved = out.server.state_dict()
    words = words_from_bytes(
        saved["payload"]["result"], modulus_bits=32, n_words=session.total_words(config)
    )
    words[D] = np.uint32((1 << 32) - 5)  # a negative weight sum
    saved["payload"]["result"] = words_to_bytes(words, modulus_bits=32)

    # Execute / Assert
    from fedward.privacy.secagg import SecAggServer, StateError

    with pytest.raises(StateError, match="weight sum"):
        SecAggServer(config=config, session=session).load_state_dict(saved)


def test_the_index_set_digest_is_mandatory() -> None:
    # Prepare / Execute / Assert
    with pytest.raises(TypeError, match="index_set_digest"):
        SecAggSession(  # type: ignore[call-arg]
            session_id=b"range-check-session",
            round_index=0,
            cohort=("a", "b", "c"),
            vector_length=4,
        )
    assert digest_index_set([3, 1, 2], model_size=4) == digest_index_set([1, 2, 3], model_size=4)
    assert digest_index_set([1, 2, 3], model_size=4) != digest_index_set([1, 2, 3], model_size=5)
    with pytest.raises(ValueError, match="repeats"):
        digest_index_set([1, 1], model_size=4)
    with pytest.raises(ValueError, match="lie in"):
        digest_index_set([4], model_size=4)
