"""Secure aggregation for buffered (semi-asynchronous) merges: one instance per buffer fill.

Bonawitz et al. (CCS 2017), semi-honest variant: X25519 pairwise masks
expanded with ChaCha20, a self mask from a fresh 32-byte seed, and t-of-n
Shamir shares (AEAD-encrypted device to device, relayed by the server) so that
any ``threshold`` survivors let the server remove the masks of devices that
dropped. The coordinator fixes the cohort at dispatch; every member masks the
SAME index set (its digest is mandatory and bound into every key). Each device
scales its own update by its weight w_i, clips each coordinate, rounds it
stochastically (uniforms from a fresh ChaCha20 keystream, so rounding is
unbiased noise, not a bias that adds up over the cohort) and appends w_i and its
``count_words`` count words (a one-hot coarse histogram bin or a constant 1,
never a per-device value constant across fills such as a sample count, which
repeated sums would reveal) as extra masked coordinates; masks are generated in
chunks, so a device's masking memory stays near its update's size. The server
range-checks every decoded sum against the clip bound and the survivors.

What the server learns, exactly:

* the sum over the survivors of ``clip(w_i * Delta_i)`` (fixed point, mod 2^k),
  together with ``sum(w_i)`` and the sum of each count word over the same survivors;
* the cohort membership, and who dropped at which step (who advertised, who
  shared keys, whose masked input arrived, who answered the unmask request);
* nothing else: each masked vector it holds is uniform in Z_{2^k} to it, it
  recovers a survivor's self-mask seed or a dropped device's mask key, never
  both for one device, and it refuses to unmask with fewer than ``threshold``
  survivors, where ``threshold >= floor((n + c_max)/2) + 1`` for the configured
  number ``c_max`` of colluding (Sybil) devices (default 1), so even a server
  that asks different devices different questions with their help falls short.

Not covered (documented limits): the active-adversary consistency round of
Bonawitz et al. (a malicious server that also controls devices is out of
scope; identities can be authenticated with Ed25519-signed advertisements);
distributed DP (:mod:`.ddp`: L2 clip, Hadamard rotation, conditional rounding and
Skellam shares added by each device before masking) is a separate step the
device runs on its update before :meth:`SecAggClient.mask_input`.

``fedward.privacy.secagg`` is pure: no I/O, no clock, numpy and cryptography only, and
all randomness comes from an injected ``random_bytes`` (default ``os.urandom``).
"""

from .client import ClientStage, SecAggClient
from .config import (
    WEIGHT_WORDS,
    SecAggConfig,
    SecAggSession,
    canonical_order,
    digest_index_set,
    smallest_modulus_bits,
    threshold_floor,
)
from .errors import (
    ConfigError,
    OverflowRisk,
    ProtocolViolation,
    RangeViolation,
    SecAggError,
    StateError,
    TooFewSurvivors,
)
from .journal import SessionJournal
from .local import ClientInput, DropPoint, LocalRound, LocalRunner, run_local_round
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
from .prg import chacha20_stream
from .server import AggregateResult, SecAggServer, ServerStage

__all__ = [
    "AggregateResult",
    "ClientInput",
    "ClientStage",
    "ConfigError",
    "DropPoint",
    "EncryptedShare",
    "KeyAdvertisement",
    "KeyRoster",
    "LocalRound",
    "LocalRunner",
    "MaskedInput",
    "OverflowRisk",
    "ProtocolViolation",
    "RangeViolation",
    "RevealedShare",
    "SecAggClient",
    "SecAggConfig",
    "SecAggError",
    "SecAggServer",
    "SecAggSession",
    "ServerStage",
    "SessionJournal",
    "ShareBundle",
    "ShareDelivery",
    "StateError",
    "TooFewSurvivors",
    "UnmaskRequest",
    "UnmaskResponse",
    "WEIGHT_WORDS",
    "canonical_order",
    "chacha20_stream",
    "digest_index_set",
    "run_local_round",
    "smallest_modulus_bits",
    "threshold_floor",
]
