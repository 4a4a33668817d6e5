# The replog node images, master and secondary, from one multi-stage build:
#
#   docker build -f docker/node.Dockerfile --target master    -t replog-master .
#   docker build -f docker/node.Dockerfile --target secondary -t replog-secondary .
#
# (docker-compose.yml does this for you.) Base images are build arguments with public defaults;
# CI, which reaches no registry, passes local stand-ins made by scripts/docker-base-images.
ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

# --- Dependency skeleton: manifests, Cargo.lock and stub target roots (docker/cargo-skeleton).
FROM ${RUST_IMAGE} AS planner
WORKDIR /src
COPY . .
RUN sh docker/cargo-skeleton /skeleton

# --- Builder: crates.io dependencies first (cached until a manifest or Cargo.lock changes),
# then the workspace's own crates.
FROM ${RUST_IMAGE} AS builder
WORKDIR /src
# No debug info and stripped: small binaries, faster links. Symbols stay for backtraces.
ENV CARGO_PROFILE_RELEASE_DEBUG=0 \
    CARGO_PROFILE_RELEASE_STRIP=debuginfo \
    CARGO_TERM_COLOR=never \
    CARGO_INCREMENTAL=0
COPY --from=planner /skeleton/ ./
RUN cargo build --release --locked -p replog-master -p replog-secondary
COPY . .
# The real sources may be older than the stubs' build outputs: make cargo see them as new.
RUN find . -path ./target -prune -o -name '*.rs' -exec touch {} + \
 && cargo build --release --locked -p replog-master -p replog-secondary \
 && mkdir -p /out && cp target/release/master target/release/secondary /out/

# --- Runtime: Debian slim, curl for the healthcheck, a non-root user, /data for DATA_DIR.
FROM ${RUNTIME_IMAGE} AS runtime
LABEL replog.image=node
RUN apt-get update \
 && apt-get install -y --no-install-recommends curl \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/apt/* /var/log/dpkg.log \
 && useradd --system --uid 10001 --user-group --home-dir /nonexistent --shell /usr/sbin/nologin replog \
 && mkdir -p /data && chown replog:replog /data
# A new named volume mounted on /data starts as a copy of this directory, owned by replog.
ENV HOST=0.0.0.0 RUST_LOG=info
USER replog
WORKDIR /data
HEALTHCHECK --interval=2s --timeout=2s --start-period=30s --retries=3 \
  CMD curl -fsS "http://127.0.0.1:${HTTP_PORT}/health" >/dev/null || exit 1

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
