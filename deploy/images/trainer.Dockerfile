# syntax=docker/dockerfile:1
# CUDA image: the trainer service and its training workers (the same image runs Kubernetes training Jobs).
# torch 2.13.0 from PyPI on linux/amd64 is the CUDA 13 build; its CUDA libraries come as nvidia-* wheels,
# so the base stays a plain Python image and the host needs only an NVIDIA driver >= 580 and the
# NVIDIA container toolkit. Build from the repository root:
#   docker build -f deploy/images/trainer.Dockerfile -t tunery-trainer:0.1.0 .
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_VERSION=2.13.0
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
# Fail the build if the resolver ever hands us a CPU-only wheel.
RUN pip install "torch==${TORCH_VERSION}" \
 && python -c "import torch; assert torch.version.cuda, 'expected a CUDA wheel'"
WORKDIR /src
COPY clients/python clients/python
COPY pyproject.toml ./
COPY services services
RUN pip install ./clients/python .

FROM ${PYTHON_IMAGE}
RUN groupadd --gid 10001 tunery \
 && useradd --uid 10001 --gid 10001 --home-dir /var/lib/tunery --create-home --shell /usr/sbin/nologin tunery
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    TUNERY_HOME=/var/lib/tunery TUNERY_HOST=0.0.0.0 TUNERY_PORT=50052 TUNERY_LOG_FORMAT=json
USER 10001:10001
WORKDIR /var/lib/tunery
EXPOSE 50052
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, sys, grpc; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; r = g.HealthStub(grpc.insecure_channel('127.0.0.1:' + os.environ['TUNERY_PORT'])).Check(h.HealthCheckRequest(service=''), timeout=4); sys.exit(r.status != h.HealthCheckResponse.SERVING)"]
ENTRYPOINT ["python", "-m", "tunery.services"]
CMD ["trainer"]
