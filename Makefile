# routerd — `make run` starts a local system, `make test` runs every check.
GO          ?= go
REDIS_PORT  ?= 6390
ROUTERD_PORT ?= 9464
AGENT_PORT  ?= 9465
DEMO_ARGS   ?=
STATICCHECK ?= honnef.co/go/tools/cmd/staticcheck@v0.8.2
FUZZTIME    ?= 10s

.PHONY: all build run test lint unit rules fuzz bench soak redis-server promtool python3-redis node-deps clean

all: build

# A first build compiles every dependency (a few minutes on a small machine):
# say so, rather than sit silent.
build:
	@echo "building bin/routerd and bin/routerd-demo (the first build compiles every dependency: it can take minutes)"
	$(GO) build -o bin/routerd ./cmd/routerd
	$(GO) build -o bin/routerd-demo ./examples/demo

# Installs redis-server (Debian) when it is missing; tests and `make run` need it.
redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo "redis-server not found: installing it with apt-get"; \
	  if [ "$$(id -u)" -eq 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq redis-server || { \
	    echo "could not install redis-server; run: sudo apt-get install -y redis-server"; exit 1; }; }

# Installs promtool (Debian's prometheus package) when it is missing: `make
# rules` (and so `make test`) checks and unit-tests the alert rules with it.
promtool:
	@command -v promtool >/dev/null 2>&1 || { \
	  echo "promtool not found: installing Debian's prometheus package with apt-get"; \
	  if [ "$$(id -u)" -eq 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends prometheus || { \
	    echo "could not install promtool; run: sudo apt-get install -y prometheus"; exit 1; }; }

# Installs Debian's python3-redis (redis-py for /usr/bin/python3) when it is
# missing: the test of examples/python runs the example with it.
python3-redis:
	@{ [ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import redis' 2>/dev/null; } || { \
	  echo "redis-py for /usr/bin/python3 not found: installing python3-redis with apt-get"; \
	  if [ "$$(id -u)" -eq 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq python3-redis || { \
	    echo "could not install python3-redis; run: sudo apt-get install -y python3-redis"; exit 1; }; }

# Installs the Node example's dependency (examples/node/package-lock.json)
# when node and npm are on the PATH; without them its test is skipped.
node-deps:
	@if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then \
	  cd examples/node && npm ci --no-audit --no-fund --loglevel=error; \
	else echo "node or npm not found: the Node example's test will be skipped"; fi

# A local Redis on $(REDIS_PORT), routerd on matrix.yaml (HTTP on
# $(ROUTERD_PORT)), the profile-svc agent (HTTP on $(AGENT_PORT)), and the demo
# publisher and subscriber, once routerd and the agent are ready; it stops with
# their last log lines if either fails. Ctrl-C stops everything, and so does
# SIGTERM to make alone: make passes it to its child, which exec makes
# run.sh itself rather than a shell that would die of it and leave run.sh.
run: redis-server build
	REDIS_PORT=$(REDIS_PORT) ROUTERD_PORT=$(ROUTERD_PORT) AGENT_PORT=$(AGENT_PORT) DEMO_ARGS="$(DEMO_ARGS)" exec ./scripts/run.sh

lint:
	@unformatted=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$unformatted" ]; then echo "gofmt needed on:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...
	cd graphql && $(GO) vet ./... && $(GO) run $(STATICCHECK) ./...
	@if docker compose version >/dev/null 2>&1; then docker compose config -q && echo "docker-compose.yml: valid (docker compose)"; \
	  elif command -v docker-compose >/dev/null 2>&1; then docker-compose config -q && echo "docker-compose.yml: valid (docker-compose)"; \
	  else echo "neither docker compose nor docker-compose installed: docker-compose.yml not checked"; fi

# ROUTERD_TEST_REQUIRE_PYTHON: the Python example's test fails rather than
# skips when no Python with redis-py is found (python3-redis installs it).
test: redis-server python3-redis node-deps lint rules
	ROUTERD_TEST_REQUIRE_PYTHON=1 $(GO) test -race -count=1 -timeout 15m ./...
	cd graphql && $(GO) test -race -count=1 -timeout 5m ./...

# The alert and recording rules: promtool's checks, and its unit tests of
# every alert firing and staying quiet (deploy/prometheus/alerts_test.yml).
rules: promtool
	promtool check config deploy/prometheus/prometheus.yml
	promtool check rules deploy/prometheus/alerts.yml
	cd deploy/prometheus && promtool test rules alerts_test.yml

# Unit tests only: every package whose tests need no Redis.
UNIT_PKGS = ./names/ ./wire/ ./matrix/ ./internal/recovery/ ./internal/storm/ ./internal/breaker/ \
  ./internal/deliver/ ./internal/doctor/ ./internal/eviction/ ./internal/telemetry/
unit:
	$(GO) test -count=1 $(UNIT_PKGS)

# End-to-end figures against real redis-server processes it starts, each next
# to a reference measured in the same run; prints a table, writes bench-results.json.
# Micro-benchmarks of the hot paths follow.
bench: redis-server
	$(GO) run ./bench -out bench-results.json
	$(GO) test -run '^$$' -bench . -benchmem ./matrix/ ./wire/ ./router/ ./lua/

# The fault-injection soak (test/soak, docs/operations.md): real routers,
# agents and redis-servers under random faults for SOAK_DURATION, split
# between a standalone and a cluster bus. It prints its seed; SOAK_SEED
# replays a schedule, SOAK_FAULTS picks fault kinds. `make test` runs 20 s of
# it. No -timeout: every wait in the soak has its own deadline.
SOAK_DURATION ?= 2m
SOAK_SEED     ?=
SOAK_FAULTS   ?= all
soak: redis-server
	$(GO) test -count=1 -timeout 0 -run '^TestSoak$$' -v ./test/soak/ -args \
	  -soak.duration=$(SOAK_DURATION) -soak.faults=$(SOAK_FAULTS) $(if $(SOAK_SEED),-soak.seed=$(SOAK_SEED))

# Runs every fuzz target for FUZZTIME each (package:target; the list is
# `grep -rn "^func Fuzz" --include=*_test.go`). Some need redis-server.
FUZZ_TARGETS = names:FuzzKey names:FuzzParseChannel names:FuzzSourceVersionKey names:FuzzParseIngressStream \
  names:FuzzStreamPublisher names:FuzzParseRef names:FuzzRefOrDomain wire:FuzzParseEvent wire:FuzzParseMessage \
  wire:FuzzParseEvents matrix:FuzzParse tagstore:FuzzParsePosition router:FuzzRedriven router:FuzzBoundedConn \
  internal/doctor:FuzzGrowthFile internal/redisconn:FuzzOpenHidesPassword internal/cli:FuzzParseSince \
  internal/acl:FuzzTemplatePattern internal/acl:FuzzTenantSeparated subscriber:FuzzParseInterest \
  internal/redisconn:FuzzSentinelURL publisher:FuzzParsePartitions router:FuzzParseRegistration router:FuzzReservedID \
  wire:FuzzMarshalledEventParses wire:FuzzParseTenantShard
fuzz: redis-server
	@set -e; for t in $(FUZZ_TARGETS); do \
	  echo "fuzz $$t"; $(GO) test ./$${t%%:*}/ -run '^$$' -fuzz "^$${t#*:}$$" -fuzztime $(FUZZTIME); done
	cd graphql && $(GO) test ./gqlcache/ -run '^$$' -fuzz '^FuzzStrip$$' -fuzztime $(FUZZTIME)

clean:
	rm -rf bin .run
