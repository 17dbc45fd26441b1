"""The control socket's wire format, shared by server and client.

One connection carries one exchange: the client writes one JSON line `{"op": NAME}`,
the server answers one JSON line `{"ok": true, "data": ...}` or
`{"ok": false, "error": MESSAGE}` and closes. New operations are new `op` names.
"""

from __future__ import annotations

import json
from typing import Any

MAX_REQUEST_BYTES = 4096
"""A request is one small object; anything longer is a wrong client."""

OPS = ("status",)


def encode(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"
