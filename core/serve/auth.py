"""Optional bearer-token authentication, compared in constant time and never logged.

Every configured key is compared on every request (no early exit), so the response time
says nothing about which key, or how much of one, a caller guessed.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from crossrank.secrets import Secret


class BearerAuth:
    """Checks ``Authorization: Bearer <token>`` against the configured keys."""

    def __init__(self, keys: Sequence[Secret]) -> None:
        self._keys = tuple(
            value.encode("utf-8") for key in keys if (value := key.resolve_value()) is not None
        )

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def __repr__(self) -> str:
        return f"BearerAuth(keys={len(self._keys)})"

    def allows(self, authorization: str | None) -> bool:
        if not self._keys:
            return True
        if not authorization:
            return False
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer":
            return False
        presented = token.strip().encode("utf-8")
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(presented, key)
        return matched
