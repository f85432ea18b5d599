"""The dataset service's one peer call: which training jobs used a dataset version (TrainerService)."""

from __future__ import annotations

import grpc

from tunery.services.kit.errors import Unavailable
from tunery.services.kit.server import peer_channel
from tunery.services.kit.settings import Settings
from tunery.trainer.v1 import trainer_pb2, trainer_pb2_grpc

TIMEOUT_S = 10.0


class TrainerPeer:
    """A lazily opened channel to the trainer service, authenticated with the service API key."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._channel: grpc.Channel | None = None

    def jobs_using(self, project: str, version_name: str, caller_authorization: str = "", limit: int = 10) -> list[str]:
        """Names of (up to `limit`) training jobs that used the version; UNAVAILABLE when the trainer
        cannot answer, since a version must never be deleted on a guess.

        The service key is used when configured; otherwise the caller's own key (it may act on `project`)."""
        if self._channel is None:
            self._channel = peer_channel(self.settings, self.settings.trainer_target)
        stub = trainer_pb2_grpc.TrainerServiceStub(self._channel)
        authorization = (f"Bearer {self.settings.service_api_key}" if self.settings.service_api_key
                         else caller_authorization)
        try:
            response = stub.ListTrainingJobs(
                trainer_pb2.ListTrainingJobsRequest(parent=f"projects/{project}", dataset_version=version_name,
                                                    page_size=limit),
                timeout=TIMEOUT_S, metadata=[("authorization", authorization)] if authorization else None)
        except grpc.RpcError as error:
            raise Unavailable(f"cannot check whether a training job used {version_name}: the trainer service at "
                              f"{self.settings.trainer_target} answered {error.code().name} ({error.details()}); "
                              "nothing was deleted, retry later", "TRAINER_UNAVAILABLE") from None
        return [job.name for job in response.training_jobs]

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
