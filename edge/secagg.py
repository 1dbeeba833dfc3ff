"""The device side of one secure-aggregation fill: :class:`SecAggParticipant`.

A task that carries ``secagg`` (:class:`~fedward.protocol.messages.SecAggParams`)
makes its device one member of one SecAgg instance (one buffer fill of the
coordinator). The participant wraps the pure state machine
:class:`~fedward.privacy.secagg.SecAggClient` with what only the device can do:

* **its own floors**, checked before it advertises anything: the cohort is at
  least the device's ``min_cohort`` (and the config's), the threshold at least
  ``floor((n + c)/2) + 1`` and ``c + 2`` for ``c`` the larger of the device's
  and the config's ``max_colluders`` (a coordinator cannot lower the bound by
  claiming fewer colluders), and the session's index-set digest and length are
  those of ``VectorLayout.for_subset(model shapes, task.subset_names)``: the
  device masks exactly the tensors it trains, and every member the same set;
* **its own weight**, computed on the device from public numbers in the task
  (FTTE's energy damping ``g = 1/(1 + beta*max(0, q/ref - tol))``, 1 when the
  reference is unknown; 1 under distributed DP), after ``NormBounded``'s L2
  clip when the task gives a bound; the server learns only ``sum(w_i Delta_i)``
  and ``sum(w_i)``;
* **its count words**: a one-hot coarse histogram of its log-energy over the
  task's bin edges (``len(edges) + 1`` bins), or the constant 1 when there are
  no edges; never its sample count (a per-device constant is solvable from
  repeated sums, issue 11);
* **distributed DP**: under ``ddp`` the update goes through
  :func:`fedward.privacy.secagg.ddp.prepare` (clip, rotation, rounding,
  Skellam share) with weight 1 before masking;
* **its peers' identity keys** (:mod:`.peer_evidence`): with an audit key
  provisioned, a roster is answered only if every peer's key is proven by the
  study's enrolment records in the signed audit log (the roster's evidence)
  and signs that peer's advertisement; otherwise the device leaves the fill.
  Without one, :attr:`SecAggParticipant.peer_check` says ``UNCHECKED``: the
  coordinator is then the only PKI, and the agent logs it;
* **durability** (:mod:`.secagg_store`): the client's journal is the device's
  file-backed journal and every saved state is written atomically before a
  message is returned, so after ``kill -9`` :meth:`restore` re-sends the same
  bytes for the same request and refuses a different one.

Randomness comes only from ``random_bytes`` (default ``os.urandom``): keys,
seeds, Shamir coefficients, AEAD nonces, rounding, DP noise.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedward.errors import EdgeError
from fedward.privacy.secagg import (
    ClientStage,
    ConfigError,
    KeyAdvertisement,
    KeyRoster,
    MaskedInput,
    ProtocolViolation,
    SecAggClient,
    SecAggConfig,
    SecAggError,
    SecAggSession,
    ShareBundle,
    ShareDelivery,
    StateError,
    UnmaskRequest,
    UnmaskResponse,
    masking,
    threshold_floor,
)
from fedward.privacy.secagg import state as secagg_state
from fedward.privacy.secagg.crypto import session_context
from fedward.privacy.secagg.histogram import energy_counts
from fedward.privacy.secagg.layout import VectorLayout
from fedward.privacy.secagg.prg import MAX_MODULUS_BITS, MIN_MODULUS_BITS
from fedward.privacy.secagg.wire import decode_message, encode_message
from fedward.protocol.messages import SecAggParams, Task
from fedward.saved_state import open_envelope, seal

from .peer_evidence import PeerCheck, PeerEvidenceRefused, PeerEvidenceVerifier
from .secagg_store import SecAggStore

__all__ = [
    "PARTICIPANT_STATE_KIND",
    "Released",
    "SecAggFloors",
    "SecAggParticipant",
    "SecAggRefused",
    "device_weight",
    "energy_histogram",
    "l2_clip",
]

PARTICIPANT_STATE_KIND = "fedward.edge.secagg.participant"
PARTICIPANT_STATE_VERSION = 1
RandomBytes = Callable[[int], bytes]
Released = KeyAdvertisement | ShareBundle | MaskedInput | UnmaskResponse

#: The message a client has released at each stage (what a restore re-sends).
_RELEASED_AT: dict[ClientStage, type] = {
    ClientStage.ADVERTISED: KeyAdvertisement,
    ClientStage.SHARED: ShareBundle,
    ClientStage.MASKED: MaskedInput,
    ClientStage.DONE: UnmaskResponse,
}


class SecAggRefused(EdgeError):
    """The device will not take part in this fill (its floors, or inconsistent params)."""


def _int_at_least(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{name} must be an int >= {low}, got {value!r}")
    return value


@dataclass(frozen=True, kw_only=True)
class SecAggFloors:
    """The device's own lower bounds on a fill, whatever the coordinator sends.

    ``min_cohort``: the smallest cohort it joins (>= ``max_colluders + 2``);
    ``max_colluders``: the number of Sybil members it assumes at least, so it
    demands ``threshold >= floor((n + c)/2) + 1`` with ``c`` the larger of this
    and the config's ``max_colluders``;
    ``min_modulus_bits``: the narrowest ring Z_{2^b} it masks in (default and
    least :data:`MIN_MODULUS_BITS` = 8, at most 64). Whatever b, the device
    also refuses a config whose cohort's sum could wrap modulo 2^b
    (``SecAggConfig.check_cohort``), and a ``sum_bound`` outside distributed DP.
    """

    min_cohort: int = 3
    max_colluders: int = 1
    min_modulus_bits: int = MIN_MODULUS_BITS

    def __post_init__(self) -> None:
        _int_at_least("max_colluders", self.max_colluders, 0)
        _int_at_least("min_cohort", self.min_cohort, self.max_colluders + 2)
        _int_at_least("min_modulus_bits", self.min_modulus_bits, MIN_MODULUS_BITS)
        if self.min_modulus_bits > MAX_MODULUS_BITS:
            raise ConfigError(
                f"min_modulus_bits must be at most {MAX_MODULUS_BITS}, got {self.min_modulus_bits}"
            )


def device_weight(
    energy: float,
    *,
    reference: float | None,
    tolerance: float,
    beta: float,
) -> float:
    """FTTE's energy damping on the device: ``1/(1 + beta*max(0, q/ref - tol))``.

    1 when ``reference`` is None or not positive (no scale to judge by, as
    ``NormBounded`` leaves an update alone when the median is zero).
    """
    if not math.isfinite(energy) or energy < 0:
        raise ConfigError(f"update energy must be a finite number >= 0, got {energy!r}")
    if reference is None or reference <= 0:
        return 1.0
    return 1.0 / (1.0 + beta * max(0.0, energy / reference - tolerance))


def energy_histogram(energy: float, *, edges: Sequence[float]) -> tuple[int, ...]:
    """One-hot bin of ``log(energy)`` over ``edges`` (``len(edges) + 1`` bins; ``(1,)`` for
    none): the rule the coordinator decodes, ``fedward.privacy.secagg.histogram``."""
    return energy_counts(energy, edges)


def l2_clip(vector: np.ndarray, *, bound: float) -> float:
    """Scale ``vector`` in place to L2 norm at most ``bound``; returns the factor applied."""
    norm = float(np.linalg.norm(vector))
    if norm <= bound or norm == 0.0:
        return 1.0
    factor = bound / norm
    vector *= factor
    return factor


def _load_ddp(plain: Mapping[str, Any]) -> Any:
    from fedward.privacy.secagg import ddp as ddp_module  # only a DP fill needs it

    return ddp_module.DistributedDp.from_plain(dict(plain))


class SecAggParticipant:
    """This device in one fill: floors, weight, counts and the durable SecAgg client.

    Build it with :meth:`for_task` (a new fill) or :meth:`restore` (after a
    restart). Each step returns the message to publish (or None), and is
    durable before it returns: hand the result to the transport only then.

    ``identity_keys`` (every cohort member's Ed25519 public key, when the device
    knows them) makes a valid signature on each peer's advertisement mandatory.
    ``peer_evidence`` checks each peer's key against the signed audit log's
    enrolment records carried in the roster (:mod:`.peer_evidence`); without it
    :attr:`peer_check` is ``UNCHECKED`` once a roster is answered.
    ``dp_task``: the task also trains with DP-SGD (the energy is then a
    function of the noised update, inside the accountant).
    """

    def __init__(
        self,
        *,
        params: SecAggParams,
        task_id: str,
        device_id: str,
        subset_names: Sequence[str],
        model_shapes: Mapping[str, tuple[int, ...]],
        store: SecAggStore,
        signing_key: Ed25519PrivateKey | None = None,
        identity_keys: Mapping[str, Ed25519PublicKey] | None = None,
        floors: SecAggFloors | None = None,
        dp_task: bool = False,
        random_bytes: RandomBytes = os.urandom,
        peer_evidence: PeerEvidenceVerifier | None = None,
    ) -> None:
        if store.device_id != device_id:
            raise SecAggRefused("the SecAgg store belongs to another device")
        self.params = params
        self.task_id = task_id
        self.device_id = device_id
        self.fill_id = params.fill_id
        self.subset_names = tuple(subset_names)
        self.floors = floors if floors is not None else SecAggFloors()
        self.dp_task = dp_task
        self.store = store
        self._random_bytes = random_bytes
        self.peer_evidence = peer_evidence
        self.peer_check: PeerCheck | None = None  # set when this process answers a roster
        try:
            self.config = SecAggConfig.from_plain(params.config)
            self.session = SecAggSession.from_plain(params.session)
            self.layout = VectorLayout.for_subset(model_shapes, self.subset_names)
            self.ddp = _load_ddp(params.ddp) if params.ddp is not None else None
        except ConfigError as exc:
            raise SecAggRefused(f"unusable SecAgg parameters: {exc}") from None
        self._check_floors()
        self._delivery: ShareDelivery | None = None
        self._prepared: tuple[np.ndarray, float, tuple[int, ...]] | None = None
        try:
            self.client = SecAggClient(
                config=self.config,
                session=self.session,
                device_id=device_id,
                random_bytes=random_bytes,
                signing_key=signing_key,
                identity_keys=identity_keys,
                journal=store.journal,
                persist=self._persist,
            )
        except ConfigError as exc:
            raise SecAggRefused(str(exc)) from None

    @classmethod
    def for_task(
        cls,
        task: Task,
        *,
        model_shapes: Mapping[str, tuple[int, ...]],
        store: SecAggStore,
        signing_key: Ed25519PrivateKey | None = None,
        identity_keys: Mapping[str, Ed25519PublicKey] | None = None,
        floors: SecAggFloors | None = None,
        random_bytes: RandomBytes = os.urandom,
        peer_evidence: PeerEvidenceVerifier | None = None,
    ) -> SecAggParticipant:
        """The participant of ``task``'s fill (SecAggRefused below the device's floors)."""
        if task.secagg is None:
            raise SecAggRefused("this task is not part of a secure-aggregation fill")
        if task.secagg.session.get("session_id") in (None, ""):
            raise SecAggRefused("the fill names no session")
        return cls(
            params=task.secagg,
            task_id=task.task_id,
            device_id=task.device_id,
            subset_names=task.subset_names,
            model_shapes=model_shapes,
            store=store,
            signing_key=signing_key,
            identity_keys=identity_keys,
            floors=floors,
            dp_task=task.dp is not None,
            random_bytes=random_bytes,
            peer_evidence=peer_evidence,
        )

    # -- floors ----------------------------------------------------------------------

    def _check_floors(self) -> None:
        cfg, ses, floors = self.config, self.session, self.floors
        if self.device_id not in ses.cohort:
            raise SecAggRefused(f"device {self.device_id!r} is not in the fill's cohort")
        n = ses.n
        min_cohort = max(floors.min_cohort, cfg.min_cohort)
        if n < min_cohort:
            raise SecAggRefused(f"cohort of {n} devices is below this device's floor {min_cohort}")
        colluders = max(floors.max_colluders, cfg.max_colluders)
        needed = max(threshold_floor(n, max_colluders=colluders), colluders + 2)
        if cfg.threshold < needed:
            raise SecAggRefused(
                f"threshold {cfg.threshold} < {needed} = max(floor((n + c)/2) + 1, c + 2) for "
                f"n = {n}, c = {colluders}: a split unmask request could reveal one input"
            )
        if cfg.threshold > n:
            raise SecAggRefused(f"threshold {cfg.threshold} exceeds the cohort of {n}")
        if cfg.modulus_bits < floors.min_modulus_bits:
            raise SecAggRefused(
                f"modulus_bits {cfg.modulus_bits} < this device's floor {floors.min_modulus_bits}"
            )
        if cfg.sum_bound is not None and self.ddp is None:
            raise SecAggRefused(
                "the config claims a sum_bound tighter than n * clip * scale, which only "
                "distributed DP vouches for, and this fill has none"
            )
        try:
            cfg.check_cohort(n)
        except SecAggError as exc:  # OverflowRisk: a cohort's sum could wrap modulo 2^b
            raise SecAggRefused(
                f"the fill's encoding cannot hold its cohort's sum: {exc}"
            ) from None
        if ses.index_set_digest != self.layout.digest:
            raise SecAggRefused(
                "the fill's index-set digest is not that of this task's subset: the device "
                "masks exactly the tensors it trains, as every member must"
            )
        if self.ddp is not None:
            try:  # padded length, the DDP scale, a clip that never clips, weight 1
                self.ddp.check_secagg(cfg, session=ses, d=self.layout.vector_length)
            except ConfigError as exc:
                raise SecAggRefused(f"the fill does not fit its distributed DP: {exc}") from None
            if cfg.threshold - colluders < self.ddp.min_survivors:
                raise SecAggRefused(
                    f"threshold {cfg.threshold} - c = {colluders} honest survivors < the DP "
                    f"noise's min_survivors {self.ddp.min_survivors}: the sum could carry less "
                    "noise than promised"
                )
        elif ses.vector_length != self.layout.vector_length:
            raise SecAggRefused(
                f"the fill masks {ses.vector_length} coordinates; this task's subset has "
                f"{self.layout.vector_length}"
            )
        bins = self.params.energy_bins
        words = len(bins) + 1 if bins else 1
        if cfg.count_words != words:
            raise SecAggRefused(
                f"config has {cfg.count_words} count words; {len(bins)} energy bin edges need "
                f"{words}"
            )
        if self.ddp is not None and bins and not self.dp_task:
            raise SecAggRefused(
                "an energy histogram under distributed DP would leave the device outside the "
                "DP noise: a DDP fill carries no energy bins"
            )
        if cfg.max_weight < 1.0:
            raise SecAggRefused("config.max_weight < 1 cannot carry a device weight in [0, 1]")

    # -- persistence -----------------------------------------------------------------

    @property
    def session_id(self) -> bytes:
        return self.session.session_id

    @property
    def stage(self) -> ClientStage:
        return self.client.stage

    @property
    def config_digest(self) -> bytes:
        """``SecAggConfig.fingerprint()`` of this fill: bound into every key and signature,
        so a member handed another config than its peers fails at the first share."""
        return self.config.fingerprint()

    def _state(self, client_state: Mapping[str, Any]) -> dict[str, Any]:
        delivery = encode_message(self._delivery) if self._delivery is not None else None
        return seal(
            PARTICIPANT_STATE_KIND,
            PARTICIPANT_STATE_VERSION,
            {
                "task_id": self.task_id,
                "device_id": self.device_id,
                "subset_names": list(self.subset_names),
                "dp_task": self.dp_task,
                "params": self.params.model_dump_json(),
                "client": dict(client_state),
                "delivery": delivery,
            },
        )

    def _persist(self, client_state: dict[str, Any]) -> None:
        # The client calls this after its journal write and before it returns a message.
        self.store.save_state(
            self.session_id, self._state(client_state), stage=self.client.stage.name
        )

    @classmethod
    def restore(
        cls,
        store: SecAggStore,
        session_id: bytes,
        *,
        model_shapes: Mapping[str, tuple[int, ...]],
        signing_key: Ed25519PrivateKey | None = None,
        identity_keys: Mapping[str, Ed25519PublicKey] | None = None,
        floors: SecAggFloors | None = None,
        random_bytes: RandomBytes = os.urandom,
        peer_evidence: PeerEvidenceVerifier | None = None,
    ) -> SecAggParticipant:
        """The participant of ``session_id`` as saved on disk, exactly where its journal is.

        Raises StateError for a state older or newer than the journal, or
        unreadable (then :meth:`abort_stored` burns the session); SecAggRefused
        if the stored parameters no longer pass the floors.
        """
        saved = store.load_state(session_id)
        if saved is None:
            raise StateError("no saved state for this session")
        payload = open_envelope(
            saved,
            kind=PARTICIPANT_STATE_KIND,
            format_version=PARTICIPANT_STATE_VERSION,
            error=StateError,
        )
        keys = {"task_id", "device_id", "subset_names", "dp_task", "params", "client", "delivery"}
        if set(payload) != keys:
            raise StateError("a participant state with unknown or missing keys")
        try:
            params = SecAggParams.model_validate_json(payload["params"])
        except ValueError as exc:
            raise StateError(f"stored fill parameters do not validate: {exc}") from None
        me = cls(
            params=params,
            task_id=payload["task_id"],
            device_id=payload["device_id"],
            subset_names=payload["subset_names"],
            model_shapes=model_shapes,
            store=store,
            signing_key=signing_key,
            identity_keys=identity_keys,
            floors=floors,
            dp_task=bool(payload["dp_task"]),
            random_bytes=random_bytes,
            peer_evidence=peer_evidence,
        )
        if me.session_id != session_id:
            raise StateError("the saved state belongs to another session")
        me.client.load_state_dict(payload["client"])
        if payload["delivery"] is not None:
            me._delivery = decode_message(payload["delivery"], ShareDelivery)
        return me

    @classmethod
    def abort_stored(
        cls,
        store: SecAggStore,
        session_id: bytes,
        *,
        model_shapes: Mapping[str, tuple[int, ...]],
    ) -> bool:
        """Burn a stored session that cannot be resumed (journal ABORTED, secrets dropped).

        For a state :meth:`restore` refused (e.g. a crash between the journal
        write and the state write: nothing of that step was released). False if
        the stored state does not even name its parameters.
        """
        saved = store.load_state(session_id)
        try:
            payload = open_envelope(
                saved,
                kind=PARTICIPANT_STATE_KIND,
                format_version=PARTICIPANT_STATE_VERSION,
                error=StateError,
            )
            params = SecAggParams.model_validate_json(payload["params"])
            me = cls(
                params=params,
                task_id=payload["task_id"],
                device_id=payload["device_id"],
                subset_names=payload["subset_names"],
                model_shapes=model_shapes,
                store=store,
                dp_task=bool(payload["dp_task"]),
            )
        except (StateError, SecAggRefused, KeyError, TypeError, ValueError):
            return False
        if me.session_id != session_id:
            return False
        me.on_abort()
        return True

    # -- the steps -------------------------------------------------------------------

    def advertise(self) -> KeyAdvertisement:
        """ADVERTISE: this device's two public keys, signed with its identity if it has one."""
        return self.client.advertise()

    def on_roster(self, roster: KeyRoster) -> ShareBundle:
        """ROSTER -> SHARES (the same bundle again for the same roster).

        The first answer checks the peers' identity keys (``peer_evidence``); a roster
        they fail aborts this device's part of the fill (secrets forgotten, session id
        burnt) and raises :class:`PeerEvidenceRefused`. The evidence is not part of the
        request the client answers once: a re-sent roster may carry fresher evidence
        for the same advertisements and gets the same bundle.
        """
        if not isinstance(roster, KeyRoster):
            raise ProtocolViolation("expected a KeyRoster")
        if self.client.stage is ClientStage.ADVERTISED:
            masking.check_header(roster, self.session, "roster")
            if self.peer_evidence is None:
                self.peer_check = PeerCheck.UNCHECKED
            else:
                try:
                    if self.last_released() not in roster.advertisements:
                        raise PeerEvidenceRefused(
                            "the roster does not carry this device's own advertisement: its "
                            "id stands for other keys there"
                        )
                    self.peer_evidence.check_roster(
                        roster,
                        context=session_context(self.session, self.config),
                        own_device_id=self.device_id,
                    )
                except PeerEvidenceRefused:
                    self.on_abort()
                    raise
                self.peer_check = PeerCheck.CHECKED
        bare = dataclasses.replace(roster, evidence=()) if roster.evidence else roster
        return self.client.share_keys(bare)

    def on_delivery(self, delivery: ShareDelivery) -> MaskedInput | None:
        """DELIVERY: kept durably; the masked input if the update is already trained."""
        if self.client.stage is ClientStage.MASKED:
            # A repeated delivery gets the input masked before (a restart included); a
            # different one is refused: one input per session, masked once.
            if delivery != self._delivery:
                raise ProtocolViolation("this device already masked its input for another delivery")
            released = self.last_released()
            return released if isinstance(released, MaskedInput) else None
        if self.client.stage is not ClientStage.SHARED:
            raise StateError(f"a share delivery in stage {self.client.stage.name}")
        if not isinstance(delivery, ShareDelivery):
            raise StateError("expected a ShareDelivery")
        if self._delivery is not None and self._delivery != delivery:
            raise StateError("a second, different share delivery in this fill")
        if self._delivery is None:
            self._delivery = delivery
            self._persist(self.client.state_dict())
        return self._mask_if_ready()

    def mask(self, delta: Mapping[str, np.ndarray], *, energy: float) -> MaskedInput | None:
        """The trained update: MASKED_INPUT once delivered (None until the delivery is in).

        ``delta`` holds the task's subset tensors; ``energy`` is its update energy
        (mean squared value per coordinate, as ``LocalOutcome.update_energy``).
        """
        if self.client.stage not in (ClientStage.ADVERTISED, ClientStage.SHARED):
            raise StateError(
                f"cannot take a trained update in stage {self.client.stage.name} (one input per "
                "session; after masking, last_released() holds the masked input to re-send)"
            )
        if self._prepared is not None:
            raise StateError("this fill already has its trained update")
        self._prepared = self._prepare(delta, energy=energy)
        return self._mask_if_ready()

    def _prepare(
        self, delta: Mapping[str, np.ndarray], *, energy: float
    ) -> tuple[np.ndarray, float, tuple[int, ...]]:
        """(vector to mask, weight, count words): clip, weight, histogram, DDP on the device."""
        if isinstance(energy, bool) or not isinstance(energy, int | float):
            raise ConfigError(f"energy must be a number, got {energy!r}")
        vector = self.layout.flatten(delta)  # float64, only the subset, in layout order
        if not np.all(np.isfinite(vector)):
            raise ConfigError("the trained update holds non-finite values")
        weighting = self.params.weighting
        energy = float(energy)
        if weighting.norm_bound is not None:
            factor = l2_clip(vector, bound=weighting.norm_bound)
            energy *= factor * factor  # the energy of the update as it is merged
        counts = energy_histogram(energy, edges=self.params.energy_bins)
        if self.ddp is not None:
            from fedward.privacy.secagg import ddp as ddp_module

            vector = ddp_module.prepare(
                vector,
                ddp=self.ddp,
                session_seed=self.session_id,
                random_bytes=self._random_bytes,
            )
            return vector, 1.0, counts  # w = 1: the sensitivity the noise is calibrated to
        weight = device_weight(
            energy,
            reference=weighting.energy_reference,
            tolerance=weighting.energy_tolerance,
            beta=weighting.energy_beta,
        )
        # public, in (0, 1]: the coordinator knows the base version the device trained from
        return vector, weight * weighting.staleness_weight, counts

    def _mask_if_ready(self) -> MaskedInput | None:
        if self._prepared is None or self._delivery is None:
            return None
        if self.client.stage is not ClientStage.SHARED:
            return None  # trained before the roster: masks once the delivery is in
        vector, weight, counts = self._prepared
        masked = self.client.mask_input(self._delivery, update=vector, weight=weight, counts=counts)
        self._prepared = None  # the plain update is not kept once masked
        return masked

    def on_unmask(self, request: UnmaskRequest) -> UnmaskResponse:
        """UNMASK_REQUEST -> UNMASK_RESPONSE, once (the same request gets the same bytes)."""
        return self.client.unmask(request)

    def on_abort(self) -> None:
        """ABORT: forget every secret; the session id stays burnt in the journal."""
        self._prepared = None
        self._delivery = None
        self.client.abort()

    # -- re-sending ------------------------------------------------------------------

    def last_released(self) -> Released | None:
        """The message this device released at its current stage (what a restart re-sends)."""
        kind = _RELEASED_AT.get(self.client.stage)
        if kind is None:
            return None
        released = self.client.state_dict()["payload"]["released"]
        return secagg_state.from_plain(kind, released) if released is not None else None

    @property
    def awaiting_update(self) -> bool:
        """True while the fill still needs this device's trained update."""
        return self._prepared is None and self.client.stage in (
            ClientStage.ADVERTISED,
            ClientStage.SHARED,
        )
