"""Settings of one edge agent (pydantic: validated once, immutable).

What is here and not on the wire: the model architecture and the optimizer
momentum. A ``Task`` names tensors, epochs, batch size and learning rate, but
not the architecture those tensors belong to nor the momentum, so the
device is provisioned with them (``fedward up`` copies them from the study
spec; ``fedward edge run`` takes them as options).

The device's own privacy budget (``dp_epsilon`` at ``dp_delta`` with
``dp_accountant``) is here too, and only here: the promise is made to the
person wearing the device, so the agent refuses a DP task that would take it
past this budget, whatever the coordinator's ledger says (:mod:`fedward.edge.budget`).
Without ``dp_epsilon`` the agent takes no DP task.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from fedward.privacy.accounting import Accountant
from fedward.privacy.budget import BudgetPolicy
from fedward.protocol.ids import Id
from fedward.protocol.messages import DEFAULT_MAX_MESSAGE_BYTES, DeviceClass
from fedward.tinytrain.models import ModelConfig, ModelKind

PosFloat = Annotated[float, Field(gt=0)]


class AgentSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    device_id: Id
    study_id: Id
    device_class: DeviceClass
    memory_bytes: Annotated[int, Field(gt=0)]
    data_path: Path
    state_dir: Path
    """Holds the key (0600), the outbox and the last full model the device holds."""
    # model (must equal the study's)
    model_kind: ModelKind = ModelKind.CNN
    in_channels: Annotated[int, Field(ge=1)] = 3
    window: Annotated[int, Field(ge=1)] = 500
    num_classes: Annotated[int, Field(ge=2)] = 4
    width: Annotated[int, Field(ge=1)] = 24
    hidden: tuple[Annotated[int, Field(ge=1)], ...] = ()
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9
    # the device's own privacy budget (None: no DP tasks)
    dp_epsilon: PosFloat | None = None
    dp_delta: Annotated[float, Field(gt=0, lt=1)] = 1e-5
    dp_accountant: Accountant = Accountant.RDP
    dp_max_physical_batch_size: Annotated[int, Field(ge=1)] = 16
    """Micro-batch cap of DP-SGD on this device (its memory, not the study's choice)."""
    allow_plain_tasks: bool = False
    """With a DP budget, also train tasks that carry no DP (the owner's choice; off:
    such a task is refused with ``ErrorCode.DP_REQUIRED``, see :mod:`fedward.edge.budget`)."""
    # trust on the wire (fedward.protocol.signing, fedward.protocol.enrolment)
    enrolment_secret: SecretStr | None = None
    """The operator-issued one-time secret for this device id. With it (or once a
    coordinator key is pinned in ``state_dir``) every message the agent sends is
    signed and every message it takes must be signed by the pinned coordinator."""
    audit_public_key: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None
    """The coordinator's audit-log Ed25519 public key (64 hex), provisioned by the
    operator (the public half of the coordinator's audit signing key, the same key
    auditors verify the log with), never learnt from the coordinator at run time. With it the device checks each secure-aggregation
    peer's identity key against the study's enrolment records in the signed audit log
    (:mod:`fedward.edge.peer_evidence`) and leaves a fill whose roster they do not
    prove; without it peer keys are taken on the coordinator's word, and the agent
    says so in its log and :attr:`EdgeAgent.peer_keys_checked`."""
    # timing
    heartbeat_interval_s: PosFloat = 10.0
    enrol_retry_s: PosFloat = 5.0
    resend_after_s: PosFloat = 30.0
    """Re-publish an outbox entry not acknowledged for this long."""
    poll_interval_s: PosFloat = 0.2
    model_wait_s: PosFloat = 60.0
    """How long a task waits for its model frame before it is given up."""
    # limits
    max_message_bytes: Annotated[int, Field(ge=1024)] = DEFAULT_MAX_MESSAGE_BYTES
    model_cache_versions: Annotated[int, Field(ge=1)] = 8
    seen_task_ids: Annotated[int, Field(ge=16)] = 4096

    def budget_policy(self) -> BudgetPolicy | None:
        """The device's own budget, or ``None`` if it was given none (no DP tasks)."""
        if self.dp_epsilon is None:
            return None
        return BudgetPolicy(
            epsilon=self.dp_epsilon, delta=self.dp_delta, accountant=self.dp_accountant
        )

    def model_settings(self) -> ModelConfig:
        return ModelConfig(
            kind=self.model_kind,
            in_channels=self.in_channels,
            window=self.window,
            num_classes=self.num_classes,
            width=self.width,
            hidden=self.hidden,
        )
