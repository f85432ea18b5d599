"""Pagination: opaque, signed page tokens bound to the query they continue."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

from tunery.services.kit.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


def page_size(requested: int) -> int:
    if requested < 0:
        raise InvalidArgument.field("page_size", "must not be negative")
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


class PageTokens:
    """Encodes a position (any JSON value) with the query's fingerprint under an HMAC."""

    def __init__(self, key: str) -> None:
        self._key = hashlib.sha256(key.encode()).digest()

    def _mac(self, body: bytes) -> bytes:
        return hmac.new(self._key, body, hashlib.sha256).digest()[:16]

    def encode(self, position: object, query: object) -> str:
        body = json.dumps({"p": position, "q": _fingerprint(query)}, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(self._mac(body) + body).decode().rstrip("=")

    def decode(self, token: str, query: object) -> object | None:
        """The position a token continues from (None for the first page)."""
        if not token:
            return None
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            mac, body = raw[:16], raw[16:]
            if not hmac.compare_digest(mac, self._mac(body)):
                raise ValueError
            data = json.loads(body)
        except ValueError:
            raise InvalidArgument.field("page_token", "is not a token this server issued", "INVALID_PAGE_TOKEN") from None
        if data.get("q") != _fingerprint(query):
            raise InvalidArgument.field("page_token", "was issued for a different query (filter or parent changed)",
                                        "INVALID_PAGE_TOKEN")
        return data.get("p")


def _fingerprint(query: object) -> str:
    return hashlib.sha256(json.dumps(query, sort_keys=True, default=str).encode()).hexdigest()[:16]
