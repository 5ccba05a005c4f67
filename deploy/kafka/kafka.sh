#!/usr/bin/env bash
# Run a one-node Apache Kafka (KRaft, combined broker+controller) from Maven Central jars.
#
#   deploy/kafka/kafka.sh up       resolve jars (once), format storage (once), start, wait for the port
#   deploy/kafka/kafka.sh down     stop the broker started by `up` (pid file), wait for it to exit
#   deploy/kafka/kafka.sh status   exit 0 when the broker answers
#   deploy/kafka/kafka.sh clean    down, then remove the data dir
#   deploy/kafka/kafka.sh fetch    only resolve the jars (once; `make test` does it up front)
#
# Settings (environment):
#   KAFKA_PORT      client listener port            (default 9092)
#   KAFKA_DATA_DIR  log dirs, pid file, broker logs (default deploy/kafka/.data; git-ignored)
#   KAFKA_EXTRA_PROPS  a file whose lines are appended to server.properties, with the same
#                   @PORT@/@CONTROLLER_PORT@/@DATA@ (and @SASL_PORT@) filled in (e.g. sasl.properties)
#   KAFKA_SASL_PORT    the port @SASL_PORT@ stands for             (default port+2)
#   KAFKA_FORMAT_ARGS  extra words for `kafka-storage format`, split on blanks, never globbed
#                   (e.g. --add-scram SCRAM-SHA-256=[name=alice,password=alice-secret])
#   KAFKA_PYTHON    python for the readiness probe (default python3)
#   KAFKA_HEAP      broker max heap (default 1g)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
port=${KAFKA_PORT:-9092}
controller_port=${KAFKA_CONTROLLER_PORT:-$((port + 1))}
sasl_port=${KAFKA_SASL_PORT:-$((port + 2))}
data=${KAFKA_DATA_DIR:-$here/.data}
lib=$here/target/lib
pidfile=$data/kafka.pid
props=$data/server.properties
log=$data/kafka.out

is_up() {
  # A TCP accept is not enough: the broker opens the port before it can serve metadata.
  # Ask for metadata with the Python client the project already installs, else fall back to TCP.
  local py=${KAFKA_PYTHON:-python3}
  "$py" - "$port" <<'PY' 2>/dev/null
import socket, struct, sys
port = int(sys.argv[1])
# ApiVersions v0 then Metadata v1 (no topics): the broker answers only when it is serving.
def call(sock, api_key, version, corr, body=b""):
    client = b"modstream-probe"
    header = struct.pack(">hhih", api_key, version, corr, len(client)) + client
    msg = header + body
    sock.sendall(struct.pack(">i", len(msg)) + msg)
    size = struct.unpack(">i", sock.recv(4, socket.MSG_WAITALL))[0]
    data = sock.recv(size, socket.MSG_WAITALL)
    return struct.unpack(">i", data[:4])[0] == corr and len(data) == size
with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
    s.settimeout(5)
    ok = call(s, 18, 0, 1) and call(s, 3, 1, 2, struct.pack(">i", 0))
sys.exit(0 if ok else 1)
PY
}

resolve() {
  if [ ! -f "$lib/kafka_2.13-$(kafka_version).jar" ]; then
    echo "kafka: resolving jars from Maven Central (once)..." >&2
    rm -rf "$lib"
    # Maven 3.9 writes colour resets even with -B and style.color=never: strip escape codes
    # (and the empty lines they leave), keep whatever it says (an error), keep its exit code.
    (cd "$here" && mvn -q -B -Dstyle.color=never dependency:copy-dependencies \
      -DoutputDirectory=target/lib -DincludeScope=runtime 2>&1) \
      | { sed -e 's/\x1b\[[0-9;]*m//g' | grep -v '^[[:space:]]*$' >&2 || true; }
  fi
}

kafka_version() { sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$here/pom.xml"; }

java_opts=(-Xms256m "-Xmx${KAFKA_HEAP:-1g}" -XX:+UseG1GC -Djava.awt.headless=true
  "-Dlog4j2.configurationFile=$here/log4j2.yaml" "-Dkafka.logs.dir=$data/logs" -cp "$lib/*")
java_cmd() { java "${java_opts[@]}" "$@"; }

up() {
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null && is_up; then
    echo "kafka: already running on localhost:$port (pid $(cat "$pidfile"))"
    return 0
  fi
  if is_up; then
    echo "kafka: something already answers on localhost:$port; using it"
    return 0
  fi
  resolve
  mkdir -p "$data/logs"
  local fill=(-e "s|@PORT@|$port|g" -e "s|@CONTROLLER_PORT@|$controller_port|g"
    -e "s|@SASL_PORT@|$sasl_port|g" -e "s|@DATA@|$data|g")
  sed "${fill[@]}" "$here/server.properties" > "$props"
  if [ -n "${KAFKA_EXTRA_PROPS:-}" ]; then sed "${fill[@]}" "$KAFKA_EXTRA_PROPS" >> "$props"; fi
  if [ ! -f "$data/kraft/meta.properties" ]; then
    # `read -a` splits on blanks without pathname expansion: [name=...] is not a glob here.
    local format_args=()
    read -r -a format_args <<< "${KAFKA_FORMAT_ARGS:-}"
    java_cmd kafka.tools.StorageTool format --standalone -t "$(java_cmd kafka.tools.StorageTool random-uuid)" \
      -c "$props" "${format_args[@]}" >> "$log" 2>&1
  fi
  local start=$SECONDS
  # `exec` in the background subshell: $! is then the JVM itself, so `down` signals the broker
  # (a background function call would leave a bash wrapper in the pid file, and killing it
  # orphaned the JVM, which kept the port and the data dir).
  ( exec java "${java_opts[@]}" kafka.Kafka "$props" ) < /dev/null >> "$log" 2>&1 &
  echo $! > "$pidfile"
  for _ in $(seq 1 240); do
    if is_up; then
      echo "kafka: up on localhost:$port in $((SECONDS - start))s (pid $(cat "$pidfile"), data $data)"
      return 0
    fi
    if ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
      echo "kafka: broker exited during start; last lines of $log:" >&2
      tail -n 30 "$log" >&2
      return 1
    fi
    sleep 0.5
  done
  echo "kafka: not answering on localhost:$port after 120s; see $log" >&2
  return 1
}

down() {
  if [ ! -f "$pidfile" ]; then echo "kafka: not running (no pid file)"; return 0; fi
  local pid
  pid=$(cat "$pidfile")
  # Pid files written before the exec fix name the bash wrapper; its java child is the broker.
  local pids=$pid child
  for child in $(pgrep -P "$pid" -x java 2>/dev/null || true); do pids="$child $pids"; done
  for pid in $pids; do
    # Only a process of ours: after a reboot the pid may belong to something else. `-ww`: ps
    # cuts the command line at $COLUMNS otherwise (set to 80 under pytest-xdist), before the
    # word kafka, and the broker was left running with its pid file removed.
    if kill -0 "$pid" 2>/dev/null && [[ $(ps -ww -o args= -p "$pid" 2>/dev/null) == *kafka* ]]; then
      kill -TERM "$pid"
      for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
      if kill -0 "$pid" 2>/dev/null; then echo "kafka: still alive after 30s, killing" >&2; kill -KILL "$pid"; fi
    fi
  done
  rm -f "$pidfile"
  echo "kafka: stopped"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) is_up && echo "kafka: up on localhost:$port" ;;
  fetch) resolve ;;
  clean) down; rm -rf "$data"; echo "kafka: data removed" ;;
  *) echo "usage: $0 up|down|status|clean|fetch" >&2; exit 2 ;;
esac
