# Conveyor's one image: workers, migrations, Flower (and later the relay and the API).
# Build: docker build -t conveyor .    Run: docker run --rm conveyor --help
#
# BASE_IMAGE: any Debian-based image whose `python` and `pip` on PATH are Python 3.11 or
# newer, to install into. Where no registry is reachable, ops/docker/build-local-images
# makes one from Debian's packages and passes it here (--build-arg BASE_IMAGE=...).
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# An unprivileged user with fixed ids, so volume ownership is predictable.
RUN groupadd --system --gid 10001 conveyor \
    && useradd --system --uid 10001 --gid conveyor --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin conveyor

# Install the package itself (not an editable checkout), then drop the sources.
# /app/var is the settings' data_dir; /data holds Flower's state (a named volume in
# compose takes this ownership on first use).
WORKDIR /src
# README.md* : the readme is optional for the build (a glob that may match nothing).
COPY pyproject.toml README.md* ./
COPY config ./config
COPY worker ./worker
COPY tasks ./tasks
# conveyor/ links to the three folders above: installed, everything is `conveyor.*`.
COPY conveyor ./conveyor
RUN pip install . \
    && rm -rf /src \
    && mkdir -p /app/var /data \
    && chown conveyor:conveyor /app/var /data

WORKDIR /app
USER conveyor

# `conveyor worker` by default; compose and Kubernetes pass other subcommands.
ENTRYPOINT ["conveyor"]
CMD ["worker"]
