# eda-pitfalls: `make help` lists every target. The stack runs natively (no Docker); its
# settings are in infra/env.sh and every value there can be overridden from the environment.
SHELL := /bin/bash
.DEFAULT_GOAL := help

.PHONY: help up down status urls deps infra-install infra-up infra-down infra-status infra-logs \
        infra-topics services-up services-down build fmt lint test bench token trace redrive debezium-register \
        debezium-delete clean-run copy-check chaos fuzz outbox-parked outbox-release projection-rebuild

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-15s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

up: infra-up services-up urls ## start the whole system (stack + services) and print where everything is

down: services-down infra-down ## stop the whole system (data stays in .run/)

status: ## health of every component and service
	@infra/stack.sh status; infra/services.sh status

urls: ## print the URLs of the stack and the services
	@echo; echo "eda-pitfalls is up:"; infra/services.sh urls; infra/stack.sh urls

deps: ## install build prerequisites (Debian packages for librdkafka, docker-compose for the compose check)
	@infra/deps.sh

infra-install: ## install the stack's components (cached in ~/.cache/eda-pitfalls; idempotent)
	@infra/stack.sh install

infra-up: ## start PostgreSQL, Kafka, Kafka Connect + Debezium, MinIO, Jaeger and wait until healthy
	@infra/stack.sh up

infra-down: ## stop the stack
	@infra/stack.sh down

infra-status: ## health of each stack component
	@infra/stack.sh status

infra-logs: ## last lines of each component's log (COMPONENT=kafka for one)
	@infra/stack.sh logs $(COMPONENT)

infra-topics: ## create missing Kafka topics
	@infra/stack.sh topics

services-up: deps ## build and start the services that exist under services/
	@infra/services.sh up

services-down: ## stop the services
	@infra/services.sh down

build: deps ## cargo build the workspace
	cargo build --workspace --all-targets

fmt: ## format the code
	cargo fmt --all

lint: ## clippy with warnings as errors
	cargo clippy --workspace --all-targets -- -D warnings

copy-check: deps ## prove crates/outbox, idempotent-consumer and claim-check build, unit-test and doc-test copied into a fresh project
	@infra/copy-check.sh

test: ## fmt check + clippy + all tests against the real stack (started and stopped if not running)
	@infra/test.sh

chaos: deps ## kill -9 every process at random under load, make up, then audit (CHAOS_KILLS=200, KAFKA_BROKERS=3, CHAOS_SEED)
	@infra/chaos.sh

.PHONY: demo
demo: deps ## watch each pitfall happen (naive mode) and not happen (fixed), on the running system, with a summary table: make demo [ONLY=1,3] [JSON=path]
	@source infra/env.sh && cargo run --release -q -p pitfall-lab -- demo $(if $(ONLY),--only "$(ONLY)") $(if $(JSON),--json "$(JSON)")

fuzz: deps ## schemathesis against each running service's /openapi.json (started if need be): no 5xx, answers as documented, problem details (FUZZ_SEED, FUZZ_MAX_EXAMPLES)
	@infra/fuzz.sh

bench: deps ## run the benchmarks against the stack and print numbers (BENCH_ROWS, BENCH_SECONDS, BENCH_LARGE_EVENTS, BENCH_ES_ORDERS, ...)
	@infra/bench.sh

.PHONY: audit
audit: deps ## check every topic and database against the contract; exit 1 on a violation: make audit [SETTLE=30] [CHECKS=1,views] [JSON=audit.json]
	@source infra/env.sh && cargo run -q -p pitfall-lab -- audit --settle "$(or $(SETTLE),30)" $(if $(CHECKS),--checks "$(CHECKS)") $(if $(JSON),--json "$(JSON)")

token: ## print a dev bearer token for curl: make token AS=alice [ROLE=admin]
	@cargo run -q -p pitfall-lab -- token --user "$(or $(AS),alice)" $(if $(ROLE),--role $(ROLE))

trace: ## print a request's trace from Jaeger as a tree: make trace REQ=<x-request-id> (or TRACE=<trace id>)
	@source infra/env.sh && cargo run -q -p pitfall-lab -- trace $(if $(TRACE),--trace-id "$(TRACE)",--request-id "$(REQ)")

projection-rebuild: ## rebuild projection-service's views from the source tables (new CDC snapshot), switched in atomically
	@cargo run -q -p pitfall-lab -- projection rebuild

redrive: ## send dead letters back after a fix: make redrive TOPIC=order.events
	@cargo run -q -p pitfall-lab -- dlq redrive --topic "$(or $(TOPIC),order.events)"

outbox-parked: ## list outbox rows Kafka refused for good (too large): make outbox-parked [DB=inventory]
	@cargo run -q -p pitfall-lab -- outbox parked --database-url "postgres://$${PG_USER:-eda}:$${PG_PASSWORD:-eda}@127.0.0.1:$${PG_PORT:-5432}/$(or $(DB),orders)"

outbox-release: ## send a parked outbox row again once its cause is fixed: make outbox-release ID=42 [DB=inventory]
	@cargo run -q -p pitfall-lab -- outbox release --id "$(ID)" --database-url "postgres://$${PG_USER:-eda}:$${PG_PASSWORD:-eda}@127.0.0.1:$${PG_PORT:-5432}/$(or $(DB),orders)"

debezium-register: ## register the Debezium outbox connector for the orders database (then RELAY_MODE=debezium)
	@infra/debezium/register.sh orders

debezium-delete: ## remove the orders outbox connector
	@infra/debezium/register.sh --delete orders

clean-run: services-down ## stop everything and delete the stack's data (.run/); caches stay
	@infra/stack.sh clean
