# CI STAND-IN for the compose file's redis:7.4 service: Debian bookworm's redis-server 7.0 in
# the CI base image (no registry here serves redis:7.4). The compose file's command, volume
# (/data, the working directory, where the append-only file goes) and healthcheck apply as
# written. Built by .ci/container, used only through compose.standin.yml.
ARG BASE
FROM ${BASE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends redis-server redis-tools \
 && rm -rf /var/lib/apt/lists/* \
 && install -d -o redis -g redis /data
COPY standin-redis-entrypoint /usr/local/bin/standin-redis-entrypoint
WORKDIR /data
USER redis
EXPOSE 6379
ENTRYPOINT ["/usr/local/bin/standin-redis-entrypoint"]
CMD ["redis-server"]
