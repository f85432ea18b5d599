"""Every RPC of every service refuses a call without a key and a key of another project.

The RPCs are enumerated from the service descriptors, so a new RPC without a request here fails the test.
"""

from __future__ import annotations

import importlib

import grpc
import pytest

from service_fixtures import fails, running_stack
from tunery.dataset.v1 import dataset_pb2
from tunery.registry.v1 import registry_pb2
from tunery.trainer.v1 import trainer_pb2

P = "projects/beta"
DATASET, VERSION = f"{P}/datasets/d", f"{P}/datasets/d/versions/0123456789abcdef"
UPLOAD_ID = "0b7e4c9a-8f3d-4e21-9c55-2a1d6f0e7b13"
JOB, MODEL, MODEL_VERSION = f"{P}/trainingJobs/job-0123456789ab", f"{P}/models/m", f"{P}/models/m/versions/1"

# A request aimed at project beta for each RPC (streams: the list of messages the client sends).
REQUESTS = {
    "tunery.dataset.v1.DatasetService": {
        "CreateDataset": dataset_pb2.CreateDatasetRequest(parent=P, dataset_id="d"),
        "GetDataset": dataset_pb2.GetDatasetRequest(name=DATASET),
        "ListDatasets": dataset_pb2.ListDatasetsRequest(parent=P),
        "DeleteDataset": dataset_pb2.DeleteDatasetRequest(name=DATASET),
        "UploadDatasetVersion": [dataset_pb2.UploadDatasetVersionRequest(
            header=dataset_pb2.UploadDatasetVersionHeader(dataset=DATASET, request_id=UPLOAD_ID)),
            dataset_pb2.UploadDatasetVersionRequest(chunk=b'{"text": "x"}\n')],
        "GetDatasetUpload": dataset_pb2.GetDatasetUploadRequest(name=f"{DATASET}/uploads/{UPLOAD_ID}"),
        "ValidateDataset": [dataset_pb2.ValidateDatasetRequest(header=dataset_pb2.ValidateDatasetHeader(parent=P)),
                            dataset_pb2.ValidateDatasetRequest(chunk=b'{"text": "x"}\n')],
        "GetDatasetVersion": dataset_pb2.GetDatasetVersionRequest(name=VERSION),
        "ListDatasetVersions": dataset_pb2.ListDatasetVersionsRequest(parent=DATASET),
        "DeleteDatasetVersion": dataset_pb2.DeleteDatasetVersionRequest(name=VERSION),
        "DownloadDatasetVersion": dataset_pb2.DownloadDatasetVersionRequest(name=VERSION),
        "GenerateDatasetVersionDownloadUrl": dataset_pb2.GenerateDatasetVersionDownloadUrlRequest(name=VERSION),
        "ListDatasetExamples": dataset_pb2.ListDatasetExamplesRequest(parent=VERSION),
    },
    "tunery.trainer.v1.TrainerService": {
        "CreateTrainingJob": trainer_pb2.CreateTrainingJobRequest(parent=P, spec=trainer_pb2.TrainingJobSpec(
            base_model="tiny-llama", training_data=VERSION, output_model="m")),
        "PlanTrainingJob": trainer_pb2.PlanTrainingJobRequest(parent=P, spec=trainer_pb2.TrainingJobSpec(
            base_model="tiny-llama", training_data=VERSION, output_model="m")),
        "GetTrainingJob": trainer_pb2.GetTrainingJobRequest(name=JOB),
        "ListTrainingJobs": trainer_pb2.ListTrainingJobsRequest(parent=P),
        "CancelTrainingJob": trainer_pb2.CancelTrainingJobRequest(name=JOB),
        "WatchTrainingJob": trainer_pb2.WatchTrainingJobRequest(name=JOB),
        "ListTrainingJobEvents": trainer_pb2.ListTrainingJobEventsRequest(parent=JOB),
        "ListCheckpoints": trainer_pb2.ListCheckpointsRequest(parent=JOB),
        "ListBaseModels": trainer_pb2.ListBaseModelsRequest(parent=P),
    },
    "tunery.registry.v1.ModelRegistryService": {
        "CreateModel": registry_pb2.CreateModelRequest(parent=P, model_id="m"),
        "GetModel": registry_pb2.GetModelRequest(name=MODEL),
        "ListModels": registry_pb2.ListModelsRequest(parent=P),
        "UpdateModel": registry_pb2.UpdateModelRequest(model=registry_pb2.Model(name=MODEL)),
        "DeleteModel": registry_pb2.DeleteModelRequest(name=MODEL),
        "CreateModelVersion": registry_pb2.CreateModelVersionRequest(parent=MODEL),
        "UploadModelVersion": [registry_pb2.UploadModelVersionRequest(
            header=registry_pb2.UploadModelVersionHeader(parent=MODEL, request_id="r-1"))],
        "GetModelVersion": registry_pb2.GetModelVersionRequest(name=MODEL_VERSION),
        "ListModelVersions": registry_pb2.ListModelVersionsRequest(parent=MODEL),
        "UpdateModelVersion": registry_pb2.UpdateModelVersionRequest(
            model_version=registry_pb2.ModelVersion(name=MODEL_VERSION)),
        "DeleteModelVersion": registry_pb2.DeleteModelVersionRequest(name=MODEL_VERSION),
        "DownloadModelVersion": registry_pb2.DownloadModelVersionRequest(name=MODEL_VERSION),
        "GenerateModelVersionDownloadUrls": registry_pb2.GenerateModelVersionDownloadUrlsRequest(name=MODEL_VERSION),
        "SetAlias": registry_pb2.SetAliasRequest(model=MODEL, alias="production", version=MODEL_VERSION),
        "DeleteAlias": registry_pb2.DeleteAliasRequest(model=MODEL, alias="production"),
        "ListAliasHistory": registry_pb2.ListAliasHistoryRequest(parent=MODEL),
    },
}
MODULES = {"tunery.dataset.v1.DatasetService": ("tunery.dataset.v1.dataset_pb2", "dataset"),
           "tunery.trainer.v1.TrainerService": ("tunery.trainer.v1.trainer_pb2", "trainer"),
           "tunery.registry.v1.ModelRegistryService": ("tunery.registry.v1.registry_pb2", "registry")}


def _methods():
    for service, (module, _) in MODULES.items():
        descriptor = importlib.import_module(module).DESCRIPTOR.services_by_name[service.rsplit(".", 1)[1]]
        for method in descriptor.methods:
            yield service, method


def test_every_rpc_has_a_request_here():
    assert {(s, m.name) for s, m in _methods()} == {(s, name) for s, rpcs in REQUESTS.items() for name in rpcs}


@pytest.fixture(scope="module")
def stack(tmp_path_factory, s3):
    import uuid
    from tunery.services.kit.settings import Settings
    tmp = tmp_path_factory.mktemp("security")
    settings = Settings(home=tmp / "home", port=0, database_url=f"sqlite:///{tmp / 'tunery.db'}",
                        s3_endpoint=s3.endpoint, s3_access_key=s3.access_key, s3_secret_key=s3.secret_key,
                        s3_bucket=f"t-{uuid.uuid4().hex[:16]}", trainer_model_cache=tmp / "models")
    with running_stack(settings) as running:
        yield running


def _invoke(channel: grpc.Channel, service: str, method, request, metadata) -> None:
    module = importlib.import_module(MODULES[service][0])
    path = f"/{service}/{method.name}"
    request_type = module.DESCRIPTOR.message_types_by_name[method.input_type.name]
    response_type = getattr(module, method.output_type.name)
    kind = ("stream" if method.client_streaming else "unary") + "_" + ("stream" if method.server_streaming else "unary")
    call = getattr(channel, kind)(path, request_serializer=lambda m: m.SerializeToString(),
                                  response_deserializer=response_type.FromString)
    assert request_type is not None
    result = call(iter(request) if method.client_streaming else request, metadata=metadata, timeout=20)
    if method.server_streaming:
        list(result)


@pytest.mark.parametrize("service,method", [(s, m) for s, m in _methods()], ids=lambda v: getattr(v, "name", v))
def test_no_key_is_unauthenticated_and_another_projects_key_is_denied(stack, service, method):
    channel = getattr(stack, MODULES[service][1]).channel
    request = REQUESTS[service][method.name]
    with fails(grpc.StatusCode.UNAUTHENTICATED, "API_KEY_MISSING"):
        _invoke(channel, service, method, request, [])
    with fails(grpc.StatusCode.PERMISSION_DENIED, "PROJECT_MISMATCH"):
        _invoke(channel, service, method, request, [("authorization", f"Bearer {stack.key}")])
