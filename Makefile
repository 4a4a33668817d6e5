# Shortcuts for the commands in the README; each target runs one of them.
#
#   make build_and_run   # docker compose up --build: master :8000, secondaries :8001 :8002,
#                        # the web page on http://localhost:8080
#   make help            # every target
#
# COMPOSE is `docker compose` when the Docker CLI has the plugin, else Debian's
# `docker-compose` (1.29); override it (`make COMPOSE=podman-compose ...`) if neither fits.
# COMPOSE_FILE picks the stack: `make build_and_run COMPOSE_FILE=docker-compose.failover.yml`
# runs the failover variant (etcd and three electing nodes). TLS=1 adds the stack's TLS file
# (docker-compose.tls.yml, docker-compose.failover.tls.yml): mutual TLS between the nodes, HTTPS
# on their ports, nginx over TLS to them (certificates made at the first start; README "TLS").

SHELL := /bin/bash
COMPOSE ?= $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)
COMPOSE_FILE ?= docker-compose.yml
TLS ?=
TLS_FILE := $(basename $(COMPOSE_FILE)).tls.yml
ifneq ($(TLS),)
ifeq ($(wildcard $(TLS_FILE)),)
$(error TLS=1: $(COMPOSE_FILE) has no TLS file $(TLS_FILE))
endif
endif
COMPOSE_FILES := -f $(COMPOSE_FILE)$(if $(TLS), -f $(TLS_FILE))
# Extra arguments for the benchmark, e.g. `make bench BENCH_ARGS=--smoke`.
BENCH_ARGS ?=

.DEFAULT_GOAL := help

.PHONY: help build_and_run test bench logs down validate-kubernetes

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  make %-20s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

build_and_run: ## Build the images and run the stack in the foreground (Ctrl-C stops it)
	$(COMPOSE) $(COMPOSE_FILES) up --build

test: ## Run every check and test (scripts/test; REPLOG_SKIP_DOCKER=1 skips Docker)
	scripts/test

bench: ## Run the benchmark against Redis (scripts/bench; BENCH_ARGS=--smoke for a short run)
	scripts/bench $(BENCH_ARGS)

logs: ## Follow the logs of every service of the running stack
	$(COMPOSE) $(COMPOSE_FILES) logs -f

down: ## Stop and remove the stack; the logs stay in their volumes (`down -v` deletes them)
	$(COMPOSE) $(COMPOSE_FILES) down

validate-kubernetes: ## Render the Kubernetes overlays (deploy/kubernetes) and validate them offline
	scripts/validate-kubernetes
