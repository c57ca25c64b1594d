# syntax=docker/dockerfile:1
# The dsel operator: kopf + the Kubernetes client + prometheus-client, and no torch.
#   docker build -f images/operator.Dockerfile -t dsel-operator:0.1.0 .
# Build context: the repository root (see .dockerignore for what enters it).
# Pin the base by digest for reproducible rebuilds:
#   --build-arg PYTHON_IMAGE=python:3.11.13-slim-bookworm@sha256:<digest>
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

# Stage 1: install dsel[operator] into a virtualenv. pip, setuptools and the sources stay here.
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/dsel
WORKDIR /src
COPY requirements/constraints.txt requirements/constraints.txt
COPY pyproject.toml README.md ./
COPY selection selection
COPY operator operator
# The same pins as CI (requirements/constraints.txt); then prove the layering rule holds:
# the operator image must not contain torch (nor the rest of the worker stack).
RUN /opt/dsel/bin/pip install --constraint requirements/constraints.txt ".[operator]" \
 && for module in torch transformers peft; do \
      if /opt/dsel/bin/python -c "import $module" 2>/dev/null; then \
        echo "$module must not be in the operator image" >&2; exit 1; \
      fi; \
    done \
 && /opt/dsel/bin/python -c "import kopf, kubernetes, prometheus_client, selection_operator"

# Stage 2: the runtime, with only the virtualenv copied over.
FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 65532 dsel \
 && useradd --system --uid 65532 --gid 65532 --home-dir /home/dsel --create-home \
      --shell /usr/sbin/nologin dsel
COPY --from=build /opt/dsel /opt/dsel
ENV PATH=/opt/dsel/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /home/dsel
USER 65532:65532
# 8081: kopf's liveness endpoint (/healthz); 9090: Prometheus metrics (/metrics).
EXPOSE 8081 9090
ENTRYPOINT ["kopf", "run", "-m", "selection_operator"]
# The chart passes its own arguments (watched namespaces); these are for `docker run`.
CMD ["--standalone", "--all-namespaces", "--liveness=http://0.0.0.0:8081/healthz"]
