"""`client.keys`: API-key administration (needs an admin key)."""

from __future__ import annotations

from typing import Iterator

from tunery.auth.v1 import auth_pb2 as pb
from tunery.client._base import SubApi, new_request_id


class Keys(SubApi):
    _service = "auth"  # ApiKeyService answers on every endpoint

    def create(self, project: str, admin: bool = False, description: str = "") -> pb.CreateApiKeyResponse:
        """A new key of `project`; its `secret` is in this response only."""
        return self._call("CreateApiKey", pb.CreateApiKeyRequest(
            parent=f"projects/{project}", request_id=new_request_id(),
            api_key=pb.ApiKey(admin=admin, description=description)))

    def list(self, project: str | None = None) -> Iterator[pb.ApiKey]:
        """Keys newest first, of one project or of all; never their secrets."""
        return self._pages("ListApiKeys", pb.ListApiKeysRequest(parent=f"projects/{project or '-'}"), "api_keys")

    def revoke(self, name: str) -> pb.ApiKey:
        """Revoke `projects/{project}/apiKeys/{key}`: from then on it authenticates nothing."""
        return self._call("RevokeApiKey", pb.RevokeApiKeyRequest(name=name)).api_key
