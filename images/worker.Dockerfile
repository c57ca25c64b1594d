# syntax=docker/dockerfile:1
# The dsel worker: runs one stage of a DataSelection (python -m selection.jobs <stage> <args.json>)
# on a CUDA build of PyTorch.
#   docker build -f images/worker.Dockerfile -t dsel-worker:0.1.0 .
# Build context: the repository root (see .dockerignore for what enters it).
# The base image provides (and pins) the CUDA torch; requirements/constraints.txt pins the rest.
# Its torch must satisfy transformers' minimum (tests/chart/test_images.py checks the tag).
# Pin the base by digest for reproducible rebuilds:
#   --build-arg TORCH_IMAGE=pytorch/pytorch:2.8.0-cuda12.8-cudnn9-runtime@sha256:<digest>
ARG TORCH_IMAGE=pytorch/pytorch:2.8.0-cuda12.8-cudnn9-runtime

# Stage 1: build the dsel wheel. The sources and the build backend stay here.
FROM ${TORCH_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY selection selection
COPY operator operator
RUN python -m pip wheel --no-deps --wheel-dir /wheels .

# Stage 2: the base image plus the wheel with its `worker` extra.
FROM ${TORCH_IMAGE}
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY requirements/constraints.txt /tmp/constraints.txt
COPY --from=build /wheels /tmp/wheels
# Keep the base image's CUDA torch: drop the local CPU pin from the constraints and pin torch to
# exactly the installed build instead, so pip can neither replace nor "upgrade" it.
RUN grep -v -E '^torch==' /tmp/constraints.txt > /tmp/constraints-image.txt \
 && python -c "from importlib.metadata import version; print('torch==' + version('torch'))" \
      >> /tmp/constraints-image.txt \
 && python -m pip install --constraint /tmp/constraints-image.txt "$(ls /tmp/wheels/dsel-*.whl)[worker]" \
 && python -c "import torch; assert torch.version.cuda, 'the worker needs the CUDA build of torch'" \
 && python -c "import selection.jobs.__main__" \
 && rm -rf /tmp/wheels /tmp/constraints.txt /tmp/constraints-image.txt
RUN groupadd --system --gid 65532 dsel \
 && useradd --system --uid 65532 --gid 65532 --home-dir /home/dsel --create-home \
      --shell /usr/sbin/nologin dsel
# Caches (Hugging Face, torch) go to the home directory, which the user owns, when the image runs
# on its own. The operator's Job pods have a read-only root filesystem and point HOME, TMPDIR,
# HF_HOME, TORCH_HOME and XDG_CACHE_HOME at sized emptyDir volumes instead.
# Idle OpenMP threads sleep instead of spinning: spinning made 2-thread runs up to 25x slower on a
# shared node (docs/performance.md); the Jobs also set the thread count from the pod's CPU request.
ENV HOME=/home/dsel \
    HF_HOME=/home/dsel/.cache/huggingface \
    OMP_WAIT_POLICY=PASSIVE \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /home/dsel
USER 65532:65532
ENTRYPOINT ["python", "-m", "selection.jobs"]
