"""The split-request attack with colluders, and the threshold that stops it.

A server helped by c Sybil devices asks one group of honest survivors for a
victim's self-mask seed shares (request A: victim a survivor) and another
group for its mask-key shares (request B: victim dropped). Each honest device
answers only one request, but the colluders answer both, so the attack needs
2t - c <= n devices: it works whenever 2t <= n + c (reproduced here at n = 5,
t = 3, c = 1, which the old "t > n/2" rule accepted).
"""

from __future__ import annotations

import numpy as np
import pytest

from fedward.privacy.secagg import (
    ClientInput,
    ConfigError,
    LocalRunner,
    SecAggConfig,
    SecAggSession,
    TooFewSurvivors,
    UnmaskRequest,
    crypto,
    digest_index_set,
    masking,
)
from fedward.privacy.secagg.config import threshold_floor
from fedward.privacy.secagg.quantize import mod_add, mod_sub, words_from_bytes
from fedward.privacy.secagg.shamir import Share, reconstruct_bytes

VICTIM, COLLUDER = "d4", "d3"


def masked_cohort(config: SecAggConfig):
    session = SecAggSession(
        session_id=b"collusion-session-1",
        round_index=0,
        cohort=tuple(f"d{i}" for i in range(5)),
        vector_length=32,
        index_set_digest=digest_index_set(range(32), model_size=32),
    )
    rng = np.random.default_rng(9)  # test data only
    inputs = {
        d: ClientInput(update=rng.uniform(-0.9, 0.9, 32), weight=1.0, counts=(1,))
        for d in session.cohort
    }
    runner = LocalRunner(config=config, session=session)
    deliveries = runner.share_keys(session.cohort, runner.advertise(session.cohort))
    runner.mask(session.cohort, deliveries, inputs)
    return session, inputs, runner


def split_attack(config: SecAggConfig, session, runner) -> np.ndarray:
    """The server's side of the attack; returns the victim's recovered plain words."""
    request_a = UnmaskRequest(session.session_id, 0, survivors=session.cohort, dropped=())
    others = tuple(d for d in session.cohort if d != VICTIM)
    request_b = UnmaskRequest(session.session_id, 0, survivors=others, dropped=(VICTIM,))
    # the colluder hands over every share it holds (it answers both questions)
    held = runner.clients[COLLUDER].state_dict()["payload"]["held"]
    seed_shares = [held[VICTIM][1]]
    key_shares = [held[VICTIM][0]]
    for dev in (VICTIM, "d0"):  # honest group 1 answers A only
        resp = runner.clients[dev].unmask(request_a)
        seed_shares += [s.share for s in resp.seed_shares if s.owner == VICTIM]
    for dev in ("d1", "d2"):  # honest group 2 answers B only
        resp = runner.clients[dev].unmask(request_b)
        key_shares += [s.share for s in resp.key_shares if s.owner == VICTIM]
    t = config.threshold

    def recover(raw: list[bytes]) -> bytes:
        shares = [Share.from_bytes(r, secret_len=32) for r in raw]
        return reconstruct_bytes(shares, threshold=t, length=32)

    seed, mask_sk = recover(seed_shares), crypto.load_private(recover(key_shares))
    payload = runner.server.state_dict()["payload"]
    roster = {a["device_id"]: a["mask_public_key"] for a in payload["advertisements"]}
    context = crypto.session_context(session, config)
    words = words_from_bytes(
        payload["masked"][VICTIM],
        modulus_bits=config.modulus_bits,
        n_words=session.total_words(config),
    )
    own = crypto.self_mask_key(seed, context=context, device_id=VICTIM)
    words = mod_sub(
        words,
        masking.mask_stream(own, config=config, session=session),
        modulus_bits=config.modulus_bits,
    )
    for peer in session.cohort:
        if peer == VICTIM:
            continue
        key = crypto.pairwise_mask_key(mask_sk, roster[peer], context=context, me=VICTIM, peer=peer)
        stream = masking.mask_stream(key, config=config, session=session)
        add = masking.adds_pairwise_mask(VICTIM, peer)
        words = (
            mod_sub(words, stream, modulus_bits=config.modulus_bits)
            if add
            else mod_add(words, stream, modulus_bits=config.modulus_bits)
        )
    return words


def test_the_split_attack_unmasks_a_victim_when_2t_le_n_plus_c() -> None:
    # Prepare: n = 5, t = 3, what the old rule (t > n/2) allowed; one device is a Sybil,
    # but the config claims none (c_max = 0), so it accepts this (n, t)
    config = SecAggConfig(threshold=3, scale=2.0**14, clip=1.0, max_colluders=0, min_cohort=2)
    session, inputs, runner = masked_cohort(config)

    # Execute
    words = split_attack(config, session, runner)

    # Assert: the victim's individual update, to within the fixed-point step
    weighted, weight, counts = masking.decode_sum(words, config=config, session=session)
    assert np.max(np.abs(weighted - inputs[VICTIM].update)) <= 1.0 / config.scale  # one step
    assert (weight, counts) == (1.0, (1,))


def test_the_config_refuses_every_n_t_c_with_2t_le_n_plus_c() -> None:
    # Prepare / Execute / Assert: for every small (n, t, c), refused exactly when attackable
    for c in range(4):
        for n in range(c + 2, 16):
            for t in range(c + 2, n + 1):
                config = SecAggConfig(
                    threshold=t, scale=2.0**10, clip=1.0, max_colluders=c, min_cohort=c + 2
                )
                attackable = 2 * t <= n + c
                if attackable:
                    with pytest.raises(ConfigError, match="split unmask request"):
                        config.check_cohort(n)
                else:
                    config.check_cohort(n)
                assert (t >= threshold_floor(n, max_colluders=c)) is not attackable


def test_the_default_assumes_one_colluder_and_refuses_the_reproduced_case() -> None:
    # Prepare
    config = SecAggConfig(threshold=3, scale=2.0**14, clip=1.0)

    # Execute / Assert: the n = 5, t = 3 is refused; t = 4 is the floor
    assert config.max_colluders == 1
    with pytest.raises(ConfigError, match="= 4 for n = 5 and max_colluders c = 1"):
        masked_cohort(config)
    assert threshold_floor(5, max_colluders=1) == 4


def test_with_the_safe_threshold_the_same_split_falls_short() -> None:
    # Prepare: t = 4 for n = 5, c = 1
    config = SecAggConfig(threshold=4, scale=2.0**14, clip=1.0, max_colluders=1)
    session, _, runner = masked_cohort(config)

    # Execute / Assert: each group plus the colluder holds 3 < t shares; interpolating
    # from them is refused (and any 4 honest answers would have to include a second request)
    with pytest.raises(TooFewSurvivors):
        split_attack(config, session, runner)


def test_devices_enforce_floors_on_n_and_t() -> None:
    # Prepare / Execute / Assert
    with pytest.raises(ConfigError, match="max_colluders \\+ 2"):
        SecAggConfig(threshold=2, scale=2.0**10, clip=1.0)  # t = 2 with c = 1: one honest input
    with pytest.raises(ConfigError, match="min_cohort"):
        SecAggConfig(threshold=3, scale=2.0**10, clip=1.0, max_colluders=2, min_cohort=3)
    config = SecAggConfig(threshold=3, scale=2.0**10, clip=1.0, max_colluders=0, min_cohort=4)
    with pytest.raises(ConfigError, match="min_cohort = 4"):
        config.check_cohort(3)
