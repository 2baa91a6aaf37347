# syntax=docker/dockerfile:1
#
# streamtomo application image. The Helm chart (helm/streamtomo) runs every
# role from it: dranspose controller, ingesters, workers (our worker class),
# reducer (our reducer class, serving the live domain), the viewer and the
# `helm test` checks.
#
#   docker build -t ghcr.io/streamtomo/streamtomo:0.1.0 .
#
# Variant with tomopy from conda-forge: docker/Dockerfile.tomopy.
#
# The image runs as the non-root user 10001 and needs no writable root
# filesystem: HOME and the numba cache live in /tmp (an emptyDir in the chart).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG NODE_IMAGE=node:20-bookworm-slim

# --- 1. viewer assets, when the repository has an npm-built viewer ---------
FROM ${NODE_IMAGE} AS viewer
WORKDIR /src
COPY . .
RUN if [ -f viewer/package.json ]; then \
        cd viewer \
        && if [ -f package-lock.json ]; then npm ci --no-audit --no-fund; \
           else npm install --no-audit --no-fund; fi \
        && npm run build \
        && rm -rf node_modules; \
    fi

# --- 2. wheels of streamtomo and all its dependencies ----------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# a compiler only for dependencies without a wheel for this platform
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY --from=viewer /src /src
RUN pip wheel --wheel-dir /wheels .

# --- 3. runtime -------------------------------------------------------------
FROM ${PYTHON_IMAGE}
ARG UID=10001
LABEL org.opencontainers.image.title="streamtomo" \
      org.opencontainers.image.description="Streaming tomography pipeline on dranspose" \
      org.opencontainers.image.source="https://github.com/streamtomo/streamtomo"
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN groupadd --system --gid ${UID} streamtomo \
    && useradd --system --uid ${UID} --gid ${UID} --home-dir /tmp \
       --no-create-home --shell /usr/sbin/nologin streamtomo
COPY --from=build /wheels /wheels
RUN pip install --no-index --find-links /wheels streamtomo \
    && rm -rf /wheels \
    && streamtomo --help >/dev/null \
    && python -c "import dranspose, streamtomo.app.cluster_service, streamtomo.workers.tomo_worker, streamtomo.reducer.tomo_reducer, h5pyd"
ENV PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    NUMBA_CACHE_DIR=/tmp/numba-cache
USER ${UID}:${UID}
WORKDIR /tmp
# controller/reducer API, live domain, ingester and reducer ZeroMQ, viewer
EXPOSE 5000 8100 10000 10200 8080
CMD ["streamtomo", "--help"]
