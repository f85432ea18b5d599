"""The one server interceptor: request ids, authentication, call logs and the error → status mapping.

Handlers never set status codes: they raise kit errors (or anything else) and this module answers.
"""

from __future__ import annotations

import time
import uuid
from contextlib import contextmanager
from typing import Callable, Iterator

import grpc
import sqlalchemy.exc
import structlog
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from tunery.services.kit import auth
from tunery.services.kit.errors import (DOMAIN, InvalidArgument, ResourceExhausted, TuneryError, Unauthenticated,
                                         Unavailable)

log = structlog.get_logger("tunery.rpc")

# Probes and discovery must work without a key.
PUBLIC_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")


def status_of(error: TuneryError) -> status_pb2.Status:
    """The google.rpc.Status for a domain error: ErrorInfo always, BadRequest / QuotaFailure when present."""
    details = [error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN, metadata=error.metadata)]
    if isinstance(error, InvalidArgument) and error.violations:
        details.append(error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=f, description=d) for f, d in error.violations]))
    if isinstance(error, ResourceExhausted) and error.quota_violations:
        details.append(error_details_pb2.QuotaFailure(violations=[
            error_details_pb2.QuotaFailure.Violation(subject=s, description=d) for s, d in error.quota_violations]))
    packed = []
    for detail in details:
        any_detail = any_pb2.Any()
        any_detail.Pack(detail)
        packed.append(any_detail)
    return status_pb2.Status(code=error.code.value[0], message=error.message, details=packed)


def as_domain_error(error: BaseException) -> TuneryError | None:
    """Failures of our dependencies that callers should see as UNAVAILABLE rather than INTERNAL."""
    if isinstance(error, TuneryError):
        return error
    if isinstance(error, sqlalchemy.exc.OperationalError) or (
            isinstance(error, sqlalchemy.exc.DBAPIError) and error.connection_invalidated):
        return Unavailable("the metadata database cannot be reached; retry later", "DATABASE_UNAVAILABLE")
    if isinstance(error, grpc.RpcError) and error.code() in (grpc.StatusCode.UNAVAILABLE,
                                                             grpc.StatusCode.DEADLINE_EXCEEDED):
        return Unavailable(f"a Tunery service this call needs did not answer: {error.details()}",
                           "PEER_UNAVAILABLE")
    return None


class ServerInterceptor(grpc.ServerInterceptor):
    def __init__(self, keys: auth.ApiKeyStore) -> None:
        self.keys = keys

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if handler is None:
            return None
        method = details.method
        metadata = details.invocation_metadata

        def wrap(behavior: Callable, streaming_response: bool) -> Callable:
            if streaming_response:
                def stream(request, context):
                    with self._call(method, metadata, context):
                        yield from behavior(request, context)
                return stream

            def unary(request, context):
                with self._call(method, metadata, context):
                    return behavior(request, context)
            return unary

        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(wrap(handler.unary_unary, False),
                                                       handler.request_deserializer, handler.response_serializer)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(wrap(handler.unary_stream, True),
                                                        handler.request_deserializer, handler.response_serializer)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(wrap(handler.stream_unary, False),
                                                        handler.request_deserializer, handler.response_serializer)
        return grpc.stream_stream_rpc_method_handler(wrap(handler.stream_stream, True),
                                                     handler.request_deserializer, handler.response_serializer)

    @contextmanager
    def _call(self, method: str, metadata, context: grpc.ServicerContext) -> Iterator[None]:
        values = {k: v for k, v in (metadata or ())}
        request_id = values.get("x-request-id") or uuid.uuid4().hex
        context.send_initial_metadata((("x-request-id", request_id),))
        started = time.perf_counter()
        code = "OK"
        public = method.startswith(PUBLIC_PREFIXES)
        token = None
        # Bound and unbound directly: bound_contextvars would also save and restore earlier values, and a
        # handler thread has none.
        structlog.contextvars.bind_contextvars(request_id=request_id, rpc=method)
        try:
            if not public:
                token = auth.set_principal(self._authenticate(values.get("authorization", "")))
            yield
        except Exception as error:  # noqa: BLE001 - every failure leaves here as a status
            domain = as_domain_error(error)
            if domain is None:
                log.exception("rpc.internal_error")
                domain = TuneryError("internal error; the server logs hold the details (request id "
                                     f"{request_id})")
            code = domain.code.name
            context.abort_with_status(rpc_status.to_status(status_of(domain)))
        finally:
            if token is not None:
                auth.set_principal(None)
                structlog.contextvars.unbind_contextvars("key_id")
            if not public:
                log.info("rpc.finished", code=code, duration_ms=round((time.perf_counter() - started) * 1000, 2))
            structlog.contextvars.unbind_contextvars("request_id", "rpc")

    def _authenticate(self, header: str) -> auth.Principal:
        if not header:
            raise Unauthenticated("this call needs an API key: send `authorization: Bearer <key>` metadata",
                                  "API_KEY_MISSING")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise Unauthenticated("the authorization metadata must read `Bearer <key>`", "API_KEY_MALFORMED")
        principal = self.keys.authenticate(key.strip())
        structlog.contextvars.bind_contextvars(key_id=principal.key_id)
        return principal
