# CI STAND-IN for the compose file's prom/prometheus service: Debian bookworm's prometheus
# package in the CI base image (no registry here serves prom/prometheus). The compose file's
# command, configuration and rule files apply as written. Built by .ci/container, used only
# through compose.standin.yml.
ARG BASE
FROM ${BASE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends prometheus \
 && rm -rf /var/lib/apt/lists/* \
 && install -d -o prometheus -g prometheus /prometheus
USER prometheus
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
