# syntax=docker/dockerfile:1
# CPU image: the dataset and registry services (it can also run a CPU-only trainer for small models).
# Build from the repository root:
#   docker build -f deploy/images/services.Dockerfile -t tunery-services:0.1.0 .
# Pin the base by digest for reproducible builds: --build-arg PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:...
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_VERSION=2.13.0
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
# The CPU wheel index: a plain `torch` from PyPI is the CUDA build, gigabytes larger.
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch==${TORCH_VERSION}" \
 && python -c "import torch; assert torch.version.cuda is None, 'expected the CPU wheel'"
WORKDIR /src
COPY clients/python clients/python
COPY pyproject.toml ./
COPY services services
# torch is already satisfied, so pip keeps the CPU wheel.
RUN pip install ./clients/python .

FROM ${PYTHON_IMAGE}
RUN groupadd --gid 10001 tunery \
 && useradd --uid 10001 --gid 10001 --home-dir /var/lib/tunery --create-home --shell /usr/sbin/nologin tunery
COPY --from=build /opt/venv /opt/venv
# TUNERY_PORT is what the health check probes; set it per service (registry: 50053).
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    TUNERY_HOME=/var/lib/tunery TUNERY_HOST=0.0.0.0 TUNERY_PORT=50051 TUNERY_LOG_FORMAT=json
USER 10001:10001
WORKDIR /var/lib/tunery
EXPOSE 50051 50053
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, sys, grpc; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; r = g.HealthStub(grpc.insecure_channel('127.0.0.1:' + os.environ['TUNERY_PORT'])).Check(h.HealthCheckRequest(service=''), timeout=4); sys.exit(r.status != h.HealthCheckResponse.SERVING)"]
ENTRYPOINT ["python", "-m", "tunery.services"]
CMD ["dataset"]
