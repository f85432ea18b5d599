"""API keys: `authorization: Bearer <secret>` → the project the caller acts for.

A secret reads `tk_` + 43 URL-safe characters (256 random bits). Only its sha256 is stored and looked
up directly: with that much entropy a fast hash is as safe as a slow one and keeps every call cheap.
"""

from __future__ import annotations

import contextvars
import hashlib
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import sqlalchemy as sa

from tunery.services.kit.db import Database
from tunery.services.kit.errors import NotFound, PermissionDenied, Unauthenticated

MIGRATIONS = Path(__file__).parent / "migrations"
SECRET_PREFIX = "tk_"

_metadata = sa.MetaData()
api_keys = sa.Table(
    "auth_api_keys", _metadata,
    sa.Column("key_id", sa.String(32), primary_key=True),
    sa.Column("project", sa.String(63), nullable=False),
    sa.Column("admin", sa.Boolean, nullable=False),
    sa.Column("secret_sha256", sa.String(64), nullable=False, unique=True),
    sa.Column("secret_prefix", sa.String(8), nullable=False),
    sa.Column("description", sa.String(200), nullable=False),
    sa.Column("request_id", sa.String(64), nullable=True, unique=True),
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
    secret: str  # shown once, never stored; empty when a create was replayed


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


def require_admin() -> Principal:
    principal = current_principal()
    if not principal.admin:
        raise PermissionDenied("this call needs an admin API key", "ADMIN_KEY_REQUIRED")
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

    def create(self, project: str, admin: bool = False, description: str = "",
               request_id: str | None = None) -> CreatedKey:
        """A new key; a replayed request_id returns the key it created, without its secret."""
        if request_id:
            with self.db.read() as conn:
                row = conn.execute(sa.select(api_keys).where(api_keys.c.request_id == request_id)).first()
            if row is not None:
                return CreatedKey(row.key_id, row.project, row.admin, "")
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        return self._insert(secret, project, admin, description, request_id)

    def ensure(self, secret: str, project: str, admin: bool, description: str) -> None:
        """Install a key whose secret was made elsewhere (a deployment's bootstrap admin key)."""
        if not secret.startswith(SECRET_PREFIX) or len(secret) < 24:
            raise ValueError("a bootstrap key must read tk_ followed by at least 21 random characters")
        with self.db.read() as conn:
            known = conn.execute(sa.select(api_keys.c.key_id).where(
                api_keys.c.secret_sha256 == _digest(secret))).first()
        if known is None:
            self._insert(secret, project, admin, description, None)

    def _insert(self, secret: str, project: str, admin: bool, description: str,
                request_id: str | None) -> CreatedKey:
        key_id = f"key-{secrets.token_hex(6)}"
        with self.db.write() as conn:
            conn.execute(api_keys.insert().values(
                key_id=key_id, project=project, admin=admin, secret_sha256=_digest(secret),
                secret_prefix=secret[len(SECRET_PREFIX):][:8], description=description, request_id=request_id,
                created_at=datetime.now(timezone.utc)))
        return CreatedKey(key_id, project, admin, secret)

    def list(self, project: str | None = None) -> list[sa.Row]:
        """Keys newest first (of one project, or all), without anything secret."""
        query = sa.select(api_keys).order_by(api_keys.c.created_at.desc(), api_keys.c.key_id)
        if project:
            query = query.where(api_keys.c.project == project)
        with self.db.read() as conn:
            return list(conn.execute(query))

    def get(self, key_id: str) -> sa.Row:
        with self.db.read() as conn:
            row = conn.execute(sa.select(api_keys).where(api_keys.c.key_id == key_id)).first()
        if row is None:
            raise NotFound(f"API key {key_id} does not exist", "API_KEY_NOT_FOUND", key=key_id)
        return row

    def revoke(self, key_id: str) -> sa.Row:
        """Revoke a key (a no-op when it already is) and forget every cached verification."""
        self.get(key_id)
        with self.db.write() as conn:
            conn.execute(api_keys.update().where(api_keys.c.key_id == key_id, api_keys.c.revoked_at.is_(None))
                         .values(revoked_at=datetime.now(timezone.utc)))
        with self._lock:
            self._cache.clear()
        return self.get(key_id)

    def authenticate(self, secret: str) -> Principal:
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(secret)
            if hit and hit[1] > now:
                self._cache.move_to_end(secret)
                return hit[0]
        if not secret.startswith(SECRET_PREFIX):
            raise Unauthenticated("the API key is malformed: keys start with tk_", "API_KEY_MALFORMED")
        with self.db.read() as conn:
            row = conn.execute(sa.select(api_keys).where(api_keys.c.secret_sha256 == _digest(secret))).first()
        if row is None or row.revoked_at is not None:
            raise Unauthenticated("the API key is unknown or revoked", "API_KEY_INVALID")
        principal = Principal(row.key_id, row.project, row.admin)
        with self._lock:
            self._cache[secret] = (principal, now + self.cache_ttl_s)
            self._cache.move_to_end(secret)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return principal
