# Redis from Debian's packages, for the compose stack where no registry is reachable
# (compose.hostnet.yml). Like the official image: data in /data, `redis-server ARGS`.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}

RUN apt-get update \
    && apt-get install -y --no-install-recommends redis-server redis-tools \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /data \
    && chown redis:redis /data

# Redis keeps its files in the working directory.
WORKDIR /data
USER redis
CMD ["redis-server"]
