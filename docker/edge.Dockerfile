# syntax=docker/dockerfile:1
# A fedward edge agent for gateway nodes (`fedward edge run`).
#
# Build from the repository root (docs/deployment.md, "Images"):
#   docker build -f docker/edge.Dockerfile \
#     --build-arg TORCH_INDEX_URL=<PyTorch's CPU wheel index, or your mirror of it> \
#     -t <registry>/fedward/edge:0.1.0 .
# Every Python package is pinned (docker/constraints.txt); torch is the CPU
# build of 2.13.0.

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

# --- build: a virtual environment in /opt/fedward -----------------------------
FROM ${PYTHON_IMAGE} AS build
ARG TORCH_INDEX_URL
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/fedward
COPY docker/constraints.txt docker/constraints.txt
RUN test -n "${TORCH_INDEX_URL}" || { echo "pass --build-arg TORCH_INDEX_URL=<CPU wheel index>" >&2; exit 1; } \
 && /opt/fedward/bin/pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" torch==2.13.0
COPY pyproject.toml setup.py README.md ./
COPY fedward/ fedward/
COPY coordinator/ coordinator/
COPY edge/ edge/
COPY privacy/ privacy/
COPY compliance/ compliance/
COPY bench/ bench/
# No database driver: a device never talks to the coordinator's database.
RUN /opt/fedward/bin/pip install --no-cache-dir -c docker/constraints.txt .

# --- runtime ------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="fedward edge agent" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 fedward \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/fedward-edge --no-create-home --shell /usr/sbin/nologin fedward \
 && mkdir -p /var/lib/fedward-edge \
 && chown 10001:10001 /var/lib/fedward-edge
COPY --from=build /opt/fedward /opt/fedward
ENV PATH=/opt/fedward/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib
WORKDIR /var/lib/fedward-edge
USER 10001:10001
VOLUME ["/var/lib/fedward-edge"]
ENTRYPOINT ["fedward"]
CMD ["edge", "run", "--help"]
