# RabbitMQ from Debian's packages, with the management plugin, for the compose stack where
# no registry is reachable (compose.hostnet.yml). Like rabbitmq:*-management: data in
# /var/lib/rabbitmq, the first user from RABBITMQ_DEFAULT_USER / RABBITMQ_DEFAULT_PASS.
# RabbitMQ's own variables choose the node and its ports (RABBITMQ_NODENAME,
# RABBITMQ_NODE_IP_ADDRESS, RABBITMQ_NODE_PORT, RABBITMQ_DIST_PORT, ERL_EPMD_PORT, ...);
# RABBITMQ_MANAGEMENT_IP and RABBITMQ_MANAGEMENT_PORT place the management API.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}

RUN apt-get update \
    && apt-get install -y --no-install-recommends rabbitmq-server \
    && rm -rf /var/lib/apt/lists/* \
    && rabbitmq-plugins enable --offline rabbitmq_management \
    && chown -R rabbitmq:rabbitmq /var/lib/rabbitmq /etc/rabbitmq

COPY rabbitmq-entrypoint /usr/local/bin/rabbitmq-entrypoint
# Logs to stdout; the CLI (rabbitmq-diagnostics) finds the node's cookie in its home.
ENV RABBITMQ_LOGS=- \
    HOME=/var/lib/rabbitmq
WORKDIR /var/lib/rabbitmq
USER rabbitmq
ENTRYPOINT ["rabbitmq-entrypoint"]
CMD ["rabbitmq-server"]
