"""TrainerService over gRPC: requests → service calls → responses. No rules here."""

from __future__ import annotations

from pathlib import Path

import grpc

from tunery.services.kit.server import Runtime
from tunery.services.trainer.peers import Peers
from tunery.services.trainer.repository import Repository
from tunery.services.trainer.scheduler import Scheduler
from tunery.services.trainer.service import TrainerService, job_proto
from tunery.trainer.v1 import trainer_pb2 as pb
from tunery.trainer.v1 import trainer_pb2_grpc

MIGRATIONS = Path(__file__).parent / "migrations"


class TrainerServicer:
    def __init__(self, service: TrainerService) -> None:
        self.service = service

    def CreateTrainingJob(self, request: pb.CreateTrainingJobRequest, context) -> pb.CreateTrainingJobResponse:
        job = self.service.create(request.parent, request.spec, request.request_id)
        return pb.CreateTrainingJobResponse(training_job=job_proto(job))

    def PlanTrainingJob(self, request: pb.PlanTrainingJobRequest, context) -> pb.PlanTrainingJobResponse:
        return pb.PlanTrainingJobResponse(plan=self.service.plan(request.parent, request.spec))

    def GetTrainingJob(self, request: pb.GetTrainingJobRequest, context) -> pb.GetTrainingJobResponse:
        response = pb.GetTrainingJobResponse()
        job_proto(self.service.get(request.name), response.training_job)
        return response

    def ListTrainingJobs(self, request: pb.ListTrainingJobsRequest, context) -> pb.ListTrainingJobsResponse:
        jobs, token = self.service.list(request.parent, request.page_size, request.page_token, request.state,
                                        request.dataset_version)
        return pb.ListTrainingJobsResponse(training_jobs=[job_proto(j) for j in jobs], next_page_token=token)

    def CancelTrainingJob(self, request: pb.CancelTrainingJobRequest, context) -> pb.CancelTrainingJobResponse:
        return pb.CancelTrainingJobResponse(training_job=job_proto(self.service.cancel(request.name)))

    def WatchTrainingJob(self, request: pb.WatchTrainingJobRequest, context):
        for event in self.service.watch(request.name, request.after_seq, context.is_active):
            yield pb.WatchTrainingJobResponse(event=event)

    def ListTrainingJobEvents(self, request: pb.ListTrainingJobEventsRequest,
                              context) -> pb.ListTrainingJobEventsResponse:
        events, token = self.service.list_events(request.parent, request.page_size, request.page_token)
        return pb.ListTrainingJobEventsResponse(events=events, next_page_token=token)

    def ListCheckpoints(self, request: pb.ListCheckpointsRequest, context) -> pb.ListCheckpointsResponse:
        checkpoints, token = self.service.list_checkpoints(request.parent, request.page_size, request.page_token)
        return pb.ListCheckpointsResponse(checkpoints=checkpoints, next_page_token=token)

    def ListBaseModels(self, request: pb.ListBaseModelsRequest, context) -> pb.ListBaseModelsResponse:
        models, token = self.service.list_base_models(request.parent, request.page_size, request.page_token)
        return pb.ListBaseModelsResponse(base_models=models, next_page_token=token)


def setup(runtime: Runtime, server: grpc.Server) -> list[str]:
    """Start the scheduler (recovering jobs of a previous run) and serve TrainerService."""
    peers = Peers(runtime.settings)
    scheduler = Scheduler(runtime.settings, Repository(runtime.db, runtime.objects), peers).start()
    runtime.on_stop.append(scheduler.stop)
    runtime.on_stop.append(peers.close)
    service = TrainerService(runtime, peers, wake=scheduler.wake)
    trainer_pb2_grpc.add_TrainerServiceServicer_to_server(TrainerServicer(service), server)
    return [pb.DESCRIPTOR.services_by_name["TrainerService"].full_name]
