"""The object store: any S3 endpoint through the `minio` SDK. One bucket; each service owns a key prefix."""

from __future__ import annotations

import io
import sys
from concurrent.futures import ThreadPoolExecutor, wait
from datetime import timedelta
from typing import Iterable, Iterator, TypeVar
from urllib.parse import urlsplit

import urllib3
from minio import Minio
from minio.commonconfig import ComposeSource, CopySource
from minio.deleteobjects import DeleteObject
from minio.error import S3Error

from tunery.services.kit.errors import FailedPrecondition, NotFound, Unavailable
from tunery.services.kit.settings import Settings

PART_SIZE = 16 * 1024 * 1024  # multipart part size: bounds memory per streaming upload
READ_SIZE = 1024 * 1024
DOWNLOAD_URL_TTL = timedelta(minutes=15)  # a GET only has to start before then


def download_chunk_size(max_message_bytes: int) -> int:
    """Bytes per message of a download stream: just under 4 MiB (fewer, larger messages cost less in gRPC
    and Python than 1 MiB ones), so a message with its framing fits gRPC's default 4 MiB receive limit,
    which generated clients keep; less where the server's own message limit is lower."""
    return min(4 * 1024 * 1024 - 64 * 1024, max_message_bytes // 2)


T = TypeVar("T")


def read_ahead(items: Iterator[T]) -> Iterator[T]:
    """The items of `items`, the next one fetched by a helper thread while the caller handles the current one
    (a download then reads from the object store while it sends: sockets and hashing release the GIL)."""
    with ThreadPoolExecutor(1, thread_name_prefix="read-ahead") as reader:
        pending = reader.submit(next, items, None)
        try:
            while (item := pending.result()) is not None:
                pending = reader.submit(next, items, None)
                yield item
        finally:  # also when the caller stops early: let the fetch in flight end, then close the source
            wait([pending])
            close = getattr(items, "close", None)
            if close:
                close()


class _ChunkReader(io.RawIOBase):
    """A file-like view of an iterator of byte chunks, for minio's streaming put. `read` fills the whole
    request with one join: minio asks for a part at a time and appends the pieces each read returns."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        pieces, left = [], size if size >= 0 else sys.maxsize
        while left:
            if not self._pending:
                chunk = next(self._chunks, None)
                if chunk is None:
                    break
                self._pending = memoryview(chunk)
            piece = self._pending[:left]
            self._pending = self._pending[len(piece):]
            left -= len(piece)
            pieces.append(piece)
        return b"".join(pieces)


def _public_signer(settings: Settings) -> Minio | None:
    """A client that only signs URLs for the store's public address. With its region given, signing sends
    no request (the public address need not be reachable from here)."""
    if not settings.s3_public_url:
        return None
    url = urlsplit(settings.s3_public_url)
    if url.scheme not in ("http", "https") or not url.netloc or url.path.strip("/") or url.query:
        raise ValueError(f"TUNERY_S3_PUBLIC_URL={settings.s3_public_url!r} must read http(s)://host[:port]")
    return Minio(url.netloc, access_key=settings.s3_access_key, secret_key=settings.s3_secret_key,
                 secure=url.scheme == "https", region=settings.s3_region or "us-east-1")


class ObjectStore:
    def __init__(self, settings: Settings) -> None:
        if not settings.s3_endpoint:
            raise ValueError("TUNERY_S3_ENDPOINT is not set")
        # Short connect timeouts and few retries: a dead store must show as UNAVAILABLE within seconds.
        http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=3, read=60), maxsize=16,
                                   retries=urllib3.Retry(total=2, backoff_factor=0.2,
                                                         status_forcelist=[500, 502, 503, 504]))
        self.client = Minio(settings.s3_endpoint, access_key=settings.s3_access_key,
                            secret_key=settings.s3_secret_key, secure=settings.s3_secure,
                            region=settings.s3_region or None, http_client=http)
        self.bucket = settings.s3_bucket
        self.public = _public_signer(settings)

    def download_url(self, key: str) -> str:
        """A presigned URL that reads the object straight from the store for DOWNLOAD_URL_TTL from now;
        FAILED_PRECONDITION when there is no address of the store for clients (TUNERY_S3_PUBLIC_URL)."""
        if self.public is None:
            raise FailedPrecondition("direct downloads are off: this service knows no object-store address for "
                                     "clients (TUNERY_S3_PUBLIC_URL); use the streaming download",
                                     "DIRECT_DOWNLOAD_UNAVAILABLE")
        return self.public.presigned_get_object(self.bucket, key, expires=DOWNLOAD_URL_TTL)

    def ensure_bucket(self) -> None:
        with _unavailable():
            if not self.client.bucket_exists(self.bucket):
                try:
                    self.client.make_bucket(self.bucket)
                except S3Error as e:  # another replica made it first
                    if e.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                        raise

    def ping(self) -> None:
        with _unavailable():
            self.client.bucket_exists(self.bucket)

    def put(self, key: str, chunks: Iterable[bytes], content_type: str = "application/octet-stream") -> None:
        """Stream chunks into one object; memory stays at one part whatever the size."""
        with _unavailable():
            self.client.put_object(self.bucket, key, _ChunkReader(chunks), length=-1, part_size=PART_SIZE,
                                   content_type=content_type)

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        with _unavailable():
            self.client.put_object(self.bucket, key, io.BytesIO(data), len(data), content_type=content_type)

    def get(self, key: str, offset: int = 0, chunk_size: int = READ_SIZE) -> Iterator[bytes]:
        """The object's stored bytes in chunks (from `offset`), each read straight from the socket."""
        with _unavailable():
            response = self.client.get_object(self.bucket, key, offset=offset)
        try:
            with _unavailable():
                yield from response.stream(chunk_size, decode_content=False)
        finally:
            response.close()
            response.release_conn()

    def get_bytes(self, key: str) -> bytes:
        return b"".join(self.get(key))

    def size(self, key: str) -> int:
        with _unavailable():
            return self.client.stat_object(self.bucket, key).size

    def exists(self, key: str) -> bool:
        try:
            self.size(key)
            return True
        except NotFound:
            return False

    def copy(self, source: str, destination: str) -> None:
        """Server-side copy: the bytes never pass through this process."""
        with _unavailable():
            self.client.copy_object(self.bucket, destination, CopySource(self.bucket, source))

    def compose(self, sources: list[str], destination: str) -> None:
        """Server-side concatenation of objects (each but the last at least 5 MiB, as S3 requires)."""
        with _unavailable():
            self.client.compose_object(self.bucket, destination, [ComposeSource(self.bucket, s) for s in sources])

    def list(self, prefix: str) -> list[str]:
        with _unavailable():
            return [o.object_name for o in self.client.list_objects(self.bucket, prefix=prefix, recursive=True)]

    def remove(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        if not keys:
            return
        with _unavailable():
            errors = list(self.client.remove_objects(self.bucket, [DeleteObject(k) for k in keys]))
        if errors:
            raise Unavailable(f"could not delete {len(errors)} objects: {errors[0]}")

    def remove_prefix(self, prefix: str) -> None:
        self.remove(self.list(prefix))


class _unavailable:
    """Maps transport failures to UNAVAILABLE and a missing key to NOT_FOUND."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, error, _tb) -> bool:
        if error is None:
            return False
        if isinstance(error, S3Error) and error.code in ("NoSuchKey", "NoSuchObject"):
            raise NotFound(f"object {error.object_name or ''} does not exist", "OBJECT_NOT_FOUND") from error
        if isinstance(error, (urllib3.exceptions.HTTPError, OSError)) or (
                isinstance(error, S3Error) and error.code in ("ServiceUnavailable", "SlowDown", "InternalError")):
            raise Unavailable("the object store cannot be reached; retry later", "OBJECT_STORE_UNAVAILABLE") from error
        return False
