# syntax=docker/dockerfile:1
# The Steward image: one image for every component (`steward node|controller|notifier|...`),
# the one helm/steward deploys. Multi-stage: the build stage installs the package into a
# virtualenv; the runtime stage copies only that virtualenv and runs as UID 65532.
#
#   docker build -t ghcr.io/steward-ops/steward:0.1.0 .
#
# The base is pinned to an exact Python patch release on Debian bookworm (the distribution
# the tests run on). Pin its digest too when publishing (PYTHON_IMAGE=python:...@sha256:...)
# and let the dependency bot move both. No CUDA in the image: the NVIDIA container runtime
# injects libnvidia-ml into the node agent's container at start.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/steward
WORKDIR /src
# Dependencies first, from pyproject.toml alone (with a placeholder package), so that a
# source-only change rebuilds from the next layer.
COPY pyproject.toml README.md ./
RUN mkdir agent && touch agent/__init__.py \
    && /opt/steward/bin/pip install . \
    && /opt/steward/bin/pip uninstall --yes steward \
    && rm -rf agent build
COPY agent ./agent
RUN /opt/steward/bin/pip install --no-deps . \
    && /opt/steward/bin/python -m compileall -q /opt/steward/lib \
    && /opt/steward/bin/steward --version

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="steward" \
      org.opencontainers.image.description="GPU observability and ops automation for AI platforms on Kubernetes" \
      org.opencontainers.image.source="https://github.com/steward-ops/steward" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 65532 steward \
    && useradd --system --uid 65532 --gid 65532 --home-dir /nonexistent --no-create-home \
       --shell /usr/sbin/nologin steward \
    && install -d -o 65532 -g 65532 -m 0750 /var/lib/steward
COPY --from=build /opt/steward /opt/steward
# HOME and MPLCONFIGDIR point at /tmp: the root filesystem is read-only in the chart, and
# /tmp is an emptyDir there.
ENV PATH=/opt/steward/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib
WORKDIR /var/lib/steward
# Numeric, so that Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 65532:65532
EXPOSE 9400 9401 9500
ENTRYPOINT ["steward"]
CMD ["--help"]
