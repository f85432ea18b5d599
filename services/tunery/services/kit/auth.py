"""API keys: `authorization: Bearer <key>` → the project the caller acts for.

A key reads `tunery_<key id>_<secret>` (both hex). Only the secret's sha256 is stored: secrets are 192
random bits, so a fast hash is as safe as a slow one and keeps every call cheap.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import sqlalchemy as sa

from tunery.services.kit.db import Database
from tunery.services.kit.errors import PermissionDenied, Unauthenticated

MIGRATIONS = Path(__file__).parent / "migrations"
PREFIX = "tunery"

_metadata = sa.MetaData()
api_keys = sa.Table(
    "auth_api_keys", _metadata,
    sa.Column("key_id", sa.String(32), primary_key=True),
    sa.Column("project", sa.String(63), nullable=False),
    sa.Column("admin", sa.Boolean, nullable=False),
    sa.Column("secret_sha256", sa.String(64), nullable=False),
    sa.Column("description", sa.String(256), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
)


@dataclass(frozen=True)
class Principal:
    """Who is calling: a key of one project; an admin key may act on every project."""

    key_id: str
    project: str
    admin: bool = False


@dataclass(frozen=True)
class CreatedKey:
    key_id: str
    project: str
    admin: bool
    key: str  # shown once; never stored


_principal: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("tunery_principal", default=None)


def current_principal() -> Principal:
    principal = _principal.get()
    if principal is None:
        raise Unauthenticated("this call needs an API key: send `authorization: Bearer <key>` metadata")
    return principal


def set_principal(principal: Principal | None) -> contextvars.Token:
    return _principal.set(principal)


def authorize(project: str) -> Principal:
    """The caller, if its key may act on `project`; PERMISSION_DENIED otherwise (one rule everywhere)."""
    principal = current_principal()
    if not principal.admin and principal.project != project:
        raise PermissionDenied(f"the API key {principal.key_id} belongs to project {principal.project!r}, "
                               f"not {project!r}", "PROJECT_MISMATCH", project=project)
    return principal


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class ApiKeyStore:
    def __init__(self, db: Database, cache_ttl_s: float = 5.0, cache_size: int = 1024) -> None:
        self.db = db
        self.cache_ttl_s = cache_ttl_s
        self.cache_size = cache_size
        # key string → (principal, expiry): a verified key skips the database for a few seconds, so a
        # revocation takes effect within cache_ttl_s.
        self._cache: OrderedDict[str, tuple[Principal, float]] = OrderedDict()
        self._lock = threading.Lock()

    def create(self, project: str, admin: bool = False, description: str = "") -> CreatedKey:
        key_id, secret = secrets.token_hex(6), secrets.token_hex(24)
        with self.db.write() as conn:
            conn.execute(api_keys.insert().values(
                key_id=key_id, project=project, admin=admin, secret_sha256=_digest(secret),
                description=description, created_at=datetime.now(timezone.utc)))
        return CreatedKey(key_id, project, admin, f"{PREFIX}_{key_id}_{secret}")

    def list(self, project: str | None = None) -> list[dict]:
        query = sa.select(api_keys.c.key_id, api_keys.c.project, api_keys.c.admin, api_keys.c.description,
                          api_keys.c.created_at, api_keys.c.revoked_at).order_by(api_keys.c.created_at)
        if project:
            query = query.where(api_keys.c.project == project)
        with self.db.read() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    def revoke(self, key_id: str) -> bool:
        with self.db.write() as conn:
            done = conn.execute(api_keys.update().where(api_keys.c.key_id == key_id, api_keys.c.revoked_at.is_(None))
                                .values(revoked_at=datetime.now(timezone.utc))).rowcount
        with self._lock:
            self._cache.clear()
        return bool(done)

    def authenticate(self, key: str) -> Principal:
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(key)
            if hit and hit[1] > now:
                self._cache.move_to_end(key)
                return hit[0]
        parts = key.split("_")
        if len(parts) != 3 or parts[0] != PREFIX:
            raise Unauthenticated("the API key is malformed: expected tunery_<id>_<secret>", "API_KEY_MALFORMED")
        _, key_id, secret = parts
        with self.db.read() as conn:
            row = conn.execute(sa.select(api_keys).where(api_keys.c.key_id == key_id)).first()
        if row is None or row.revoked_at is not None or not hmac.compare_digest(row.secret_sha256, _digest(secret)):
            raise Unauthenticated("the API key is unknown or revoked", "API_KEY_INVALID")
        principal = Principal(row.key_id, row.project, row.admin)
        with self._lock:
            self._cache[key] = (principal, now + self.cache_ttl_s)
            self._cache.move_to_end(key)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return principal
