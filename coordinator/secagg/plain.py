"""Bytes inside a fill's saved state, as JSON-ready text.

A ``SecAggServer.state_dict`` holds bytes (session id, public keys, relayed
ciphertexts, revealed shares); the engine's state must be plain JSON, so each
bytes value becomes ``{"$b64": "..."}`` and back. Only a str under that single
key is read as bytes, so a device id (a dict key) never clashes with the tag.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from ..errors import StateLoadError

TAG = "$b64"


def to_json(value: Any) -> Any:
    if isinstance(value, bytes):
        return {TAG: base64.b64encode(value).decode("ascii")}
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    return value


def from_json(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {TAG} and isinstance(value[TAG], str):
            try:
                return base64.b64decode(value[TAG].encode("ascii"), validate=True)
            except (binascii.Error, UnicodeEncodeError) as exc:
                raise StateLoadError(f"a saved fill holds bad base64: {exc}") from exc
        return {k: from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_json(v) for v in value]
    return value
