"""The coordinator side of one SecAgg instance, as an explicit state machine.

    COLLECTING_ADVERTISEMENTS --close_advertisements--> COLLECTING_SHARES
        --close_shares--> COLLECTING_MASKED_INPUTS --close_masked_inputs-->
        COLLECTING_UNMASK_RESPONSES --finalize--> DONE     (abort() -> ABORTED)

The server relays encrypted shares it cannot read, sums masked vectors, and
with at least ``threshold`` unmask responses reconstructs the self-mask seeds
of survivors and the mask keys of devices that dropped after sharing keys,
never both for one device. Its only output is :class:`AggregateResult`: sums.

Receiving the same message twice is harmless (at-least-once transports); a
different message from the same device is a ProtocolViolation. A method that
raises leaves the server unchanged, so the caller can log and carry on.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from . import crypto, masking, state
from .config import SecAggConfig, SecAggSession, canonical_order
from .errors import ProtocolViolation, SecAggError, StateError, TooFewSurvivors
from .messages import (
    EncryptedShare,
    KeyAdvertisement,
    KeyRoster,
    MaskedInput,
    ShareBundle,
    ShareDelivery,
    UnmaskRequest,
    UnmaskResponse,
)
from .quantize import mod_add, mod_sub, words_from_bytes, words_to_bytes
from .shamir import Interpolator, Share, share_size

SERVER_STATE_KIND = "fedward.privacy.secagg.server"
_SERVER_CONTENT = frozenset(
    {"stage", "advertisements", "bundles", "masked", "survivors", "dropped", "responses", "result"}
)
_SECRET = masking.SECRET_BYTES
_CIPHERTEXT_BYTES = 2 * share_size(_SECRET) + crypto.AEAD_TAG_BYTES


class ServerStage(enum.Enum):
    COLLECTING_ADVERTISEMENTS = "collecting_advertisements"
    COLLECTING_SHARES = "collecting_shares"
    COLLECTING_MASKED_INPUTS = "collecting_masked_inputs"
    COLLECTING_UNMASK_RESPONSES = "collecting_unmask_responses"
    DONE = "done"
    ABORTED = "aborted"


_ORDER = list(ServerStage)


@dataclass(frozen=True, kw_only=True)
class AggregateResult:
    """Everything the server learns from the masked vectors: sums over the survivors.

    weighted_sum: sum_i clip(w_i * Delta_i), float64 of length vector_length
        (exact up to fixed-point rounding: |error| <= len(survivors) * 0.5 / scale).
    weight_sum: sum_i w_i.
    count_sums: the sum over the survivors of each count word (``count_words`` ints,
        each range-checked to [0, survivors * max_count]).
    encoded_sum: the exact modular sum of the encoded plain inputs (uint words,
        ``session.total_words(config)`` of them).
    survivors: devices whose input is in the sum; dropouts: the rest of the cohort.
    """

    weighted_sum: np.ndarray
    weight_sum: float
    count_sums: tuple[int, ...]
    encoded_sum: np.ndarray
    survivors: tuple[str, ...]
    dropouts: tuple[str, ...]


class _State:
    def __init__(self) -> None:
        self.stage = ServerStage.COLLECTING_ADVERTISEMENTS
        self.adverts: dict[str, KeyAdvertisement] = {}
        self.bundles: dict[str, ShareBundle] = {}
        self.masked: dict[str, bytes] = {}
        self.survivors: tuple[str, ...] = ()
        self.dropped: tuple[str, ...] = ()
        self.responses: dict[str, UnmaskResponse] = {}
        self.result: bytes | None = None


class SecAggServer:
    """Server role of one instance. ``identity_keys`` (Ed25519 public key of every
    cohort member), when given, makes signed advertisements mandatory."""

    def __init__(
        self,
        *,
        config: SecAggConfig,
        session: SecAggSession,
        identity_keys: Mapping[str, Ed25519PublicKey] | None = None,
    ) -> None:
        config.check_cohort(session.n)
        self.config = config
        self.session = session
        self._identity_keys = dict(identity_keys) if identity_keys is not None else None
        self._context = crypto.session_context(session, config)
        self._st = _State()

    @property
    def stage(self) -> ServerStage:
        return self._st.stage

    @property
    def checks_identities(self) -> bool:
        """True once advertisements must carry a signature by the member's identity key."""
        return self._identity_keys is not None

    def bind_identity_keys(self, identity_keys: Mapping[str, Ed25519PublicKey]) -> None:
        """Require signed advertisements from now on (a server restored without keys).

        Only while advertisements are still being collected, and only once: keys
        bound are never replaced, so nothing can weaken the check later. Every
        advertisement already held is checked against them first
        (``ProtocolViolation`` if one fails: abort the instance; nothing changes).
        """
        if self._identity_keys is not None:
            raise StateError("identity keys are already bound")
        self._require(ServerStage.COLLECTING_ADVERTISEMENTS, "bind identity keys")
        keys = dict(identity_keys)
        for adv in self._st.adverts.values():
            masking.check_advertisement(
                adv, session=self.session, context=self._context, identity_keys=keys
            )
        self._identity_keys = keys

    def _require(self, stage: ServerStage, action: str) -> None:
        if self._st.stage is not stage:
            raise StateError(f"cannot {action} in stage {self._st.stage.name} (needs {stage.name})")

    def _require_past(self, stage: ServerStage, action: str) -> None:
        if self._st.stage is ServerStage.ABORTED or _ORDER.index(self._st.stage) <= _ORDER.index(
            stage
        ):
            raise StateError(f"cannot {action} in stage {self._st.stage.name}")

    def _header(self) -> dict[str, Any]:
        return {"session_id": self.session.session_id, "round_index": self.session.round_index}

    @staticmethod
    def _duplicate(stored: object, msg: object, device: str) -> bool:
        if stored is None:
            return False
        if stored != msg:
            raise ProtocolViolation(f"{device!r} sent two different messages for one step")
        return True

    # -- round 0 -----------------------------------------------------------------

    def receive_advertisement(self, adv: KeyAdvertisement) -> None:
        self._require(ServerStage.COLLECTING_ADVERTISEMENTS, "accept advertisements")
        masking.check_advertisement(
            adv, session=self.session, context=self._context, identity_keys=self._identity_keys
        )
        if self._duplicate(self._st.adverts.get(adv.device_id), adv, adv.device_id):
            return
        masking.check_roster_keys_unique([*self._st.adverts.values(), adv])
        self._st.adverts[adv.device_id] = adv

    def close_advertisements(self) -> KeyRoster:
        """Fix U1 (every device that advertised) and return the roster to broadcast."""
        self._require(ServerStage.COLLECTING_ADVERTISEMENTS, "close advertisements")
        self._need(len(self._st.adverts), "advertisements")
        self._st.stage = ServerStage.COLLECTING_SHARES
        return self.roster()

    def roster(self) -> KeyRoster:
        self._require_past(ServerStage.COLLECTING_ADVERTISEMENTS, "build the roster")
        advs = tuple(self._st.adverts[d] for d in canonical_order(self._st.adverts))
        return KeyRoster(**self._header(), advertisements=advs)

    # -- round 1 -----------------------------------------------------------------

    def receive_share_bundle(self, bundle: ShareBundle) -> None:
        self._require(ServerStage.COLLECTING_SHARES, "accept share bundles")
        if not isinstance(bundle, ShareBundle):
            raise ProtocolViolation("expected a ShareBundle")
        masking.check_header(bundle, self.session, "share bundle")
        sender = bundle.sender
        if not isinstance(sender, str) or sender not in self._st.adverts:
            raise ProtocolViolation(f"share bundle from {sender!r}, who did not advertise")
        if self._duplicate(self._st.bundles.get(sender), bundle, sender):
            return
        if not isinstance(bundle.shares, tuple | list):
            raise ProtocolViolation("share bundle must carry a sequence of shares")
        recipients = []
        for item in bundle.shares:
            if not isinstance(item, EncryptedShare) or item.sender != sender:
                raise ProtocolViolation(f"share bundle of {sender!r} carries a foreign share")
            if not isinstance(item.nonce, bytes) or len(item.nonce) != crypto.AEAD_NONCE_BYTES:
                raise ProtocolViolation("share nonce must be 12 bytes")
            if not isinstance(item.ciphertext, bytes) or len(item.ciphertext) != _CIPHERTEXT_BYTES:
                raise ProtocolViolation("share ciphertext has the wrong size")
            recipients.append(item.recipient)
        if sorted(recipients, key=str) != sorted(set(self._st.adverts) - {sender}):
            raise ProtocolViolation(f"{sender!r} must send exactly one share to every other device")
        self._st.bundles[sender] = bundle

    def close_shares(self) -> dict[str, ShareDelivery]:
        """Fix U2 (every device that shared) and return each member's delivery."""
        self._require(ServerStage.COLLECTING_SHARES, "close share collection")
        self._need(len(self._st.bundles), "share bundles")
        self._st.stage = ServerStage.COLLECTING_MASKED_INPUTS
        return self.deliveries()

    def deliveries(self) -> dict[str, ShareDelivery]:
        """Per device of U2, the ciphertexts the other members of U2 addressed to it."""
        self._require_past(ServerStage.COLLECTING_SHARES, "route shares")
        shared = canonical_order(self._st.bundles)
        inbox: dict[str, list[EncryptedShare]] = {d: [] for d in shared}
        for sender in shared:
            for share in self._st.bundles[sender].shares:
                if share.recipient in inbox:  # shares for devices outside U2 stay undelivered
                    inbox[share.recipient].append(share)
        return {
            d: ShareDelivery(**self._header(), recipient=d, shares=tuple(items))
            for d, items in inbox.items()
        }

    # -- round 2 -----------------------------------------------------------------

    def receive_masked_input(self, msg: MaskedInput) -> None:
        self._require(ServerStage.COLLECTING_MASKED_INPUTS, "accept masked inputs")
        if not isinstance(msg, MaskedInput):
            raise ProtocolViolation("expected a MaskedInput")
        masking.check_header(msg, self.session, "masked input")
        device = msg.device_id
        if not isinstance(device, str) or device not in self._st.bundles:
            raise ProtocolViolation(f"masked input from {device!r}, who did not share keys")
        words_from_bytes(
            msg.data,
            modulus_bits=self.config.modulus_bits,
            n_words=self.session.total_words(self.config),
        )
        if self._duplicate(self._st.masked.get(device), msg.data, device):
            return
        self._st.masked[device] = msg.data

    def close_masked_inputs(self, *, drop: Iterable[str] = ()) -> UnmaskRequest:
        """Fix U3 (survivors) and return the unmask request for them.

        ``drop`` lets the coordinator exclude devices whose input arrived but
        that it will not count (e.g. judged too late); their masked input is
        discarded, so revealing their mask key exposes nothing.
        Raises TooFewSurvivors (state unchanged) with fewer than ``threshold``.
        """
        self._require(ServerStage.COLLECTING_MASKED_INPUTS, "close masked inputs")
        drop = tuple(drop)
        for device in drop:
            if not isinstance(device, str) or device not in self._st.bundles:
                raise ProtocolViolation(f"cannot drop {device!r}: it did not share keys")
        survivors = canonical_order(set(self._st.masked) - set(drop))
        self._need(len(survivors), "masked inputs")
        dropped = canonical_order(set(self._st.bundles) - set(survivors))
        request = UnmaskRequest(**self._header(), survivors=survivors, dropped=dropped)
        masking.check_unmask_request(
            request, session=self.session, shared=self._st.bundles, threshold=self.config.threshold
        )
        self._st.masked = {d: self._st.masked[d] for d in survivors}
        self._st.survivors, self._st.dropped = survivors, dropped
        self._st.stage = ServerStage.COLLECTING_UNMASK_RESPONSES
        return request

    def unmask_request(self) -> UnmaskRequest:
        self._require(ServerStage.COLLECTING_UNMASK_RESPONSES, "build the unmask request")
        return UnmaskRequest(
            **self._header(), survivors=self._st.survivors, dropped=self._st.dropped
        )

    # -- round 3 -----------------------------------------------------------------

    def receive_unmask_response(self, resp: UnmaskResponse) -> None:
        self._require(ServerStage.COLLECTING_UNMASK_RESPONSES, "accept unmask responses")
        if not isinstance(resp, UnmaskResponse):
            raise ProtocolViolation("expected an UnmaskResponse")
        masking.check_header(resp, self.session, "unmask response")
        device = resp.device_id
        if not isinstance(device, str) or device not in self._st.survivors:
            raise ProtocolViolation(f"unmask response from {device!r}, who is not a survivor")
        if self._duplicate(self._st.responses.get(device), resp, device):
            return
        seeds = self._owners(resp.seed_shares, device)
        keys = self._owners(resp.key_shares, device)
        if set(seeds) & set(keys):
            raise ProtocolViolation(
                f"{device!r} revealed both seed and key shares of {sorted(set(seeds) & set(keys))}"
            )
        if set(seeds) != set(self._st.survivors) or set(keys) != set(self._st.dropped):
            raise ProtocolViolation(f"{device!r} answered a different unmask request")
        self._st.responses[device] = resp

    def _owners(self, items: object, device: str) -> dict[str, Share]:
        if not isinstance(items, tuple | list):
            raise ProtocolViolation("revealed shares must be a sequence")
        out: dict[str, Share] = {}
        x = self.session.x_of(device)
        for item in items:
            owner = getattr(item, "owner", None)
            if not isinstance(owner, str) or owner in out:
                raise ProtocolViolation(f"{device!r} revealed a bad or duplicate owner")
            raw = getattr(item, "share", None)
            if not isinstance(raw, bytes):
                raise ProtocolViolation(f"{device!r} revealed a share that is not bytes")
            share = Share.from_bytes(raw, secret_len=_SECRET)
            if share.x != x:
                raise ProtocolViolation(f"{device!r} revealed a share that is not its own")
            out[owner] = share
        return out

    def finalize(self) -> AggregateResult:
        """Reconstruct, remove the masks and return the sums (TooFewSurvivors below t)."""
        self._require(ServerStage.COLLECTING_UNMASK_RESPONSES, "finalize")
        st, cfg, ses = self._st, self.config, self.session
        self._need(len(st.survivors), "survivors")
        self._need(len(st.responses), "unmask responses")
        if set(st.survivors) & set(st.dropped):
            raise ProtocolViolation("refusing to unmask a device both ways")
        interp = Interpolator((ses.x_of(d) for d in st.responses), threshold=cfg.threshold)
        seeds: dict[str, dict[int, Share]] = {d: {} for d in st.survivors}
        keys: dict[str, dict[int, Share]] = {d: {} for d in st.dropped}
        for device, resp in st.responses.items():
            x = ses.x_of(device)
            for table, items in ((seeds, resp.seed_shares), (keys, resp.key_shares)):
                for item in items:
                    table[item.owner][x] = Share.from_bytes(item.share, secret_len=_SECRET)

        def recover(shares: dict[int, Share]) -> bytes:
            return interp.recover_bytes(shares, length=_SECRET)

        n_words, bits = ses.total_words(cfg), cfg.modulus_bits
        total = np.zeros(n_words, dtype=cfg.dtype)
        for device in st.survivors:
            total = mod_add(
                total,
                words_from_bytes(st.masked[device], modulus_bits=bits, n_words=n_words),
                modulus_bits=bits,
            )
        for device in st.survivors:
            key = crypto.self_mask_key(
                recover(seeds[device]), context=self._context, device_id=device
            )
            total = mod_sub(
                total, masking.mask_stream(key, config=cfg, session=ses), modulus_bits=bits
            )
        for gone in st.dropped:
            private = crypto.load_private(recover(keys[gone]))
            if crypto.public_raw(private) != st.adverts[gone].mask_public_key:
                raise ProtocolViolation(
                    f"reconstructed key of {gone!r} does not match its advertisement"
                )
            for device in st.survivors:
                key = crypto.pairwise_mask_key(
                    private,
                    st.adverts[device].mask_public_key,
                    context=self._context,
                    me=gone,
                    peer=device,
                )
                stream = masking.mask_stream(key, config=cfg, session=ses)
                # the survivor added the stream if it precedes `gone`, else subtracted it
                if masking.adds_pairwise_mask(device, gone):
                    total = mod_sub(total, stream, modulus_bits=bits)
                else:
                    total = mod_add(total, stream, modulus_bits=bits)
        masking.check_sum_range(total, config=cfg, session=ses, n_summands=len(st.survivors))
        st.result = words_to_bytes(total, modulus_bits=bits)
        st.stage = ServerStage.DONE
        st.bundles, st.masked, st.responses = {}, {}, {}
        return self.result()

    def result(self) -> AggregateResult:
        self._require(ServerStage.DONE, "read the result")
        cfg, ses = self.config, self.session
        words = words_from_bytes(
            self._st.result, modulus_bits=cfg.modulus_bits, n_words=ses.total_words(cfg)
        )
        weighted, weight, counts = masking.decode_sum(words, config=cfg, session=ses)
        survivors = self._st.survivors
        return AggregateResult(
            weighted_sum=weighted,
            weight_sum=weight,
            count_sums=counts,
            encoded_sum=words,
            survivors=survivors,
            dropouts=tuple(d for d in ses.cohort if d not in survivors),
        )

    def abort(self) -> None:
        """Give up on this instance and discard everything received."""
        self._st = _State()
        self._st.stage = ServerStage.ABORTED

    def _need(self, count: int, what: str) -> None:
        if count < self.config.threshold:
            raise TooFewSurvivors(f"{count} {what} < threshold {self.config.threshold}")

    # -- persistence -------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Plain-data snapshot (no secrets of devices: ciphertexts and masked words only)."""
        st = self._st
        content = {
            "stage": st.stage.name,
            "advertisements": [state.to_plain(a) for a in st.adverts.values()],
            "bundles": [state.to_plain(b) for b in st.bundles.values()],
            "masked": dict(st.masked),
            "survivors": list(st.survivors),
            "dropped": list(st.dropped),
            "responses": [state.to_plain(r) for r in st.responses.values()],
            "result": st.result,
        }
        return state.seal_state(SERVER_STATE_KIND, self.session, self.config, content)

    def load_state_dict(self, saved: Mapping[str, Any]) -> None:
        """Resume from :meth:`state_dict` by replaying it through the same checks.

        Raises StateError (server unchanged) on another kind, format version,
        session, config or stage, or content that the stage cannot hold.
        """
        saved = state.open_state(
            saved,
            kind=SERVER_STATE_KIND,
            session=self.session,
            config=self.config,
            content_keys=_SERVER_CONTENT,
        )
        stage = state.parse_stage(ServerStage, saved.get("stage"))
        try:
            fresh = self._replay(stage, saved)
        except StateError:
            raise
        except (SecAggError, TypeError, ValueError, KeyError, AttributeError) as exc:
            raise StateError(f"invalid server state for stage {stage.name}: {exc}") from None
        self._st = fresh._st

    def _replay(self, stage: ServerStage, saved: Mapping[str, Any]) -> SecAggServer:
        fresh = SecAggServer(
            config=self.config, session=self.session, identity_keys=self._identity_keys
        )
        if stage is ServerStage.ABORTED:
            fresh.abort()
            _expect_empty(
                saved, ("advertisements", "bundles", "masked", "survivors", "dropped", "responses")
            )
            return fresh
        reached = _ORDER.index(stage)
        for adv in _list(saved, "advertisements"):
            fresh.receive_advertisement(state.from_plain(KeyAdvertisement, adv))
        if reached == 0:
            _expect_empty(saved, ("bundles", "masked", "survivors", "dropped", "responses"))
            return fresh
        fresh.close_advertisements()
        if stage is ServerStage.DONE:
            return _load_done(fresh, saved)
        for bundle in _list(saved, "bundles"):
            fresh.receive_share_bundle(state.from_plain(ShareBundle, bundle))
        if reached == 1:
            _expect_empty(saved, ("masked", "survivors", "dropped", "responses"))
            return fresh
        fresh.close_shares()
        masked = saved.get("masked")
        if not isinstance(masked, dict):
            raise StateError("masked must be a dict")
        for device, data in masked.items():
            fresh.receive_masked_input(MaskedInput(**fresh._header(), device_id=device, data=data))
        if reached == 2:
            _expect_empty(saved, ("survivors", "dropped", "responses"))
            return fresh
        request = fresh.close_masked_inputs()
        if list(request.survivors) != saved.get("survivors") or list(request.dropped) != saved.get(
            "dropped"
        ):
            raise StateError("survivors/dropped do not match the stored masked inputs")
        for resp in _list(saved, "responses"):
            fresh.receive_unmask_response(state.from_plain(UnmaskResponse, resp))
        if saved.get("result") is not None:
            raise StateError("a result before DONE")
        return fresh


def _list(saved: Mapping[str, Any], key: str) -> list[Any]:
    value = saved.get(key)
    if not isinstance(value, list):
        raise StateError(f"{key} must be a list")
    return value


def _expect_empty(saved: Mapping[str, Any], keys: Iterable[str]) -> None:
    for key in keys:
        if saved.get(key):
            raise StateError(f"{key} must be empty in this stage")
    if saved.get("result") is not None:
        raise StateError("a result before DONE")


def _load_done(fresh: SecAggServer, saved: Mapping[str, Any]) -> SecAggServer:
    _expect_empty(
        {k: v for k, v in saved.items() if k != "result"}, ("bundles", "masked", "responses")
    )
    survivors, dropped = saved.get("survivors"), saved.get("dropped")
    if not isinstance(survivors, list) or not isinstance(dropped, list):
        raise StateError("survivors and dropped must be lists")
    if set(survivors) & set(dropped) or not set(survivors) | set(dropped) <= set(fresh._st.adverts):
        raise StateError("survivors/dropped are inconsistent with the roster")
    if len(survivors) < fresh.config.threshold:
        raise StateError("a DONE state with fewer survivors than the threshold")
    result = saved.get("result")
    words = words_from_bytes(
        result,
        modulus_bits=fresh.config.modulus_bits,
        n_words=fresh.session.total_words(fresh.config),
    )
    masking.check_sum_range(
        words, config=fresh.config, session=fresh.session, n_summands=len(survivors)
    )
    fresh._st.survivors = canonical_order(survivors)
    fresh._st.dropped = canonical_order(dropped)
    fresh._st.result = result
    fresh._st.stage = ServerStage.DONE
    return fresh
