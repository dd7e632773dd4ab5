#!/usr/bin/env bash
# Starts a local system: Redis, routerd serve on matrix.yaml, the profile-svc
# agent and the demo (search-svc with an embedded subscriber). Used by `make run`.
set -euo pipefail
cd "$(dirname "$0")/.."

port=${REDIS_PORT:-6390}
state=.run
mkdir -p "$state"
bus="redis://127.0.0.1:$port/0"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "stopped; logs are in $state/"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if redis-cli -p "$port" ping >/dev/null 2>&1; then
  echo "something already answers on 127.0.0.1:$port; stop it or run: make run REDIS_PORT=<free port>" >&2
  exit 1
fi
redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$state" \
  --logfile redis.log --maxmemory-policy noeviction &
pids+=($!)
for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
redis-cli -p "$port" ping >/dev/null || { echo "redis-server did not start; see $state/redis.log" >&2; exit 1; }
echo "redis      127.0.0.1:$port (bus db 0, profile-svc cache db 1, search-svc cache db 2)"

bin/routerd serve --matrix matrix.yaml --redis "$bus" --listen 127.0.0.1:9464 >"$state/routerd.log" 2>&1 &
pids+=($!)
echo "routerd    serve on matrix.yaml; http://127.0.0.1:9464/metrics; log $state/routerd.log"
bin/routerd agent --matrix matrix.yaml --redis "$bus" --cache-redis "redis://127.0.0.1:$port/1" \
  --service profile-svc --listen 127.0.0.1:9465 >"$state/agent.log" 2>&1 &
pids+=($!)
echo "agent      profile-svc; http://127.0.0.1:9465/metrics; log $state/agent.log"
echo "try also:  bin/routerd tail --redis $bus --tenant acme --tag active"
echo

# shellcheck disable=SC2086
bin/routerd-demo --redis "$bus" --profile-cache "redis://127.0.0.1:$port/1" \
  --search-cache "redis://127.0.0.1:$port/2" --matrix matrix.yaml $DEMO_ARGS
