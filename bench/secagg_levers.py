"""What makes a secure-aggregation fill slow (issue 11: time to target within 15% of ftte).

One run: the ``ftte`` row once, then the ``ftte+secagg`` row once per lever,
each a set of scenario overrides (the same fleet, split, warm start and local
work as ``fedward bench``). For each row: virtual seconds to ``ftte``'s final
accuracy and the ratio to ``ftte``'s, the updates and merges it took to get
there, the final accuracy, and the members dropped mid-fill::

    python -m fedward.bench.secagg_levers --scenario full --seed 0 \\
        --lever default --lever grace=none,grouping=off --lever grouping=off \\
        --lever grace=0 --lever grace=0.25 --lever dropout=0.05 \\
        --lever staleness=0 --lever staleness=0.25 --json runs/secagg-levers/full-s0.json

A lever is comma-separated ``name=value`` pairs: ``grace`` (a float, or
``none``: wait for every member), ``grouping`` (``on`` / ``off``: cohorts by
measured task time, or by subset and class only), ``dropout`` (the expected
dropout the cohort is sized for), ``staleness`` (the age exponent of every
row's server step; it changes only the secagg row here: ``ftte`` runs once,
at the scenario's), ``fills`` (an int: fills open at once), ``budget`` (an int, or
``none``: the most fill members still training at once, ``SecAggPolicy.training_budget``),
``binding`` (``dispatch`` / ``arrival``: when a fill's cohort is fixed, ``CohortBinding``),
``buffer`` (an int: the secagg row's buffer, hence its cohort ``ceil(buffer / (1 - dropout))``
and, unless ``fills`` is given, its fills ``concurrency // cohort``; ``ftte`` keeps the
scenario's), ``adam_lr`` (the secagg row's server Adam learning rate), ``protocol``
(``modelled`` / ``free``: ``free`` is an ablation, ``PhaseCost.FREE``, that charges the key
exchange, masking and unmasking no time, so the row shows what the cohort rules alone cost),
``prior`` (``measured`` / ``oracle``: ``oracle`` is an ablation, ``SpeedPrior.ORACLE``, that
gives the cohorts every device's modelled task time before its first task).
``default`` is the scenario as ``fedward bench`` runs it. Every lever is
checked against the scenario (its fields and the secagg row's cohort policy)
before the first row runs, so a bad value is a usage error, not a traceback
after the ``ftte`` row's minutes.
``--retable ROWS.json --reference-from REF.json`` runs nothing: it prints a
saved run's lever rows against another saved run's ``ftte`` row of the same
scenario name and seed (secagg rows at buffer 5, say, against ``ftte`` at 10).
Virtual time is the simulator's (modelled device time), so load on this
machine changes only the wall column (the masking rate is fixed,
``secagg_prg_bytes_per_flop``; stochastic rounding draws from the CSPRNG, so
two runs can differ in the last digits of the loss, by a fraction of a second
in virtual time, and by one evaluation in a crossing).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from fedward.errors import FedwardError, SimulationError
from fedward.simulation.bench import run_benchmark
from fedward.simulation.scenario import Scenario, StrategyRun, load_scenario

_FIELDS = {
    "grace": "secagg_straggler_grace",
    "grouping": "secagg_group_by_speed",
    "dropout": "secagg_expected_dropout",
    "staleness": "staleness_exponent",
    "fills": "secagg_fills_in_flight",
    "budget": "secagg_training_budget",
    "binding": "secagg_cohort_binding",
    "buffer": "buffer_size",
    "adam_lr": "server_adam_lr",
    "protocol": "secagg_phase_cost",
    "prior": "secagg_speed_prior",
}
_INTEGERS = {"fills", "budget", "buffer"}
# levers that name one of two enum values, passed through as the value itself
_CHOICES = {
    "binding": ("dispatch", "arrival"),
    "protocol": ("modelled", "free"),
    "prior": ("measured", "oracle"),
}


class LeverError(SimulationError, ValueError):
    """A --lever this script cannot read (the message says which part and why)."""


def parse_lever(text: str) -> dict[str, Any]:
    """``"grace=0.25,grouping=off"`` -> scenario overrides (``"default"`` -> none)."""
    if text.strip() == "default":
        return {}
    overrides: dict[str, Any] = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or name not in _FIELDS:
            raise LeverError(f"lever part {part!r}: expected one of {sorted(_FIELDS)}=value")
        if name == "grouping":
            if value not in ("on", "off"):
                raise LeverError(f"grouping must be on or off, got {value!r}")
            overrides[_FIELDS[name]] = value == "on"
        elif name in _CHOICES:
            first, second = _CHOICES[name]
            if value not in (first, second):
                raise LeverError(f"{name} must be {first} or {second}, got {value!r}")
            overrides[_FIELDS[name]] = value
        elif name in ("grace", "budget") and value == "none":
            overrides[_FIELDS[name]] = None
        elif name in _INTEGERS:
            try:
                overrides[_FIELDS[name]] = int(value)
            except ValueError as exc:
                raise LeverError(f"{name} must be an integer, got {value!r}") from exc
        else:
            try:
                overrides[_FIELDS[name]] = float(value)
            except ValueError as exc:
                raise LeverError(f"{name} must be a number, got {value!r}") from exc
    return overrides


def vary(scenario: Scenario, overrides: dict[str, Any], *, lever: str) -> Scenario:
    """``scenario`` under ``overrides``, checked as the secagg row will build it (its
    scenario fields and its cohort policy), so a bad value is refused before any row runs
    rather than as a traceback after the ``ftte`` row's minutes."""
    try:
        varied = Scenario.model_validate({**scenario.model_dump(), **overrides})
        varied.secagg_policy(StrategyRun.FTTE_SECAGG, model_size=1)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'scenario'}: {e['msg']}" for e in exc.errors()
        )
        raise LeverError(f"lever {lever!r}: {problems}") from exc
    except FedwardError as exc:
        raise LeverError(f"lever {lever!r}: {exc}") from exc
    return varied


def first_at(series: list[dict[str, Any]], accuracy: float) -> dict[str, Any] | None:
    """The first evaluation at or above ``accuracy`` (None: never)."""
    return next((p for p in series if p["accuracy"] >= accuracy), None)


GAIN_FRACTIONS = (0.5, 0.8, 0.95)


def gain_times(series: list[dict[str, Any]], *, reference: dict[str, Any]) -> list[float | None]:
    """Virtual seconds to 50%, 80% and 95% of ``reference``'s gain (its warm start, the
    first evaluation, to its final accuracy): a verdict less at the mercy of one
    plateau crossing than the time to the final accuracy itself."""
    warm = reference["series"][0]["accuracy"]
    gain = reference["final_accuracy"] - warm
    out: list[float | None] = []
    for fraction in GAIN_FRACTIONS:
        hit = first_at(series, warm + fraction * gain)
        out.append(hit["t"] if hit else None)
    return out


def pace(row: dict[str, Any], *, reference: dict[str, Any]) -> tuple[float | None, float | None]:
    """(virtual seconds per merged update, merges per virtual second), each over the
    ``reference``'s: how fast a row turns device time into updates and server steps,
    whatever the accuracy does (read from the last evaluation: the run's updates and
    merges, over its virtual time)."""

    def rates(r: dict[str, Any]) -> tuple[float, float] | None:
        last, seconds = (r["series"] or [None])[-1], r.get("virtual_time_s")
        if last is None or not last["updates"] or not seconds:
            return None
        return seconds / last["updates"], last["version"] / seconds

    mine, theirs = rates(row), rates(reference)
    if mine is None or theirs is None:
        return None, None
    return mine[0] / theirs[0], (mine[1] / theirs[1] if theirs[1] else None)


def lever_row(
    varied: Scenario, overrides: dict[str, Any], *, reference: dict[str, Any], workers: int
) -> dict[str, Any]:
    """The secagg row on ``varied`` (the scenario under ``overrides``), against the
    ``reference`` (ftte) row."""
    started = time.perf_counter()
    report = run_benchmark(varied, runs=[StrategyRun.FTTE_SECAGG], workers=workers)
    row = report["strategies"][StrategyRun.FTTE_SECAGG.value]
    return compare(
        row, reference=reference, overrides=overrides, wall_s=time.perf_counter() - started
    )


def compare(
    row: dict[str, Any], *, reference: dict[str, Any], overrides: dict[str, Any], wall_s: float
) -> dict[str, Any]:
    """A secagg ``row`` (a benchmark row, or a lever entry this script saved) against the
    ``reference`` (ftte) row: pure, so saved rows can be set against another reference."""
    target = reference["final_accuracy"]
    hit, ref_hit = first_at(row["series"], target), first_at(reference["series"], target)
    secagg = row.get("secagg") or {
        "dropped_by_phase": row.get("dropped_by_phase", {}),
        **row.get("slot_times", {}),
    }
    mine, theirs = (
        gain_times(row["series"], reference=reference),
        gain_times(reference["series"], reference=reference),
    )
    per_update, merge_rate = pace(row, reference=reference)
    return {
        "gain_times_s": mine,
        "gain_vs_ftte": [
            None if a is None or not b else a / b for a, b in zip(mine, theirs, strict=True)
        ],
        "series": row["series"],
        "overrides": overrides,
        "final_accuracy": row["final_accuracy"],
        "vs_ftte_points": 100 * (row["final_accuracy"] - target),
        "time_to_ftte_final_s": hit["t"] if hit else None,
        "vs_ftte": (hit["t"] / ref_hit["t"]) if hit and ref_hit and ref_hit["t"] > 0 else None,
        "updates_to_ftte_final": hit["updates"] if hit else None,
        "merges_to_ftte_final": hit["version"] if hit else None,
        "upload_bytes_per_update": row["upload_bytes_per_update"],
        "virtual_time_s": row["virtual_time_s"],
        "seconds_per_update_vs_ftte": per_update,
        "merge_rate_vs_ftte": merge_rate,
        "dropped_by_phase": secagg.get("dropped_by_phase", {}),
        # where a merged member's slot went (FillCosts.slot_times): shares of its seconds
        # to the end of training, to its masked input's arrival, and trained but waiting
        # for the share delivery
        "slot_times": {k: secagg.get(k) for k in SLOT_KEYS},
        "wall_s": wall_s,
    }


def retable(rows_doc: dict[str, Any], reference_doc: dict[str, Any]) -> list[tuple[str, Any]]:
    """The lever rows a run saved (``rows_doc``), against the ``ftte`` row another run of
    the same scenario name and seed saved (``reference_doc``): e.g. secagg rows at a
    smaller buffer against ``ftte`` at the scenario's own. Every row is deterministic for
    its seed on one machine, so this is the table one run of both would print."""
    for key in ("scenario", "seed"):
        if rows_doc.get(key) != reference_doc.get(key):
            raise LeverError(
                f"--retable and --reference-from differ in {key}: "
                f"{rows_doc.get(key)!r} != {reference_doc.get(key)!r}"
            )
    reference = reference_doc["reference"]
    return [
        (
            entry["lever"],
            compare(
                entry,
                reference=reference,
                overrides=entry.get("overrides", {}),
                wall_s=entry.get("wall_s", 0.0),
            ),
        )
        for entry in rows_doc["levers"]
    ]


SLOT_KEYS = (
    "member_slot_s_median",
    "member_trained_s_median",
    "member_input_s_median",
    "slot_share_training",
    "slot_share_to_input",
    "slot_share_delivery_wait",
    "fill_s_median",
)


def _shares(slot: dict[str, Any]) -> str:
    training, to_input = slot.get("slot_share_training"), slot.get("slot_share_to_input")
    waiting = slot.get("slot_share_delivery_wait")
    if training is None or to_input is None or waiting is None:
        return "-"
    return f"{training:.2f} / {to_input:.2f} / {waiting:.2f}"


def table(reference: dict[str, Any], rows: list[tuple[str, dict[str, Any]]]) -> str:
    ref_hit = first_at(reference["series"], reference["final_accuracy"])
    lines = [
        "| lever | time to ftte's final acc (s) | vs ftte | to 50/80/95% of ftte's gain: vs ftte "
        "| updates / merges to it | final acc | vs ftte (pts) | dropped at masked input "
        "| member's slot: to training's end / to masked input / waiting for shares (share) "
        "| s per update / merges per s: vs ftte |",
        "|---|---:|---:|---|---|---:|---:|---:|---|---|",
        f"| ftte (reference) | {ref_hit['t'] if ref_hit else 0:,.0f} | 1.00 | "
        + " / ".join(
            "-" if t is None else f"{t:,.0f} s"
            for t in gain_times(reference["series"], reference=reference)
        )
        + f" | {ref_hit['updates'] if ref_hit else '-'} / "
        f"{ref_hit['version'] if ref_hit else '-'} | "
        f"{reference['final_accuracy']:.4f} | - | - | - | 1.00 / 1.00 |",
    ]
    for name, r in rows:
        t, ratio = r["time_to_ftte_final_s"], r["vs_ftte"]
        lines.append(
            f"| {name} | {'-' if t is None else f'{t:,.0f}'} | "
            f"{'-' if ratio is None else f'{ratio:.2f}'} | "
            + " / ".join("-" if g is None else f"{g:.2f}" for g in r["gain_vs_ftte"])
            + f" | {r['updates_to_ftte_final'] or '-'} / {r['merges_to_ftte_final'] or '-'} | "
            f"{r['final_accuracy']:.4f} | {r['vs_ftte_points']:+.2f} | "
            f"{r['dropped_by_phase'].get('masked_input', 0)} | {_shares(r.get('slot_times', {}))} | "
            + " / ".join(
                "-" if v is None else f"{v:.2f}"
                for v in (r.get("seconds_per_update_vs_ftte"), r.get("merge_rate_vs_ftte"))
            )
            + " |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", default="full")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--lever", action="append", default=[])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", type=Path, default=Path("runs/secagg-levers/levers.json"))
    parser.add_argument(
        "--retable",
        type=Path,
        default=None,
        help="run nothing: print this saved run's lever rows against --reference-from's ftte row",
    )
    parser.add_argument("--reference-from", type=Path, default=None)
    args = parser.parse_args(argv)
    if (args.retable is None) != (args.reference_from is None):
        parser.error("--retable and --reference-from go together")
    if args.retable is not None:
        try:
            docs = [json.loads(p.read_text()) for p in (args.retable, args.reference_from)]
            rows = retable(docs[0], docs[1])
        except (OSError, ValueError, KeyError) as exc:  # LeverError is a ValueError
            parser.error(f"--retable: {exc}")
        reference = docs[1]["reference"]
        print(table(reference, rows))
        _write(
            args.json,
            scenario=docs[1]["scenario"],
            seed=docs[1]["seed"],
            provenance=docs[1].get("provenance"),
            reference=reference,
            rows=rows,
            wall_s=0.0,
            retabled={
                "rows_from": str(args.retable),
                "reference_from": str(args.reference_from),
                "rows_provenance": docs[0].get("provenance"),
            },
        )
        return 0
    try:
        scenario = load_scenario(args.scenario)
    except (OSError, ValueError, FedwardError) as exc:  # a missing file, bad JSON or field
        parser.error(f"--scenario {args.scenario}: {exc}")
    if args.seed is not None:
        scenario = scenario.model_copy(update={"seed": args.seed})
    try:
        levers = []
        for text in args.lever or ["default"]:
            overrides = parse_lever(text)
            levers.append((text, overrides, vary(scenario, overrides, lever=text)))
    except LeverError as exc:
        parser.error(str(exc))
    started = time.perf_counter()
    base = run_benchmark(scenario, runs=[StrategyRun.FTTE], workers=args.workers)
    reference = base["strategies"][StrategyRun.FTTE.value]
    rows = []
    for name, overrides, varied in levers:
        rows.append((name, lever_row(varied, overrides, reference=reference, workers=args.workers)))
        print(table(reference, rows), flush=True)
    _write(
        args.json,
        scenario=scenario.name,
        seed=scenario.seed,
        provenance=base["provenance"],  # taken before the first row ran
        reference=reference,
        rows=rows,
        wall_s=time.perf_counter() - started,
    )
    return 0


def _write(
    path: Path,
    *,
    scenario: str,
    seed: int,
    provenance: Any,
    reference: dict[str, Any],
    rows: list[tuple[str, dict[str, Any]]],
    wall_s: float,
    retabled: dict[str, Any] | None = None,
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {
                "scenario": scenario,
                "seed": seed,
                "reference": reference,
                "levers": [{"lever": n, **r} for n, r in rows],
                "wall_s": wall_s,
                "provenance": provenance,
                **({"retabled": retabled} if retabled is not None else {}),
            },
            indent=1,
            default=str,
        )
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    raise SystemExit(main())
