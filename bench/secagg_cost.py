"""What secure aggregation costs a device and the server, measured on this machine.

Real ``fedward.privacy.secagg`` clients and server, one instance per cohort size:

* device masking time: one device's ``SecAggClient.mask_input`` (open the peers'
  shares, stochastic rounding, self mask and one ChaCha20 pairwise mask per
  peer, streamed ``CHUNK_WORDS`` at a time) for an update of ``--params``
  coordinates (100,000 by default) in cohorts of 10, 50 and 100; median over
  ``--repeats`` fresh instances (a client masks once per session, so every
  repeat is a new session);
* device masking memory: the ``tracemalloc`` peak of that call, as a ratio to
  the update's own bytes (fp32, 4 bytes per coordinate);
* server unmasking for a cohort of 100 with 10% dropouts (they shared keys, then
  sent no masked input: the server rebuilds each one's pairwise mask with every
  survivor, the expensive case): close the masked inputs, take the unmask
  responses, finalize; median over repeats;
* bytes per device per phase (the wire encodings of ``fedward.privacy.secagg.wire``;
  the masked input as its packed words, ``--modulus-bits`` b bits each: by default
  the least b whose cohort's sum cannot wrap, as ``SecAggPolicy`` picks it), and
  the upload of all four uplink phases as a ratio to the fp32 update (no dropouts).

Python-level time on x86 with ``cryptography``'s ChaCha20: a wearable's CPU is
slower (the simulator scales the measured PRG rate by the class's compute, see
``fedward.simulation.secagg``). There is no bench registry in ``fedward bench``:
run this module directly.

Usage::

    python -m fedward.bench.secagg_cost [--params 100000] [--repeats 5]
        [--cohorts 10 50 100] [--modulus-bits B] [--json runs/bench/secagg_cost.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np

from fedward.privacy.secagg import (
    SecAggClient,
    SecAggConfig,
    SecAggServer,
    SecAggSession,
    smallest_modulus_bits,
    threshold_floor,
)
from fedward.privacy.secagg.wire import encode_message

DROPOUT_FRACTION = 0.1
SERVER_COHORT = 100


def _config(n: int, *, dropped: int = 0, modulus_bits: int | None = None) -> SecAggConfig:
    """The smallest safe threshold for n with one colluder (fits n - dropped survivors),
    in Z_{2^b}: ``modulus_bits``, or None for the least b that holds n devices' sum."""
    threshold = threshold_floor(n, max_colluders=1)
    if threshold > n - dropped:
        raise ValueError(f"{dropped} dropouts leave fewer than t = {threshold} of {n}")
    config = SecAggConfig(threshold=threshold, scale=float(1 << 16), clip=4.0, modulus_bits=64)
    bits = smallest_modulus_bits(config, cohort_size=n) if modulus_bits is None else modulus_bits
    return dataclasses.replace(config, modulus_bits=bits)


def _session(n: int, d: int) -> SecAggSession:
    return SecAggSession(
        session_id=os.urandom(32),
        round_index=0,
        cohort=tuple(f"dev{i:04d}" for i in range(n)),
        vector_length=d,
        index_set_digest=os.urandom(32),
    )


def _mask(client: SecAggClient, delivery: Any, update: np.ndarray) -> Any:
    """mask_input with a constant 1 in every count word (no energy histogram)."""
    words = client.config.count_words
    return client.mask_input(delivery, update=update, weight=1.0, counts=(1,) * words)


class _Instance:
    """One SecAgg instance taken up to the point where devices mask."""

    def __init__(self, n: int, d: int, *, bits: int | None, dropped: int = 0) -> None:
        self.config = _config(n, dropped=dropped, modulus_bits=bits)
        self.session = _session(n, d)
        self.server = SecAggServer(config=self.config, session=self.session)
        self.clients = {
            dev: SecAggClient(config=self.config, session=self.session, device_id=dev)
            for dev in self.session.cohort
        }
        self.bytes: dict[str, int] = {}
        adverts = [c.advertise() for c in self.clients.values()]
        for a in adverts:
            self.server.receive_advertisement(a)
        roster = self.server.close_advertisements()
        bundles = [c.share_keys(roster) for c in self.clients.values()]
        for b in bundles:
            self.server.receive_share_bundle(b)
        self.deliveries = self.server.close_shares()
        first = self.session.cohort[0]
        self.bytes["advertise (up)"] = len(encode_message(adverts[0]))
        self.bytes["roster (down)"] = len(encode_message(roster))
        self.bytes["shares (up)"] = len(encode_message(bundles[0]))
        self.bytes["delivery (down)"] = len(encode_message(self.deliveries[first]))


def device_masking(
    n: int, d: int, *, bits: int | None, repeats: int, rng: np.random.Generator
) -> dict[str, Any]:
    times, peaks = [], []
    row: dict[str, Any] = {"cohort": n, "params": d}
    for _ in range(repeats):
        inst = _Instance(n, d, bits=bits)
        row["modulus_bits"] = inst.config.modulus_bits
        dev = inst.session.cohort[0]
        update = rng.normal(0, 0.01, size=d).astype(np.float32)
        # memory on one fresh client, time on another (tracemalloc slows the call)
        tracemalloc.start()
        tracemalloc.reset_peak()
        base, _ = tracemalloc.get_traced_memory()
        masked = _mask(inst.clients[dev], inst.deliveries[dev], update)
        peaks.append(tracemalloc.get_traced_memory()[1] - base)
        tracemalloc.stop()
        other = inst.session.cohort[1]
        started = time.perf_counter()
        inputs = {dev: masked, other: _mask(inst.clients[other], inst.deliveries[other], update)}
        times.append(time.perf_counter() - started)
        for peer in inst.session.cohort[2:]:  # the rest of the cohort, for the unmask bytes
            inputs[peer] = _mask(inst.clients[peer], inst.deliveries[peer], update)
        for m in inputs.values():
            inst.server.receive_masked_input(m)
        request = inst.server.close_masked_inputs()
        response = inst.clients[dev].unmask(request)
        row["bytes_per_phase"] = {
            **inst.bytes,
            "masked input (up)": len(masked.data),
            "unmask request (down)": len(encode_message(request)),
            "unmask response (up)": len(encode_message(response)),
        }
    update_bytes = 4 * d
    row.update(
        masking_s_median=statistics.median(times),
        masking_s_all=times,
        masking_peak_bytes_median=int(statistics.median(peaks)),
        masking_peak_vs_update=statistics.median(peaks) / update_bytes,
        update_bytes_fp32=update_bytes,
        upload_vs_fp32=sum(v for k, v in row["bytes_per_phase"].items() if "(up)" in k)
        / update_bytes,
    )
    return row


def server_unmasking(
    n: int, d: int, *, bits: int | None, repeats: int, rng: np.random.Generator
) -> dict[str, Any]:
    dropped = round(DROPOUT_FRACTION * n)
    times = []
    for _ in range(repeats):
        inst = _Instance(n, d, bits=bits, dropped=dropped)
        survivors = inst.session.cohort[dropped:]
        for dev in survivors:
            update = rng.normal(0, 0.01, size=d).astype(np.float32)
            inst.server.receive_masked_input(_mask(inst.clients[dev], inst.deliveries[dev], update))
        responses = []
        started = time.perf_counter()
        request = inst.server.close_masked_inputs()
        close_s = time.perf_counter() - started
        responses = [inst.clients[dev].unmask(request) for dev in survivors]  # device side
        started = time.perf_counter()
        for resp in responses:
            inst.server.receive_unmask_response(resp)
        inst.server.finalize()
        times.append(close_s + time.perf_counter() - started)
    return {
        "cohort": n,
        "params": d,
        "modulus_bits": _config(n, dropped=dropped, modulus_bits=bits).modulus_bits,
        "dropouts": dropped,
        "unmask_s_median": statistics.median(times),
        "unmask_s_all": times,
    }


def markdown(report: dict[str, Any]) -> str:
    bits = report["modulus_bits"]
    width = "the least b per cohort" if bits == "auto" else f"{bits}-bit words"
    lines = [
        f"SecAgg cost, d = {report['params']:,} parameters, {width}, median of "
        f"{report['repeats']} (this machine, Python + cryptography's ChaCha20)",
        "",
        "| cohort | bits | device masking (ms) | masking peak / update bytes "
        "| device upload / fp32 update |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in report["device"]:
        lines.append(
            f"| {r['cohort']} | {r['modulus_bits']} | {1000 * r['masking_s_median']:.1f} "
            f"| {r['masking_peak_vs_update']:.2f}x | {r['upload_vs_fp32']:.3f}x |"
        )
    s = report["server"]
    lines += [
        "",
        f"Server unmasking, cohort {s['cohort']} with {s['dropouts']} dropouts (after sharing keys): "
        f"{s['unmask_s_median']:.3f} s (close + responses + finalize).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--params", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cohorts", type=int, nargs="+", default=[10, 50, 100])
    parser.add_argument("--server-repeats", type=int, default=3)
    parser.add_argument(
        "--modulus-bits",
        type=int,
        default=None,
        help="b of Z_{2^b} (8-64); default: the least b that holds each cohort's sum",
    )
    parser.add_argument("--json", type=Path, default=Path("runs/bench/secagg_cost.json"))
    args = parser.parse_args(argv)
    # synthetic updates only: this generator draws test data, never masks or keys
    rng = np.random.default_rng(0)
    bits = args.modulus_bits
    report: dict[str, Any] = {
        "params": args.params,
        "repeats": args.repeats,
        "modulus_bits": "auto" if bits is None else bits,
        "device": [
            device_masking(n, args.params, bits=bits, repeats=args.repeats, rng=rng)
            for n in args.cohorts
        ],
        "server": server_unmasking(
            SERVER_COHORT, args.params, bits=bits, repeats=args.server_repeats, rng=rng
        ),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(markdown(report))
    print(f"wrote {args.json}")
    return report


if __name__ == "__main__":
    main()
