"""The device side of one SecAgg instance, as an explicit state machine.

    NEW --advertise--> ADVERTISED --share_keys--> SHARED --mask_input--> MASKED
        --unmask--> DONE            (abort() from any stage -> ABORTED)

Each transition is one-shot: a device never splits its secrets twice, never
masks two inputs with the same masks and answers at most one unmask request.
The rules survive a crash and a restore: before a transition returns its
message, the client records the stage, the request's digest and the message's
digest in its :class:`~.journal.SessionJournal` (durable, append-only), then
hands its new state (holding the exact message) to ``persist``. The same
request again gets the same bytes; a different one is refused; a session id
the journal holds cannot be started again and a saved state behind the journal
cannot be loaded. A method that raises before the journal write leaves the
client unchanged. After masking, the client forgets its own private keys and
seed; it keeps only its peers' shares until it has answered the unmask request.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from . import crypto, masking, state
from .config import SecAggConfig, SecAggSession
from .errors import ConfigError, ProtocolViolation, SecAggError, StateError, TooFewSurvivors
from .journal import SessionJournal, message_digest
from .messages import (
    EncryptedShare,
    KeyAdvertisement,
    KeyRoster,
    MaskedInput,
    RevealedShare,
    ShareBundle,
    ShareDelivery,
    UnmaskRequest,
    UnmaskResponse,
)
from .shamir import Share, share_size, split_bytes

CLIENT_STATE_KIND = "fedward.privacy.secagg.client"
_CLIENT_CONTENT = frozenset(
    {
        "device_id",
        "stage",
        "enc_sk",
        "mask_sk",
        "seed",
        "roster",
        "own_shares",
        "held",
        "request",
        "released",
    }
)
_SECRET = masking.SECRET_BYTES
_SHARE = share_size(_SECRET)

T = TypeVar("T")
Released = KeyAdvertisement | ShareBundle | MaskedInput | UnmaskResponse


class ClientStage(enum.Enum):
    NEW = "new"
    ADVERTISED = "advertised"
    SHARED = "shared"
    MASKED = "masked"
    DONE = "done"
    ABORTED = "aborted"


#: The message a client releases on reaching each stage (re-sent on a repeated request).
_RELEASED_TYPE: dict[ClientStage, type] = {
    ClientStage.ADVERTISED: KeyAdvertisement,
    ClientStage.SHARED: ShareBundle,
    ClientStage.MASKED: MaskedInput,
    ClientStage.DONE: UnmaskResponse,
}


def _request_digest(request: object, expected: type | None) -> bytes:
    if expected is not None and not isinstance(request, expected):
        raise ProtocolViolation(f"expected a {expected.__name__}")
    return message_digest(request)


def _required(value: T | None, what: str, stage: ClientStage) -> T:
    """``value``, which a client in ``stage`` holds; StateError if it is missing."""
    if value is None:
        raise StateError(
            f"{what} is missing in stage {stage.name}: this client's state is inconsistent; "
            "abort() it (the server then counts this device as dropped)"
        )
    return value


class SecAggClient:
    """One device's participation in one SecAgg instance.

    ``random_bytes`` is the only source of randomness (keys, seed, Shamir
    coefficients, AEAD nonces); it must be cryptographically secure in
    production (default ``os.urandom``). ``signing_key`` signs the key
    advertisement with the device's Ed25519 identity; ``identity_keys`` (every
    cohort member's Ed25519 public key), when given, makes signatures mandatory.

    ``journal`` is this device's durable session record (one per device, shared
    by all its sessions; default: a fresh in-memory one, which makes every
    restore fail, since a journal that never saw the session cannot vouch for a
    saved state). ``persist``, if given, receives :meth:`state_dict` after each
    journal write and before the message is returned: the write-ahead copy of
    the exact bytes to re-send after a crash.
    """

    def __init__(
        self,
        *,
        config: SecAggConfig,
        session: SecAggSession,
        device_id: str,
        random_bytes: crypto.RandomBytes = os.urandom,
        signing_key: Ed25519PrivateKey | None = None,
        identity_keys: Mapping[str, Ed25519PublicKey] | None = None,
        journal: SessionJournal | None = None,
        persist: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        config.check_cohort(session.n)
        if device_id not in session.cohort:
            raise ConfigError(f"device {device_id!r} is not in the cohort")
        if journal is None:
            journal = SessionJournal(device_id=device_id)
        if journal.device_id != device_id:
            raise ConfigError("the session journal belongs to another device")
        self.journal = journal
        self._persist = persist
        self.config = config
        self.session = session
        self.device_id = device_id
        self._random_bytes = random_bytes
        self._signing_key = signing_key
        self._identity_keys = dict(identity_keys) if identity_keys is not None else None
        self._context = crypto.session_context(session, config)
        self._x = session.x_of(device_id)
        self._reset(ClientStage.NEW)

    def _reset(self, stage: ClientStage) -> None:
        self._stage = stage
        self._enc_sk: bytes | None = None
        self._mask_sk: bytes | None = None
        self._seed: bytes | None = None
        self._roster: dict[str, KeyAdvertisement] = {}
        self._own_shares: tuple[bytes, bytes] | None = None
        self._held: dict[str, tuple[bytes, bytes]] = {}
        self._request: bytes | None = None
        self._released: Released | None = None

    @property
    def stage(self) -> ClientStage:
        return self._stage

    def _require(self, stage: ClientStage, action: str) -> None:
        if self._stage is not stage:
            raise StateError(f"cannot {action} in stage {self._stage.name} (needs {stage.name})")

    def _resend(self, reached: ClientStage, request: bytes) -> Released | None:
        """The message already released for ``request`` if this client is at ``reached``.

        None if it is not there yet; ProtocolViolation for a different request:
        a one-shot step is answered once, whatever restarts happened in between.
        """
        if self._stage is not reached:
            return None
        if self._released is None:
            _required(None, "the released message", reached)
        released: Released | None = self._released
        if request != self._request:
            raise ProtocolViolation(
                f"this device already answered a different request in stage {reached.name}; "
                "it answers once per session"
            )
        if self._persist is not None:  # the write may have failed before: write-ahead again
            self._persist(self.state_dict())
        return released

    def _commit(self, reached: ClientStage, request: bytes, msg: T) -> T:
        """Write-ahead: journal, then saved state (with ``msg``), then release ``msg``."""
        self._stage = reached
        self._request, self._released = request, msg  # type: ignore[assignment]
        if self._persist is not None:
            self._persist(self.state_dict())
        return msg

    def _record(self, reached: ClientStage, request: bytes, msg: object) -> None:
        """The durable journal write that must precede any change (raises: nothing changed)."""
        self.journal.record(
            self.session.session_id,
            stage=reached.name,
            request=request,
            released=message_digest(msg),
        )

    # -- round 0: advertise keys -------------------------------------------------

    def advertise(self) -> KeyAdvertisement:
        """Generate the two X25519 key pairs and advertise their public halves."""
        request = _request_digest(None, None)
        again = self._resend(ClientStage.ADVERTISED, request)
        if isinstance(again, KeyAdvertisement):
            return again
        self._require(ClientStage.NEW, "advertise")
        if self.session.session_id in self.journal:
            raise ProtocolViolation(
                "this device already took part in this session id: a session id is used once "
                "(a replayed or restarted session is refused)"
            )
        enc = crypto.new_x25519(self._random_bytes)
        mask = crypto.new_x25519(self._random_bytes)
        msg = self._advertisement(enc_sk=crypto.private_raw(enc), mask_sk=crypto.private_raw(mask))
        self._record(ClientStage.ADVERTISED, request, msg)
        self._enc_sk, self._mask_sk = crypto.private_raw(enc), crypto.private_raw(mask)
        return self._commit(ClientStage.ADVERTISED, request, msg)

    @staticmethod
    def _public_keys(enc_sk: bytes, mask_sk: bytes) -> tuple[bytes, bytes]:
        return (
            crypto.public_raw(crypto.load_private(enc_sk)),
            crypto.public_raw(crypto.load_private(mask_sk)),
        )

    def _advertisement(self, *, enc_sk: bytes, mask_sk: bytes) -> KeyAdvertisement:
        enc_pk, mask_pk = self._public_keys(enc_sk, mask_sk)
        signature = b""
        if self._signing_key is not None:
            payload = crypto.advertisement_payload(self._context, self.device_id, enc_pk, mask_pk)
            signature = crypto.sign(self._signing_key, payload)
        return KeyAdvertisement(
            session_id=self.session.session_id,
            round_index=self.session.round_index,
            device_id=self.device_id,
            enc_public_key=enc_pk,
            mask_public_key=mask_pk,
            signature=signature,
        )

    # -- round 1: share keys -----------------------------------------------------

    def share_keys(self, roster: KeyRoster) -> ShareBundle:
        """Check the roster (U1), then Shamir-share the mask key and a fresh self-mask seed."""
        request = _request_digest(roster, KeyRoster)
        again = self._resend(ClientStage.SHARED, request)
        if isinstance(again, ShareBundle):
            return again
        self._require(ClientStage.ADVERTISED, "share keys")
        enc_sk = _required(self._enc_sk, "the encryption key", self._stage)
        mask_sk = _required(self._mask_sk, "the mask key", self._stage)
        members = self._check_roster(roster, enc_sk=enc_sk, mask_sk=mask_sk)
        seed = self._random_bytes(_SECRET)
        if not isinstance(seed, bytes) or len(seed) != _SECRET:
            raise ConfigError("random_bytes returned the wrong number of bytes")
        t = self.config.threshold
        xs = [self.session.x_of(d) for d in members]
        key_shares = split_bytes(mask_sk, threshold=t, xs=xs, random_bytes=self._random_bytes)
        seed_shares = split_bytes(seed, threshold=t, xs=xs, random_bytes=self._random_bytes)
        enc = crypto.load_private(enc_sk)
        advs = self._roster_from(roster)
        out, own = [], None
        for peer, ks, ss in zip(members, key_shares, seed_shares, strict=True):
            plaintext = ks.to_bytes() + ss.to_bytes()
            if peer == self.device_id:
                own = (ks.to_bytes(), ss.to_bytes())
                continue
            nonce, ct = crypto.encrypt_share(
                plaintext,
                private=enc,
                peer_public=advs[peer].enc_public_key,
                context=self._context,
                sender=self.device_id,
                recipient=peer,
                random_bytes=self._random_bytes,
            )
            out.append(
                EncryptedShare(sender=self.device_id, recipient=peer, nonce=nonce, ciphertext=ct)
            )
        bundle = ShareBundle(
            session_id=self.session.session_id,
            round_index=self.session.round_index,
            sender=self.device_id,
            shares=tuple(out),
        )
        self._record(ClientStage.SHARED, request, bundle)
        self._roster = advs
        self._seed, self._own_shares = seed, own
        return self._commit(ClientStage.SHARED, request, bundle)

    @staticmethod
    def _roster_from(roster: KeyRoster) -> dict[str, KeyAdvertisement]:
        return {a.device_id: a for a in roster.advertisements}

    def _check_roster(self, roster: KeyRoster, *, enc_sk: bytes, mask_sk: bytes) -> tuple[str, ...]:
        if not isinstance(roster, KeyRoster):
            raise ProtocolViolation("expected a KeyRoster")
        masking.check_header(roster, self.session, "roster")
        advs = roster.advertisements
        if not isinstance(advs, tuple | list):
            raise ProtocolViolation("roster advertisements must be a sequence")
        for adv in advs:
            masking.check_advertisement(
                adv, session=self.session, context=self._context, identity_keys=self._identity_keys
            )
        masking.check_roster_keys_unique(advs)
        mine = [
            (a.enc_public_key, a.mask_public_key) for a in advs if a.device_id == self.device_id
        ]
        if mine != [self._public_keys(enc_sk, mask_sk)]:
            raise ProtocolViolation("the roster does not carry this device's own advertisement")
        if len(advs) < self.config.threshold:
            raise TooFewSurvivors(
                f"roster has {len(advs)} devices < threshold {self.config.threshold}"
            )
        return tuple(sorted((a.device_id for a in advs), key=self.session.x_of))

    # -- round 2: masked input ---------------------------------------------------

    def mask_input(
        self,
        delivery: ShareDelivery,
        *,
        update: np.ndarray,
        weight: float,
        counts: Sequence[int],
    ) -> MaskedInput:
        """Decrypt and check the peers' shares (U2), then mask ``weight * update`` and extras.

        ``update`` is the device's Delta_i over the shared index set (length
        ``session.vector_length``); the device scales it by ``weight`` itself.
        ``counts``: exactly ``config.count_words`` ints in [0, max_count] (a
        one-hot histogram bin, or a constant 1), masked after the weight word.
        Never a real sample count: a per-device constant leaks across fills.
        """
        counts = masking.check_counts(counts, config=self.config)
        request = _request_digest(delivery, ShareDelivery)
        again = self._resend(ClientStage.MASKED, request)
        if isinstance(again, MaskedInput):
            return again  # the input masked before the restart, never a second one
        self._require(ClientStage.SHARED, "mask an input")
        seed = _required(self._seed, "the self-mask seed", self._stage)
        mask_raw = _required(self._mask_sk, "the mask key", self._stage)
        own_shares = _required(self._own_shares, "this device's own shares", self._stage)
        held = self._open_delivery(delivery)
        cfg, ses = self.config, self.session
        rounding_key = self._random_bytes(_SECRET)
        if not isinstance(rounding_key, bytes) or len(rounding_key) != _SECRET:
            raise ConfigError("random_bytes returned the wrong number of bytes")
        seed_key = crypto.self_mask_key(seed, context=self._context, device_id=self.device_id)
        mask_sk = crypto.load_private(mask_raw)
        pair_keys = [
            (
                crypto.pairwise_mask_key(
                    mask_sk,
                    self._roster[peer].mask_public_key,
                    context=self._context,
                    me=self.device_id,
                    peer=peer,
                ),
                masking.adds_pairwise_mask(self.device_id, peer),
            )
            for peer in held
            if peer != self.device_id
        ]
        data = masking.masked_contribution(
            update,
            weight=weight,
            counts=counts,
            self_key=seed_key,
            pair_keys=pair_keys,
            rounding_key=rounding_key,
            config=cfg,
            session=ses,
        )
        msg = MaskedInput(
            session_id=ses.session_id,
            round_index=ses.round_index,
            device_id=self.device_id,
            data=data,
        )
        self._record(ClientStage.MASKED, request, msg)
        held[self.device_id] = own_shares
        roster = self._roster
        self._reset(ClientStage.MASKED)
        self._roster, self._held = roster, held
        return self._commit(ClientStage.MASKED, request, msg)

    def _open_delivery(self, delivery: ShareDelivery) -> dict[str, tuple[bytes, bytes]]:
        if not isinstance(delivery, ShareDelivery):
            raise ProtocolViolation("expected a ShareDelivery")
        masking.check_header(delivery, self.session, "share delivery")
        if delivery.recipient != self.device_id:
            raise ProtocolViolation("share delivery addressed to another device")
        if not isinstance(delivery.shares, tuple | list):
            raise ProtocolViolation("share delivery must carry a sequence of shares")
        enc = crypto.load_private(_required(self._enc_sk, "the encryption key", self._stage))
        held: dict[str, tuple[bytes, bytes]] = {}
        for item in delivery.shares:
            if not isinstance(item, EncryptedShare):
                raise ProtocolViolation("share delivery carries a non-share")
            sender = item.sender
            if sender not in self._roster or sender == self.device_id or sender in held:
                raise ProtocolViolation(f"unexpected or duplicate share sender {sender!r}")
            if item.recipient != self.device_id:
                raise ProtocolViolation("share addressed to another device")
            plaintext = crypto.decrypt_share(
                item.nonce,
                item.ciphertext,
                private=enc,
                peer_public=self._roster[sender].enc_public_key,
                context=self._context,
                sender=sender,
                recipient=self.device_id,
            )
            held[sender] = self._parse_pair(plaintext, sender)
        if len(held) + 1 < self.config.threshold:
            raise TooFewSurvivors(
                f"only {len(held) + 1} devices shared keys < threshold {self.config.threshold}"
            )
        return held

    def _parse_pair(self, plaintext: bytes, owner: str) -> tuple[bytes, bytes]:
        if len(plaintext) != 2 * _SHARE:
            raise ProtocolViolation(f"share from {owner!r} has the wrong size")
        pair = (plaintext[:_SHARE], plaintext[_SHARE:])
        for raw in pair:
            if Share.from_bytes(raw, secret_len=_SECRET).x != self._x:
                raise ProtocolViolation(f"share from {owner!r} is for another evaluation point")
        return pair

    # -- round 3: unmasking ------------------------------------------------------

    def unmask(self, request: UnmaskRequest) -> UnmaskResponse:
        """Reveal seed shares of survivors and key shares of dropped devices, once.

        Refuses (ProtocolViolation) a request that names a device both as
        survivor and as dropped, that does not partition U2, or that does not
        count this device among the survivors; TooFewSurvivors below threshold.
        """
        digest = _request_digest(request, UnmaskRequest)
        again = self._resend(ClientStage.DONE, digest)
        if isinstance(again, UnmaskResponse):
            return again
        self._require(ClientStage.MASKED, "unmask")
        survivors, dropped = masking.check_unmask_request(
            request, session=self.session, shared=self._held.keys(), threshold=self.config.threshold
        )
        if self.device_id not in survivors:
            raise ProtocolViolation("unmask request does not count this device as a survivor")
        response = UnmaskResponse(
            session_id=self.session.session_id,
            round_index=self.session.round_index,
            device_id=self.device_id,
            seed_shares=tuple(RevealedShare(owner=d, share=self._held[d][1]) for d in survivors),
            key_shares=tuple(RevealedShare(owner=d, share=self._held[d][0]) for d in dropped),
        )
        self._record(ClientStage.DONE, digest, response)
        self._reset(ClientStage.DONE)
        return self._commit(ClientStage.DONE, digest, response)

    def abort(self) -> None:
        """Give up on this instance and forget every secret (the session id stays burnt)."""
        if self._stage is not ClientStage.ABORTED:
            self.journal.record(
                self.session.session_id,
                stage=ClientStage.ABORTED.name,
                request=b"",
                released=message_digest(None),
            )
        self._reset(ClientStage.ABORTED)
        if self._persist is not None:
            self._persist(self.state_dict())

    # -- persistence -------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume; contains this device's secrets (see ``state``)."""
        content = {
            "device_id": self.device_id,
            "stage": self._stage.name,
            "enc_sk": self._enc_sk,
            "mask_sk": self._mask_sk,
            "seed": self._seed,
            "roster": [state.to_plain(a) for a in self._roster.values()],
            "own_shares": list(self._own_shares) if self._own_shares is not None else None,
            "held": {d: list(pair) for d, pair in self._held.items()},
            "request": self._request,
            "released": state.to_plain(self._released) if self._released is not None else None,
        }
        return state.seal_state(CLIENT_STATE_KIND, self.session, self.config, content)

    def load_state_dict(self, saved: Mapping[str, Any]) -> None:
        """Resume from :meth:`state_dict`; StateError (object unchanged) if anything is off."""
        saved = state.open_state(
            saved,
            kind=CLIENT_STATE_KIND,
            session=self.session,
            config=self.config,
            content_keys=_CLIENT_CONTENT,
        )
        if saved.get("device_id") != self.device_id:
            raise StateError("state belongs to another device")
        stage = state.parse_stage(ClientStage, saved.get("stage"))
        try:
            loaded = self._validated(stage, saved)
        except StateError:
            raise
        except (SecAggError, TypeError, ValueError, KeyError, AttributeError) as exc:
            raise StateError(f"invalid client state for stage {stage.name}: {exc}") from None
        self._check_journal(stage, loaded)
        self._reset(stage)
        for name, value in loaded.items():
            setattr(self, name, value)

    def _check_journal(self, stage: ClientStage, loaded: Mapping[str, Any]) -> None:
        """A saved state must be exactly where the journal says this device is."""
        entry = self.journal.get(self.session.session_id)
        if stage is ClientStage.NEW:
            if entry is not None:
                raise StateError(
                    f"this device's journal is at {entry.stage} in this session; an older "
                    "saved state cannot be loaded (it would mask or answer twice)"
                )
            return
        released = loaded.get("_released")
        digest = message_digest(released) if stage is not ClientStage.ABORTED else None
        if entry is None or entry.stage != stage.name:
            raise StateError(
                f"saved state is at {stage.name} but this device's journal is at "
                f"{entry.stage if entry else 'no entry'} for this session: refusing a state "
                "that is older than (or unknown to) the journal"
            )
        if digest is not None and (
            entry.released != digest or entry.request != loaded.get("_request")
        ):
            raise StateError("saved state's released message differs from the journal's record")

    def _validated(self, stage: ClientStage, saved: Mapping[str, Any]) -> dict[str, Any]:
        enc_sk = state.opt_bytes(saved.get("enc_sk"), _SECRET, "enc_sk")
        mask_sk = state.opt_bytes(saved.get("mask_sk"), _SECRET, "mask_sk")
        seed = state.opt_bytes(saved.get("seed"), _SECRET, "seed")
        roster_list = saved.get("roster")
        own, held = saved.get("own_shares"), saved.get("held")
        if not isinstance(roster_list, list) or not isinstance(held, dict):
            raise StateError("roster must be a list and held a dict")
        has_keys = stage in (ClientStage.ADVERTISED, ClientStage.SHARED)
        if (enc_sk is not None, mask_sk is not None) != (has_keys, has_keys):
            raise StateError(f"private keys present/absent wrongly for stage {stage.name}")
        if (seed is not None) != (stage is ClientStage.SHARED) or (own is not None) != (
            stage is ClientStage.SHARED
        ):
            raise StateError(f"seed/own shares present/absent wrongly for stage {stage.name}")
        has_roster = stage in (ClientStage.SHARED, ClientStage.MASKED)
        if bool(roster_list) != has_roster or bool(held) != (stage is ClientStage.MASKED):
            raise StateError(f"roster/held shares present/absent wrongly for stage {stage.name}")
        out: dict[str, Any] = {"_enc_sk": enc_sk, "_mask_sk": mask_sk, "_seed": seed}
        out.update(self._released_from_state(stage, saved))
        if has_roster:
            advs = tuple(state.from_plain(KeyAdvertisement, a) for a in roster_list)
            roster = KeyRoster(self.session.session_id, self.session.round_index, advs)
            if stage is ClientStage.SHARED:
                self._check_roster(
                    roster,
                    enc_sk=_required(enc_sk, "enc_sk", stage),
                    mask_sk=_required(mask_sk, "mask_sk", stage),
                )
            else:
                for adv in advs:
                    masking.check_advertisement(
                        adv,
                        session=self.session,
                        context=self._context,
                        identity_keys=self._identity_keys,
                    )
                masking.check_roster_keys_unique(advs)
            out["_roster"] = self._roster_from(roster)
        if stage is ClientStage.SHARED:
            out["_own_shares"] = self._pair_from_state(own, self.device_id)
        if stage is ClientStage.MASKED:
            if not set(held) <= set(out["_roster"]) or self.device_id not in held:
                raise StateError("held shares name devices outside the roster")
            if len(held) < self.config.threshold:
                raise StateError("fewer held shares than the threshold")
            out["_held"] = {d: self._pair_from_state(pair, d) for d, pair in held.items()}
        return out

    @staticmethod
    def _released_from_state(stage: ClientStage, saved: Mapping[str, Any]) -> dict[str, Any]:
        released, request = saved.get("released"), saved.get("request")
        kind = _RELEASED_TYPE.get(stage)
        if kind is None:
            if released is not None or request is not None:
                raise StateError(f"a released message in stage {stage.name}")
            return {}
        if not isinstance(request, bytes) or released is None:
            raise StateError(
                f"stage {stage.name} must hold its request digest and released message"
            )
        return {"_request": request, "_released": state.from_plain(kind, released)}

    def _pair_from_state(self, value: object, owner: str) -> tuple[bytes, bytes]:
        if not isinstance(value, list | tuple) or len(value) != 2:
            raise StateError(f"shares of {owner!r} must be a (key, seed) pair")
        if not all(isinstance(v, bytes) for v in value):
            raise StateError(f"shares of {owner!r} must be bytes")
        return self._parse_pair(value[0] + value[1], owner)
