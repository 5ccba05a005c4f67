#!/usr/bin/env bash
# Run Apicurio Registry (Confluent-compatible API at /apis/ccompat/v6) from Maven Central jars.
#
#   deploy/registry/registry.sh up      build the runtime (once), start, wait until it answers
#   deploy/registry/registry.sh down    stop the registry started by `up` (pid file)
#   deploy/registry/registry.sh status  exit 0 when the registry answers
#   deploy/registry/registry.sh fetch   only resolve the jars and build the runtime (once)
#
# Storage is H2 in memory: every `up` starts empty, nothing is written but the pid file and log.
#
# Settings (environment):
#   REGISTRY_PORT      HTTP port, bound to 127.0.0.1        (default 8081)
#   REGISTRY_DATA_DIR  pid file and log                     (default .run/registry; git-ignored)
#   REGISTRY_PYTHON    python for the readiness probe       (default python3)
#   REGISTRY_HEAP      max heap                             (default 512m)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
port=${REGISTRY_PORT:-8081}
data=${REGISTRY_DATA_DIR:-$root/.run/registry}
runner=$here/target/modstream-registry-runtime-1-runner.jar
pidfile=$data/registry.pid
log=$data/registry.out
api=http://127.0.0.1:$port/apis/ccompat/v6

is_up() {
  # The port opens before storage is ready; a 200 from the subjects list means it serves.
  "${REGISTRY_PYTHON:-python3}" - "$api/subjects" <<'PY' 2>/dev/null
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=3) as answer:
    sys.exit(0 if answer.status == 200 else 1)
PY
}

resolve() {
  # Rebuilt when the pom or the build-time properties are newer than the last build.
  if [ ! -f "$runner" ] || [ "$here/pom.xml" -nt "$runner" ] \
    || [ "$here/src/main/resources/application.properties" -nt "$runner" ]; then
    echo "registry: resolving jars from Maven Central and building the runtime (once)..." >&2
    rm -rf "$here/target"
    # Strip Maven's colour codes and blank lines; keep what it says (an error) and its exit code.
    (cd "$here" && mvn -q -B -Dstyle.color=never package 2>&1) \
      | { sed -e 's/\x1b\[[0-9;]*m//g' | grep -v '^[[:space:]]*$' >&2 || true; }
  fi
}

up() {
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null && is_up; then
    echo "registry: already running at $api (pid $(cat "$pidfile"))"
    return 0
  fi
  if is_up; then
    echo "registry: something already answers at $api; using it"
    return 0
  fi
  resolve
  mkdir -p "$data"
  local start=$SECONDS
  # `exec`: $! is the JVM itself, so `down` signals the registry, not a bash wrapper.
  ( exec java -Xms128m "-Xmx${REGISTRY_HEAP:-512m}" -Djava.awt.headless=true \
      -Dquarkus.http.host=127.0.0.1 "-Dquarkus.http.port=$port" -jar "$runner" ) \
    < /dev/null >> "$log" 2>&1 &
  echo $! > "$pidfile"
  for _ in $(seq 1 240); do
    if is_up; then
      echo "registry: up at $api in $((SECONDS - start))s (pid $(cat "$pidfile"), log $log)"
      return 0
    fi
    if ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
      echo "registry: exited during start; last lines of $log:" >&2
      tail -n 30 "$log" >&2
      return 1
    fi
    sleep 0.5
  done
  echo "registry: not answering at $api after 120s; see $log" >&2
  return 1
}

down() {
  if [ ! -f "$pidfile" ]; then echo "registry: not running (no pid file)"; return 0; fi
  local pid
  pid=$(cat "$pidfile")
  # Only a process of ours: after a reboot the pid may belong to something else (`-ww`: ps
  # would cut the command line at $COLUMNS, before the jar's name).
  if kill -0 "$pid" 2>/dev/null && [[ $(ps -ww -o args= -p "$pid" 2>/dev/null) == *modstream-registry-runtime* ]]; then
    kill -TERM "$pid"
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    if kill -0 "$pid" 2>/dev/null; then echo "registry: still alive after 30s, killing" >&2; kill -KILL "$pid"; fi
  fi
  rm -f "$pidfile"
  echo "registry: stopped"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) is_up && echo "registry: up at $api" ;;
  fetch) resolve ;;
  *) echo "usage: $0 up|down|status|fetch" >&2; exit 2 ;;
esac
