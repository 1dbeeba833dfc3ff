"""Identifier rules shared by topics and message headers.

Study, device, task and subset ids end up inside MQTT topic levels. A ``/``,
``+``, ``#`` or ``$`` in an id would let a device address someone else's
topics or subscribe with wildcards, so ids are restricted to a small,
boring alphabet. Messages and topics use the same rule so anything a
message names can also be routed.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import StringConstraints

ID_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
_ID_RE = re.compile(ID_PATTERN)

Id = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
"""A pydantic-validated identifier (``[A-Za-z0-9_.-]{1,64}``)."""


def is_valid_id(value: object) -> bool:
    """True if ``value`` is a ``str`` matching :data:`ID_PATTERN` exactly."""
    # fullmatch (not match): "$" alone would accept a trailing newline.
    return isinstance(value, str) and _ID_RE.fullmatch(value) is not None
