# syntax=docker/dockerfile:1
#
# The mailsyncd image: a virtualenv installed from the hashed lock file, run as an unprivileged
# user on a read-only root filesystem.
#
#   docker build -t mailsyncd:0.1.0 .
#   docker run --read-only --tmpfs /tmp -v mailsyncd-data:/var/lib/mailsyncd \
#     -v "$PWD/config.yaml:/etc/mailsyncd/config.yaml:ro" -p 9464:9464 mailsyncd:0.1.0
#
# tests/e2e/test_image_mirror.py repeats these steps on a machine without a container engine.

# Python 3.11 (the version the lock files are compiled for) on Debian 12, pinned by tag and by
# digest: the tag says what it is, the digest makes every build start from the same bytes.
# Renovate/Dependabot or `docker buildx imagetools inspect python:3.11.15-slim-bookworm` bump both.
ARG PYTHON_IMAGE=python:3.11.15-slim-bookworm@sha256:d29f48a31a8b408ed19272ca1e7b10ebae13b240a27e862d3d4217c528e2e0c3

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src

# The runtime dependencies in their own layer: rebuilt only when the lock file changes. Wheels
# only (no compiler is needed or present), every file checked against its hash.
COPY requirements.lock ./
RUN python -m venv /opt/mailsyncd \
    && /opt/mailsyncd/bin/pip install --no-cache-dir --require-hashes --only-binary=:all: \
        -r requirements.lock

# The build backend at the versions and hashes of the dev lock, in a throwaway virtualenv of
# this stage: hatchling and the entries the lock says are there "via hatchling". (A dependency
# of those would be missing, and --require-hashes would say so.)
COPY requirements-dev.lock ./
RUN awk '/^[A-Za-z0-9]/ { if (keep) printf "%s", entry; entry = ""; keep = ($1 ~ /^hatchling==/) } \
         /^ +# +via hatchling$/ || /^ +# +hatchling$/ { keep = 1 } \
         { entry = entry $0 "\n" } \
         END { if (keep) printf "%s", entry }' requirements-dev.lock > build.lock \
    && python -m venv /opt/build \
    && /opt/build/bin/pip install --no-cache-dir --require-hashes --only-binary=:all: -r build.lock

# The project itself, as a wheel without dependencies (they are all in the layer above).
COPY pyproject.toml README.md ./
COPY daemon/ daemon/
RUN /opt/build/bin/pip wheel --no-cache-dir --no-deps --no-build-isolation --wheel-dir /wheels . \
    && /opt/mailsyncd/bin/pip install --no-cache-dir --no-deps --no-index /wheels/mailsyncd-*.whl \
    && /opt/mailsyncd/bin/pip uninstall --yes pip setuptools \
    && /opt/mailsyncd/bin/mailsyncd --version

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
ARG SOURCE=https://example.invalid/mailsyncd
ARG PYTHON_IMAGE
LABEL org.opencontainers.image.title="mailsyncd" \
      org.opencontainers.image.description="Keeps the message metadata of many Microsoft 365 mailboxes in a SQL database (app-only OAuth2, IMAP, SQLAlchemy)." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"

# A fixed numeric UID/GID, so that Kubernetes' runAsNonRoot can check it and volume
# permissions (fsGroup, chown on the host) can name it. /var/lib/mailsyncd holds the SQLite
# database when one is used; it is the only place the daemon writes besides /tmp.
RUN groupadd --system --gid 10001 mailsyncd \
    && useradd --system --uid 10001 --gid mailsyncd --home-dir /var/lib/mailsyncd \
        --no-create-home --shell /usr/sbin/nologin mailsyncd \
    && install -d -o mailsyncd -g mailsyncd -m 0750 /var/lib/mailsyncd \
    && install -d -m 0755 /etc/mailsyncd

COPY --from=build /opt/mailsyncd /opt/mailsyncd

# Bytecode was compiled at install time; nothing tries to write it on a read-only root.
ENV PATH=/opt/mailsyncd/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

VOLUME ["/var/lib/mailsyncd"]
WORKDIR /var/lib/mailsyncd
USER 10001:10001
EXPOSE 9464

# SIGTERM stops scheduling, lets running batches commit and exits within 10 seconds.
STOPSIGNAL SIGTERM
# For docker run and compose (Kubernetes uses its own probes). The slim image has no curl:
# urllib raises on anything but 2xx, and an uncaught exception exits 1 (unhealthy). It assumes
# the default http.listen port; override the health check when the configuration changes it.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9464/healthz', timeout=4)"]

ENTRYPOINT ["mailsyncd"]
CMD ["run", "-c", "/etc/mailsyncd/config.yaml"]
