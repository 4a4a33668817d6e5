# The replog node images from one multi-stage build: master and secondary (static mode), and
# replog (failover mode: either role, as etcd's election says):
#
#   docker build -f docker/node.Dockerfile --target master    -t replog-master .
#   docker build -f docker/node.Dockerfile --target secondary -t replog-secondary .
#   docker build -f docker/node.Dockerfile --target replog    -t replog-node .
#
# (docker-compose.yml and docker-compose.failover.yml do this for you.) The builder compiles the
# three binaries in one cargo run, so every target reuses the same cached stage. Base images are
# build arguments with public defaults; CI, which reaches no registry, passes local stand-ins made
# by scripts/docker-base-images.
ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

# --- Dependency skeleton: manifests, Cargo.lock and stub target roots (docker/cargo-skeleton).
FROM ${RUST_IMAGE} AS planner
WORKDIR /src
COPY . .
RUN sh docker/cargo-skeleton /skeleton

# --- Builder: crates.io dependencies first (cached until a manifest or Cargo.lock changes),
# then the workspace's own crates. protoc and the well-known types (libprotobuf-dev): etcd-client
# compiles etcd's .proto files in its build script (the workspace's own protos need neither,
# proto/build.rs uses protox).
FROM ${RUST_IMAGE} AS builder
RUN apt-get update \
 && apt-get install -y --no-install-recommends protobuf-compiler libprotobuf-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# No debug info and stripped: small binaries, faster links. Symbols stay for backtraces.
ENV CARGO_PROFILE_RELEASE_DEBUG=0 \
    CARGO_PROFILE_RELEASE_STRIP=debuginfo \
    CARGO_TERM_COLOR=never \
    CARGO_INCREMENTAL=0
COPY --from=planner /skeleton/ ./
RUN cargo build --release --locked -p replog-master -p replog-secondary -p replog-failover \
    -p replog-certs
COPY . .
# The real sources may be older than the stubs' build outputs: make cargo see them as new.
RUN find . -path ./target -prune -o -name '*.rs' -exec touch {} + \
 && cargo build --release --locked -p replog-master -p replog-secondary -p replog-failover \
    -p replog-certs \
 && mkdir -p /out \
 && cp target/release/master target/release/secondary target/release/replog target/release/replog-certs /out/

# --- Runtime: Debian slim, curl for the healthcheck, a non-root user, /data for DATA_DIR,
# /certs for TLS files and replog-certs to make them (docker-compose.tls.yml's one-shot service).
FROM ${RUNTIME_IMAGE} AS runtime
LABEL replog.image=node
RUN apt-get update \
 && apt-get install -y --no-install-recommends curl \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/apt/* /var/log/dpkg.log \
 && useradd --system --uid 10001 --user-group --home-dir /nonexistent --shell /usr/sbin/nologin replog \
 && mkdir -p /data /certs && chown replog:replog /data /certs
# A new named volume mounted on /data or /certs starts as a copy of that directory, owned by
# replog.
COPY --from=builder /out/replog-certs /usr/local/bin/replog-certs
COPY docker/node-health /usr/local/bin/node-health
ENV HOST=0.0.0.0 RUST_LOG=info
USER replog
WORKDIR /data
HEALTHCHECK --interval=2s --timeout=2s --start-period=30s --retries=3 \
  CMD node-health || exit 1

FROM runtime AS secondary
COPY --from=builder /out/secondary /usr/local/bin/secondary
ENV HTTP_PORT=8001 GRPC_PORT=50051
EXPOSE 8001 50051
ENTRYPOINT ["secondary"]

FROM runtime AS master
COPY --from=builder /out/master /usr/local/bin/master
ENV HTTP_PORT=8000
EXPOSE 8000
ENTRYPOINT ["master"]

# Failover mode: NODE_NAME, PEERS and ETCD_ENDPOINTS come from the deployment
# (docker-compose.failover.yml); HTTP_PORT serves clients, GRPC_PORT replication while secondary.
FROM runtime AS replog
COPY --from=builder /out/replog /usr/local/bin/replog
ENV HTTP_PORT=8000 GRPC_PORT=50051
EXPOSE 8000 50051
ENTRYPOINT ["replog"]
