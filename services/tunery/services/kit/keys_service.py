"""ApiKeyService (tunery.auth.v1): key administration, served by every Tunery service endpoint."""

from __future__ import annotations

import grpc
from google.protobuf import timestamp_pb2
from tunery.auth.v1 import auth_pb2, auth_pb2_grpc

from tunery.services.kit import auth, names, paging
from tunery.services.kit.errors import InvalidArgument
from tunery.services.kit.paging import PageTokens

SERVICE_NAME = auth_pb2.DESCRIPTOR.services_by_name["ApiKeyService"].full_name


def _timestamp(value) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def to_proto(row) -> auth_pb2.ApiKey:
    return auth_pb2.ApiKey(
        name=f"projects/{row.project}/apiKeys/{row.key_id}", description=row.description, admin=row.admin,
        state=auth_pb2.API_KEY_STATE_REVOKED if row.revoked_at else auth_pb2.API_KEY_STATE_ACTIVE,
        secret_prefix=row.secret_prefix, create_time=_timestamp(row.created_at),
        revoke_time=_timestamp(row.revoked_at))


class ApiKeyServicer:
    def __init__(self, keys: auth.ApiKeyStore, tokens: PageTokens) -> None:
        self.keys = keys
        self.tokens = tokens

    def CreateApiKey(self, request, context):
        auth.require_admin()
        project = names.parse(request.parent, "projects/{project}", field="parent")["project"]
        if len(request.api_key.description) > 200:
            raise InvalidArgument.field("api_key.description", "must be at most 200 characters")
        created = self.keys.create(project, request.api_key.admin, request.api_key.description,
                                   request.request_id or None)
        return auth_pb2.CreateApiKeyResponse(api_key=to_proto(self.keys.get(created.key_id)), secret=created.secret)

    def ListApiKeys(self, request, context):
        auth.require_admin()
        project = None if request.parent == "projects/-" else \
            names.parse(request.parent, "projects/{project}", field="parent")["project"]
        rows = self.keys.list(project)
        if request.state == auth_pb2.API_KEY_STATE_ACTIVE:
            rows = [r for r in rows if r.revoked_at is None]
        elif request.state == auth_pb2.API_KEY_STATE_REVOKED:
            rows = [r for r in rows if r.revoked_at is not None]
        query = {"parent": request.parent, "state": request.state}
        start = self.tokens.decode(request.page_token, query) or 0
        size = paging.page_size(request.page_size)
        page = rows[start:start + size]
        token = self.tokens.encode(start + size, query) if start + size < len(rows) else ""
        return auth_pb2.ListApiKeysResponse(api_keys=[to_proto(r) for r in page], next_page_token=token)

    def RevokeApiKey(self, request, context):
        auth.require_admin()
        key_id = names.parse(request.name, "projects/{project}/apiKeys/{key}", field="name",
                             key=r"key-[0-9a-f]{12}")["key"]
        return auth_pb2.RevokeApiKeyResponse(api_key=to_proto(self.keys.revoke(key_id)))


def add_to_server(server: grpc.Server, keys: auth.ApiKeyStore, tokens: PageTokens) -> str:
    auth_pb2_grpc.add_ApiKeyServiceServicer_to_server(ApiKeyServicer(keys, tokens), server)
    return SERVICE_NAME
