"""Typed exceptions for every failed call, built from the server's google.rpc.Status.

Callers catch `tunery.client.NotFound`, `InvalidArgument` … and never see a raw grpc.RpcError.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


@dataclass(frozen=True)
class FieldViolation:
    field: str  # e.g. "spec.hyperparameters.epochs" or "line 12: messages[2].role"
    description: str


class TuneryError(Exception):
    """A call failed. `code` is the gRPC status code name; `reason` the stable ErrorInfo reason."""

    def __init__(self, code: grpc.StatusCode, message: str, reason: str = "", metadata: dict | None = None,
                 field_violations: tuple[FieldViolation, ...] = (), quota_violations: tuple[str, ...] = (),
                 request_id: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason
        self.metadata = metadata or {}
        self.field_violations = field_violations
        self.quota_violations = quota_violations
        self.request_id = request_id

    def __str__(self) -> str:
        text = f"{self.code.name}: {self.message}"
        for v in self.field_violations[:20]:
            text += f"\n  {v.field}: {v.description}"
        if len(self.field_violations) > 20:
            text += f"\n  … and {len(self.field_violations) - 20} more"
        return text


class InvalidArgument(TuneryError): ...
class NotFound(TuneryError): ...
class AlreadyExists(TuneryError): ...
class FailedPrecondition(TuneryError): ...
class Aborted(TuneryError): ...
class ResourceExhausted(TuneryError): ...
class Unauthenticated(TuneryError): ...
class PermissionDenied(TuneryError): ...
class Unavailable(TuneryError): ...
class DeadlineExceeded(TuneryError): ...
class Cancelled(TuneryError): ...
class Internal(TuneryError): ...


class DataLoss(TuneryError):
    """Bytes do not match their recorded sha256 or size (sent by the server, or found by the SDK while
    downloading, in which case nothing was written)."""

    @classmethod
    def digest_mismatch(cls, message: str) -> "DataLoss":
        return cls(grpc.StatusCode.DATA_LOSS, message, "DIGEST_MISMATCH")


_BY_CODE = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument, grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists, grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.ABORTED: Aborted, grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated, grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAVAILABLE: Unavailable, grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.CANCELLED: Cancelled, grpc.StatusCode.DATA_LOSS: DataLoss,
}


def from_rpc_error(error: grpc.RpcError) -> TuneryError:
    """The typed exception for a failed call, with ErrorInfo / BadRequest / QuotaFailure unpacked."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    message = error.details() if hasattr(error, "details") else str(error)
    reason, metadata, fields, quotas = "", {}, [], []
    status = rpc_status.from_call(error) if hasattr(error, "trailing_metadata") else None
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason, metadata = info.reason, dict(info.metadata)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields = [FieldViolation(v.field, v.description) for v in bad.field_violations]
        elif detail.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
            quota = error_details_pb2.QuotaFailure()
            detail.Unpack(quota)
            quotas = [f"{v.subject}: {v.description}" for v in quota.violations]
    request_id = ""
    if hasattr(error, "initial_metadata"):
        request_id = dict(error.initial_metadata() or ()).get("x-request-id", "")
    return _BY_CODE.get(code, Internal)(code, message or code.name, reason, metadata, tuple(fields), tuple(quotas),
                                        request_id)
