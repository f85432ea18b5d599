"""Domain errors. Services raise these; the interceptor alone turns them into status codes and details."""

from __future__ import annotations

from typing import Iterable

import grpc

DOMAIN = "tunery.dev"


class TuneryError(Exception):
    """An error meant for the caller: a code, a stable reason and a message that says what to do."""

    code = grpc.StatusCode.INTERNAL
    default_reason = "INTERNAL"

    def __init__(self, message: str, reason: str | None = None, **metadata: object) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata = {k: str(v) for k, v in metadata.items()}


class InvalidArgument(TuneryError):
    """Bad input. `violations` are (field, description) pairs sent as BadRequest field violations."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = "INVALID_ARGUMENT"

    def __init__(self, message: str, reason: str | None = None,
                 violations: Iterable[tuple[str, str]] = (), **metadata: object) -> None:
        super().__init__(message, reason, **metadata)
        self.violations = list(violations)

    @classmethod
    def field(cls, field: str, description: str, reason: str = "INVALID_FIELD") -> "InvalidArgument":
        return cls(f"{field}: {description}", reason, [(field, description)], field=field)


class NotFound(TuneryError):
    code = grpc.StatusCode.NOT_FOUND
    default_reason = "NOT_FOUND"


class AlreadyExists(TuneryError):
    code = grpc.StatusCode.ALREADY_EXISTS
    default_reason = "ALREADY_EXISTS"


class FailedPrecondition(TuneryError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    default_reason = "FAILED_PRECONDITION"


class Aborted(TuneryError):
    """An optimistic-concurrency conflict (stale etag): read again and retry."""

    code = grpc.StatusCode.ABORTED
    default_reason = "ETAG_MISMATCH"


class ResourceExhausted(TuneryError):
    """A limit or quota. `quota_violations` are (subject, description) pairs sent as QuotaFailure."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = "LIMIT_EXCEEDED"

    def __init__(self, message: str, reason: str | None = None,
                 quota_violations: Iterable[tuple[str, str]] = (), **metadata: object) -> None:
        super().__init__(message, reason, **metadata)
        self.quota_violations = list(quota_violations)


class Unavailable(TuneryError):
    """A dependency (database, object store, another service) cannot be reached; retrying may help."""

    code = grpc.StatusCode.UNAVAILABLE
    default_reason = "DEPENDENCY_UNAVAILABLE"


class Unauthenticated(TuneryError):
    code = grpc.StatusCode.UNAUTHENTICATED
    default_reason = "UNAUTHENTICATED"


class PermissionDenied(TuneryError):
    code = grpc.StatusCode.PERMISSION_DENIED
    default_reason = "PERMISSION_DENIED"


class Cancelled(TuneryError):
    code = grpc.StatusCode.CANCELLED
    default_reason = "CANCELLED"


class DataLoss(TuneryError):
    """Stored bytes no longer match their recorded digest: nothing a retry can fix."""

    code = grpc.StatusCode.DATA_LOSS
    default_reason = "DIGEST_MISMATCH"
