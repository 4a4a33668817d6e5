# etcd for the failover stack (docker-compose.failover.yml): one member, Debian's etcd-server
# package, so no registry beyond Debian's mirror is needed.
#
#   docker build -f docker/etcd.Dockerfile -t replog-etcd docker
#
# The base image is a build argument with a public default; CI, which reaches no registry,
# passes the local stand-in made by scripts/docker-base-images. Settings are etcd's own ETCD_*
# variables: clients on 0.0.0.0:2379, the data under /var/lib/etcd (a volume in compose), the
# peer port on loopback only (a single member has no peers).
ARG RUNTIME_IMAGE=debian:bookworm-slim
FROM ${RUNTIME_IMAGE}
LABEL replog.image=etcd
# The package makes the `etcd` system user and /var/lib/etcd; curl is for the healthcheck.
RUN apt-get update \
 && apt-get install -y --no-install-recommends etcd-server curl \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/apt/* /var/log/dpkg.log \
 && mkdir -p /var/lib/etcd \
 && chown etcd:etcd /var/lib/etcd \
 && chmod 700 /var/lib/etcd \
 && etcd --version
# A new named volume mounted on /var/lib/etcd starts as a copy of it, owned by etcd.
ENV ETCD_NAME=etcd \
    ETCD_DATA_DIR=/var/lib/etcd/member-data \
    ETCD_LISTEN_CLIENT_URLS=http://0.0.0.0:2379 \
    ETCD_ADVERTISE_CLIENT_URLS=http://127.0.0.1:2379 \
    ETCD_LISTEN_PEER_URLS=http://127.0.0.1:2380 \
    ETCD_INITIAL_ADVERTISE_PEER_URLS=http://127.0.0.1:2380 \
    ETCD_INITIAL_CLUSTER=etcd=http://127.0.0.1:2380 \
    ETCD_LOGGER=zap \
    ETCD_LOG_LEVEL=info
USER etcd
WORKDIR /var/lib/etcd
EXPOSE 2379
# etcd's /health answers 200 only while the member has a leader and serves requests.
HEALTHCHECK --interval=2s --timeout=2s --start-period=20s --retries=3 \
  CMD curl -fsS -o /dev/null http://127.0.0.1:2379/health || exit 1
ENTRYPOINT ["etcd"]
