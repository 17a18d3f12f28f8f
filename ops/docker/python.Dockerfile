# A stand-in for python:3.11-slim where no registry is reachable: Debian's python3 in a
# virtual environment at /opt/python, first on PATH, so the repository's Dockerfile
# (`pip install .`, `python -c ...` health checks) works on it unchanged:
#   docker build --build-arg BASE_IMAGE=<this image> -t conveyor .
# Built by ops/docker/build-local-images on the debootstrapped Debian image.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/python \
    && /opt/python/bin/python -c 'import sys; assert sys.version_info >= (3, 11), sys.version'

# pip checks PyPI's certificate against the system's store, which holds this host's extra
# certificate authorities (see build-local-images).
ENV PATH=/opt/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt

CMD ["python"]
