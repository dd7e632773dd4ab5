#!/usr/bin/env bash
# Starts a local system: Redis, routerd serve on matrix.yaml, the profile-svc
# agent and the demo (search-svc with an embedded subscriber). Used by `make run`.
#
# It tells the truth: it waits for /readyz of routerd and the agent, and stops
# with the last lines of the log of any that exits or never gets ready; while
# the demo runs, it stops everything the moment routerd or the agent dies.
#
# Environment: REDIS_PORT (6390), ROUTERD_PORT (9464), AGENT_PORT (9465),
# RUN_DIR (.run: logs and Redis files), BIN (bin: where routerd and
# routerd-demo are), READY_TIMEOUT (seconds, 15), DEMO_ARGS.
set -euo pipefail
cd "$(dirname "$0")/.."

port=${REDIS_PORT:-6390}
routerd_port=${ROUTERD_PORT:-9464}
agent_port=${AGENT_PORT:-9465}
state=${RUN_DIR:-.run}
bin=${BIN:-bin}
ready_timeout=${READY_TIMEOUT:-15}
mkdir -p "$state"
bus="redis://127.0.0.1:$port/0"
pids=()
watcher=
redis_pid=
# Redis stops last: routerd, the agent and the demo write to it as they
# stop (routerd marks itself stopped among the live routers). Ctrl-C
# signals the whole foreground process group, so Redis runs in a session
# of its own, out of its reach, and is stopped here once the others are.
cleanup() {
  trap - EXIT INT TERM USR1
  if [ -n "$watcher" ]; then kill "$watcher" 2>/dev/null || true; fi
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ -n "$redis_pid" ]; then
    kill "$redis_pid" 2>/dev/null || true
    wait "$redis_pid" 2>/dev/null || true
  fi
  wait 2>/dev/null || true
  # Nothing started (a port was taken): no logs to point at.
  if [ -n "$redis_pid" ]; then echo "stopped; logs are in $state/"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# last_lines NAME LOG: what to show when a process failed.
last_lines() {
  echo "---- last lines of $2 ----" >&2
  tail -n 20 "$2" >&2 || true
  echo "----" >&2
}

# http_ok URL: true when URL answers 2xx.
http_ok() {
  if command -v curl >/dev/null 2>&1; then
    curl -fsS --max-time 1 -o /dev/null "$1" 2>/dev/null
    return
  fi
  local hostport=${1#http://}; hostport=${hostport%%/*}
  local path=/${1#http://*/}
  local reply
  reply=$(timeout 1 bash -c "exec 3<>/dev/tcp/${hostport%:*}/${hostport##*:}; printf 'GET %s HTTP/1.0\r\n\r\n' '$path' >&3; head -n 1 <&3" 2>/dev/null) || return 1
  [[ $reply == HTTP/1.?" 2"* ]]
}

# wait_ready NAME PID URL LOG: waits for URL to answer 2xx while PID lives.
wait_ready() {
  local name=$1 pid=$2 url=$3 log=$4 deadline=$((SECONDS + ready_timeout))
  while :; do
    if ! kill -0 "$pid" 2>/dev/null; then
      local code=0
      wait "$pid" || code=$?
      echo "$name exited (status $code) before it was ready." >&2
      last_lines "$name" "$log"
      exit 1
    fi
    if http_ok "$url"; then
      return 0
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "$name did not get ready within ${ready_timeout}s ($url)." >&2
      last_lines "$name" "$log"
      exit 1
    fi
    sleep 0.2
  done
}

for b in routerd routerd-demo; do
  [ -x "$bin/$b" ] || { echo "$bin/$b is missing: run make build (make run does)" >&2; exit 1; }
done
# routerd needs Redis 7.0 or newer; `make run` installs redis-server only
# when there is none, and some systems' is older (Ubuntu 22.04's is 6.0).
redis_version=$(redis-server --version 2>/dev/null | sed -n 's/.* v=\([0-9][0-9.]*\).*/\1/p') || true
if [ -n "$redis_version" ] && [ "${redis_version%%.*}" -lt 7 ]; then
  echo "redis-server $redis_version ($(command -v redis-server)) is too old: routerd needs Redis 7.0 or newer" >&2
  echo "(XAUTOCLAIM, XINFO lag, sharded pub/sub). Put a newer redis-server first on PATH (Debian 12's and Ubuntu 24.04's are 7.0)." >&2
  exit 1
fi
if redis-cli -p "$port" ping >/dev/null 2>&1; then
  echo "something already answers on 127.0.0.1:$port; stop it or run: make run REDIS_PORT=<free port>" >&2
  exit 1
fi
# A port whose /readyz already answers (another `make run`'s routerd or
# agent) would fool the readiness check below into claiming a daemon ready.
for pair in "ROUTERD_PORT:$routerd_port" "AGENT_PORT:$agent_port"; do
  if http_ok "http://127.0.0.1:${pair#*:}/readyz"; then
    echo "something already answers on 127.0.0.1:${pair#*:} (another routerd?); stop it or run: make run ${pair%%:*}=<free port>" >&2
    exit 1
  fi
done
setsid redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$state" \
  --logfile redis.log --maxmemory-policy noeviction &
redis_pid=$!
for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
redis-cli -p "$port" ping >/dev/null 2>&1 || {
  echo "redis-server did not start on 127.0.0.1:$port." >&2
  last_lines redis-server "$state/redis.log"
  exit 1
}
echo "redis      127.0.0.1:$port (bus db 0, profile-svc cache db 1, search-svc cache db 2)"

"$bin/routerd" serve --matrix matrix.yaml --redis "$bus" --listen "127.0.0.1:$routerd_port" >"$state/routerd.log" 2>&1 &
routerd_pid=$!
pids+=("$routerd_pid")
"$bin/routerd" agent --matrix matrix.yaml --redis "$bus" --cache-redis "redis://127.0.0.1:$port/1" \
  --service profile-svc --listen "127.0.0.1:$agent_port" >"$state/agent.log" 2>&1 &
agent_pid=$!
pids+=("$agent_pid")
wait_ready routerd "$routerd_pid" "http://127.0.0.1:$routerd_port/readyz" "$state/routerd.log"
echo "routerd    ready: serve on matrix.yaml; http://127.0.0.1:$routerd_port/metrics; log $state/routerd.log"
wait_ready agent "$agent_pid" "http://127.0.0.1:$agent_port/readyz" "$state/agent.log"
echo "agent      ready: profile-svc; http://127.0.0.1:$agent_port/metrics; log $state/agent.log"
echo "watch:     $bin/routerd tail --redis $bus --tenant acme --tag active   (in another terminal: each message as JSON)"
echo "publish:   $bin/routerd publish --redis $bus --tenant acme --domain product --keys product:1   (your own change: the demo and tail show it)"
echo "Ctrl-C stops everything; logs are in $state/"
echo

# From here on, routerd or the agent dying stops the demo at once.
trap 'exit 1' USR1
main=$$
(
  while sleep 0.5; do
    for pair in "routerd:$routerd_pid:$state/routerd.log" "agent:$agent_pid:$state/agent.log"; do
      IFS=: read -r name pid log <<<"$pair"
      if ! kill -0 "$pid" 2>/dev/null; then
        echo >&2
        echo "$name exited while the demo ran." >&2
        last_lines "$name" "$log"
        kill -USR1 "$main" 2>/dev/null
        exit 0
      fi
    done
  done
) &
watcher=$!

# The demo in the background, so that the traps run while it does.
# shellcheck disable=SC2086
"$bin/routerd-demo" --redis "$bus" --profile-cache "redis://127.0.0.1:$port/1" \
  --search-cache "redis://127.0.0.1:$port/2" --matrix matrix.yaml --logs "$state" ${DEMO_ARGS:-} &
demo_pid=$!
pids+=("$demo_pid")
wait "$demo_pid"
