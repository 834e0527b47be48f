# Prometheus from Debian's package: a stand-in for prom/prometheus where no registry can be
# reached. docker/smoke.sh builds it on its locally made Debian base and hands it to compose
# as PROMETHEUS_IMAGE; it takes the same mounted /etc/prometheus/prometheus.yml.
ARG BASE=debian:bookworm-slim
FROM ${BASE}
# No init system here: the package's postinst must not try to start a service.
RUN printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d \
 && apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus \
 && rm -rf /var/lib/apt/lists/* /usr/share/doc /usr/share/man \
 && mkdir -p /prometheus && chown prometheus:prometheus /prometheus
USER prometheus
WORKDIR /prometheus
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus", "--web.listen-address=:9090"]
