"""A device process for the kill -9 tests: restores its participant from disk and acts.

    python -m tests.edge.secagg_child <store dir> <device> <session hex> <work dir> <mode>

mode ``mask``: take the delivery and the trained update from the work dir, mask,
then print DURABLE and hang where the agent would publish (the test kills it).
mode ``mask-crash-before-state``: hang (after printing JOURNALLED) inside the state
write of MASKED, i.e. after the journal write and before the state is on disk.
mode ``resend``: print the hex of what it would publish now (its last released
message) and of its answer to the same delivery again.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from fedward.edge.secagg import SecAggParticipant
from fedward.edge.secagg_store import SecAggStore
from fedward.privacy.secagg import ShareDelivery
from fedward.privacy.secagg.wire import decode_message, encode_message
from tests.edge.secagg_helpers import SHAPES


def _hang(tag: str) -> None:
    print(tag, flush=True)
    while True:
        time.sleep(60)


def main(argv: list[str]) -> int:
    root, device, sid_hex, work, mode = argv
    store = SecAggStore(Path(root), device_id=device)
    session_id = bytes.fromhex(sid_hex)
    delivery = decode_message((Path(work) / "delivery.json").read_bytes(), ShareDelivery)
    if mode == "mask-crash-before-state":
        real = store.save_state

        def hang_before_masked_state(sid, state, *, stage):
            if stage == "MASKED":
                _hang("JOURNALLED")
            real(sid, state, stage=stage)

        store.save_state = hang_before_masked_state  # type: ignore[method-assign]
    participant = SecAggParticipant.restore(store, session_id, model_shapes=SHAPES)
    if mode in ("mask", "mask-crash-before-state"):
        with np.load(Path(work) / "delta.npz") as f:
            delta = {n: f[n] for n in f.files}
        participant.on_delivery(delivery)
        masked = participant.mask(delta, energy=0.1)
        assert masked is not None
        _hang("DURABLE")  # where the agent would hand the bytes to the transport
    if mode == "resend":
        print(encode_message(participant.last_released()).hex(), flush=True)
        print(encode_message(participant.on_delivery(delivery)).hex(), flush=True)
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
