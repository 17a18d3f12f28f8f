# PostgreSQL from Debian's packages, for the compose stack where no registry is reachable
# (compose.hostnet.yml). Like the official image: the cluster in /var/lib/postgresql/data
# (PGDATA), made on first start with POSTGRES_USER, POSTGRES_PASSWORD and POSTGRES_DB;
# then `postgres ARGS` (e.g. -c port=5433 -c listen_addresses=127.0.0.1).
ARG BASE_IMAGE
FROM ${BASE_IMAGE}

# No "main" cluster from the package: the entrypoint makes the one cluster in PGDATA.
RUN apt-get update \
    && apt-get install -y --no-install-recommends postgresql-common \
    && sed -ri 's/^#?[[:space:]]*create_main_cluster.*/create_main_cluster = false/' \
       /etc/postgresql-common/createcluster.conf \
    && apt-get install -y --no-install-recommends postgresql \
    && rm -rf /var/lib/apt/lists/* \
    && ln -s "$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)" /usr/lib/postgresql/bin \
    && mkdir -p /var/lib/postgresql/data /run/postgresql \
    && chown postgres:postgres /var/lib/postgresql/data /run/postgresql \
    && chmod 700 /var/lib/postgresql/data

COPY postgres-entrypoint /usr/local/bin/postgres-entrypoint
ENV PATH=/usr/lib/postgresql/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PGDATA=/var/lib/postgresql/data
USER postgres
ENTRYPOINT ["postgres-entrypoint"]
CMD ["postgres"]
