# CI's stand-in for the public nginx image: a debootstrapped Debian with Debian's nginx, made by
# scripts/docker-base-images. Not for users.
ARG BASE=replog-local/debian:bookworm-slim
FROM ${BASE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends nginx \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /etc/nginx/sites-enabled/default
CMD ["nginx", "-g", "daemon off;"]
