# syntax=docker/dockerfile:1
#
# pki-exporter container image.
#
#   docker build -t pki-exporter:0.1.0 .
#   docker run --rm --read-only --tmpfs /tmp -p 9869:9869 \
#     -v "$PWD/config.yaml:/etc/pki-exporter/config.yaml:ro" \
#     -e PKI_EXPORTER_CLIENT_SECRET pki-exporter:0.1.0
#
# Two stages: the first fetches the dependencies' wheels pinned and hash-checked by
# requirements.lock (`make lock` refreshes it from pyproject.toml) and builds the
# exporter's wheel; the second installs them into a plain python:slim with no compiler, no
# pip left behind, and runs as a fixed unprivileged UID. Nothing is written at run time
# outside the state volume (/var/lib/pki-exporter, --storage.path), so the root filesystem
# can be mounted read-only. The simulated tenant (and so --demo) is not in the image.
# tests/test_deploy.py lints this file with hadolint; tests/test_image.py builds it with
# podman (on a Debian base made with mmdebstrap) and runs the image.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
# PIP_CERT (optional): the path of a CA bundle for pip, where package traffic is re-signed
# by a proxy; mount the file into the build (`podman build -v`).
ARG PIP_CERT
# Only what the wheels are built from (.dockerignore keeps the rest out of the context).
COPY requirements.lock pyproject.toml README.md ./
COPY pki_exporter/ pki_exporter/
# The dependencies exactly as locked (every file checked against its hash, wheels only),
# then the exporter's own wheel. One RUN: podman 4.3's `--mount from=build` below saw only
# the stage's first RUN when there were two.
RUN pip download --no-cache-dir --disable-pip-version-check --require-hashes \
        --only-binary=:all: --dest /wheels -r requirements.lock \
    && pip wheel --no-cache-dir --disable-pip-version-check --no-deps --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
ARG PYTHON_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="pki-exporter" \
      org.opencontainers.image.description="Prometheus exporter for Microsoft Intune Cloud PKI" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/${PYTHON_IMAGE}"

# Install from the wheels only (no index, no compiler): the locked dependencies, their
# hashes checked again, then the exporter without dependencies (VERSION must be the
# version built); then drop the installers: nothing in the running image can fetch or
# build code. UID/GID 65532 is fixed so that Kubernetes runAsUser, volume ownership and
# file permissions can name it.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    --mount=type=bind,from=build,source=/src/requirements.lock,target=/requirements.lock \
    python -m pip install --no-cache-dir --disable-pip-version-check --no-index \
        --find-links=/wheels --require-hashes -r /requirements.lock \
    && python -m pip install --no-cache-dir --disable-pip-version-check --no-index \
        --find-links=/wheels --no-deps "pki-exporter==${VERSION}" \
    && python -m pip uninstall --yes --disable-pip-version-check pip setuptools wheel \
    && groupadd --system --gid 65532 pki-exporter \
    && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin pki-exporter \
    && mkdir -p /etc/pki-exporter \
    && install -d -m 0700 -o 65532 -g 65532 /var/lib/pki-exporter

# The wheels were byte-compiled at install time; at run time nothing writes .pyc files.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

USER 65532:65532
EXPOSE 9869

# Docker only (Kubernetes uses the probes of deploy/kubernetes). No curl in slim: Python.
# Set PKI_EXPORTER_HEALTHCHECK_URL when the exporter listens elsewhere or serves TLS.
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ.get('PKI_EXPORTER_HEALTHCHECK_URL', 'http://127.0.0.1:9869/healthz'), timeout=4).close()"]

# Each CA's last snapshot (--storage.path), served at once after a restart: keep it on a
# named volume (-v pki-exporter-state:/var/lib/pki-exporter) to survive a new container.
VOLUME ["/var/lib/pki-exporter"]
ENTRYPOINT ["pki-exporter"]
CMD ["--config.file=/etc/pki-exporter/config.yaml", "--storage.path=/var/lib/pki-exporter"]
