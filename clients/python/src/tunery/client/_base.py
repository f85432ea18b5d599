"""What the sub-APIs share: resource-name parsing, pagination, backoff and the integrity error."""

from __future__ import annotations

import hashlib
import http.client
import re
import time
import urllib.request
import uuid
from typing import Any, BinaryIO, Callable, Iterator, TypeVar

import grpc

from tunery.client.errors import TuneryError, Unavailable
from tunery.client.transport import Transport

T = TypeVar("T")
_ID = re.compile(r"[a-z][a-z0-9-]{0,62}")
READ_BYTES = 1024 * 1024


def new_request_id() -> str:
    """A fresh idempotency key (UUID), as every create request carries."""
    return str(uuid.uuid4())


def check_id(value: str, what: str) -> str:
    """`value` if it is a valid user-chosen id, else ValueError naming `what`."""
    if not _ID.fullmatch(value):
        raise ValueError(f"{what} {value!r} must match [a-z][a-z0-9-]{{0,62}}")
    return value


class SubApi:
    """Base of `client.datasets`, `client.jobs` and `client.models`."""

    _service = ""

    def __init__(self, transport: Transport) -> None:
        self._transport = transport

    @property
    def project(self) -> str:
        return self._transport.config.project

    @property
    def parent(self) -> str:
        """The project resource name: projects/{project}."""
        return f"projects/{self.project}"

    def _call(self, rpc: str, request: Any, timeout_s: float | None = None) -> Any:
        return self._transport.call(self._service, rpc, request, timeout_s)

    def _stream(self, rpc: str, request: Any, timeout_s: float | None = None) -> Iterator[Any]:
        return self._transport.stream(self._service, rpc, request, timeout_s)

    def _pages(self, rpc: str, request: Any, field: str) -> Iterator[Any]:
        """Every item of a paginated List call, fetching pages lazily."""
        while True:
            response = self._call(rpc, request)
            yield from getattr(response, field)
            if not response.next_page_token:
                return
            request.page_token = response.next_page_token


def read_url(url: str, out: BinaryIO, progress: Callable[[int], None] | None = None,
             timeout_s: float = 30.0) -> tuple[int, str] | None:
    """Copy the body of a presigned object-store URL into `out`: (bytes, sha256 hex), or None when the URL
    cannot be read (unreachable, refused, expired, cut off), with `out` emptied again. `progress` gets the
    byte count so far."""
    digest, done = hashlib.sha256(), 0
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            while chunk := response.read(READ_BYTES):
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if progress:
                    progress(done)
    except (OSError, http.client.HTTPException):  # URLError, HTTPError and timeouts are OSErrors
        out.seek(0)
        out.truncate()
        return None
    return done, digest.hexdigest()


def direct_downloads_off(error: TuneryError) -> bool:
    """Whether a Generate*DownloadUrl call failed only because this server hands out no URLs (none
    configured, or a server from before them): the caller then streams the bytes through the service."""
    return error.code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNIMPLEMENTED)


def with_backoff(attempt: int) -> None:
    """Sleep before retry number `attempt` (1-based): 0.2 s doubling up to 5 s."""
    time.sleep(min(0.2 * 2 ** (attempt - 1), 5.0))


def retry_unavailable(action: Callable[[], T], give_up_after_s: float) -> T:
    """Run `action`, repeating it with backoff while the service is UNAVAILABLE, for at most the given time."""
    deadline = time.monotonic() + give_up_after_s
    attempt = 0
    while True:
        try:
            return action()
        except Unavailable:
            attempt += 1
            if time.monotonic() > deadline:
                raise
            with_backoff(attempt)
